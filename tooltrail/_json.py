"""Compact JSON for the hot paths, and JSON that no nesting depth can crash.

* :func:`compact_encoder` builds CPython's C encoder once (``json.JSONEncoder.encode``
  builds a new one on every call, which costs about half of encoding a span's small
  values). The C factory is private API, so the encoder it makes is checked at build time
  against ``json.JSONEncoder`` on a sample of every kind of value; on any difference or
  error (another interpreter, a changed signature) the plain encoder is used.
* :func:`loads_iterative` and :func:`dumps_iterative` read and write JSON with an explicit
  stack: ``json.loads`` / ``json.dumps`` recurse once per nesting level and raise
  ``RecursionError`` on a document nested a few thousand deep (10 KB of ``[``).

Standard library only: the agent-side instrumentation uses it too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, Final

_log = logging.getLogger(__name__)

Encode = Callable[[Any], str]
CMake = Callable[..., Callable[[Any, int], Any]]

_SEPARATORS: Final = (",", ":")


def _sample(sort_keys: bool, allow_nan: bool) -> list[Any]:
    # One value of every kind the encoder meets: non-ASCII and escapes (ensure_ascii=False),
    # nested containers, tuples, the default() hook (bytes), key order, floats.
    mixed_keys: dict[Any, Any] = {"z": 1, "a": {"y": [], "b": {}}}
    if not sort_keys:
        mixed_keys[3] = "int key"
    numbers: list[Any] = [0, -1, 2.5, 1e300, 10**20, None, True, False]
    if allow_nan:
        numbers.append(float("nan"))
    return [
        {"s": 'é\u2028"\\\n\x00', "n": numbers, "t": (1, "x"), "b": b"\x01"},
        mixed_keys,
        "é",
        "",
        [],
    ]


def compact_encoder(
    *,
    default: Callable[[Any], Any],
    sort_keys: bool = False,
    allow_nan: bool = True,
    c_make: CMake | None = None,
) -> Encode:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False, ...)`` built once.

    The C encoder is built without the circular-reference check (``markers=None``): that
    check keeps state in one dict that calls on other threads would share. A circular
    structure then raises ``RecursionError`` (like a too-deep one) instead of
    ``ValueError``. ``c_make`` is for tests: another encoder factory to check and use.
    """
    reference = json.JSONEncoder(
        separators=_SEPARATORS,
        ensure_ascii=False,
        sort_keys=sort_keys,
        allow_nan=allow_nan,
        default=default,
    ).encode
    make = c_make if c_make is not None else getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pure-Python json (other interpreters)
        return reference
    try:
        c_encode = make(
            None,  # markers: no circular-reference check (see above)
            default,
            json.encoder.encode_basestring,  # ensure_ascii=False
            None,  # indent
            _SEPARATORS[1],  # key separator
            _SEPARATORS[0],  # item separator
            sort_keys,
            False,  # skipkeys
            allow_nan,
        )
        join = "".join

        def encode(value: Any) -> str:
            return join(c_encode(value, 0))

        for value in _sample(sort_keys, allow_nan):
            if encode(value) != reference(value):
                raise ValueError(f"C encoder differs from json.JSONEncoder on {value!r}")
    except Exception:
        _log.warning("tooltrail: the fast JSON encoder failed its check; using json.dumps")
        _log.debug("tooltrail: fast JSON encoder check", exc_info=True)
        return reference
    return encode


# --- any depth -------------------------------------------------------------------------

_WS: Final = re.compile(r"[ \t\n\r]*")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_scanstring: Final[Callable[[str, int, bool], tuple[str, int]]] = json.decoder.scanstring  # type: ignore[attr-defined]


def loads_iterative(text: str, *, opaque: Callable[[str], bool] | None = None) -> Any:
    """``json.loads(text)`` (strict JSON: no NaN / Infinity) without recursion.

    Raises ``ValueError`` naming the offset of the first error. Numbers read as
    ``json.loads`` reads them (ints above Python's digit limit are refused alike).

    ``opaque``: an array or object that is the value of a key for which it returns True
    is checked exactly as any other (the same errors) but not built: it reads as an empty
    list. The scrubber replaces such a value whole (a credential-named key's), so building
    it would be wasted, and a value nested a million deep costs 50x less checked than
    built (a run of brackets is checked as one count, and no object is made per level).
    """
    # A container is attached to its parent when it opens, so closing one is a pop.
    stack: list[Any] = []
    root: Any = None
    key: str | None = None  # the key waiting for its value, when the top is an object
    n = len(text)
    pos = _skip(text, 0)
    want_value = True
    while True:
        if want_value:
            char = text[pos : pos + 1]
            if (
                opaque is not None
                and (char == "[" or char == "{")
                and stack
                and type(stack[-1]) is dict
                and key is not None
                and opaque(key)
            ):
                pos = _check_container(text, pos)
                stack[-1][key] = []
                want_value = False
                continue
            if char == "[" or char == "{":
                value: Any = [] if char == "[" else {}
                pos = _skip(text, pos + 1)
                empty = text[pos : pos + 1] == ("]" if char == "[" else "}")
            else:
                value, pos = _scalar(text, pos)
                empty = True  # nothing to open
            if not stack:
                root = value
            elif type(stack[-1]) is list:
                stack[-1].append(value)
            else:
                stack[-1][key] = value
            if empty:
                if char == "[" or char == "{":
                    pos += 1
                want_value = False
                continue
            stack.append(value)
            if char == "{":
                key, pos = _read_key(text, pos)
            continue
        pos = _skip(text, pos)
        if not stack:
            if pos != n:
                raise ValueError(f"extra data at offset {pos}")
            return root
        top = stack[-1]
        char = text[pos : pos + 1]
        if char == ",":
            pos = _skip(text, pos + 1)
            if type(top) is dict:
                key, pos = _read_key(text, pos)
            want_value = True
        elif char == ("]" if type(top) is list else "}"):
            stack.pop()
            pos += 1
        else:
            closing = "]" if type(top) is list else "}"
            raise ValueError(f"expected ',' or {closing!r} at offset {pos}")


# Runs of brackets, white space between and after them allowed: one step of the checker
# each. (Classes, not a repeated group: sre repeats a group 20-50x slower than a class.)
_OPEN_RUN: Final = re.compile(r"\[[\[ \t\n\r]*+")
_CLOSE_RUN: Final = re.compile(r"[\]}][\]} \t\n\r]*+")
_CLOSER: Final = re.compile(r"[\]}]")
_WS_CHAR: Final = re.compile(r"[ \t\n\r]")
_CLOSER_GROUP: Final = re.compile(r"\]++|\}++")
_NO_WS: Final = str.maketrans("", "", " \t\n\r")


def _check_container(text: str, pos: int) -> int:
    """The end of the array or object that opens at ``text[pos]``, checked as
    ``loads_iterative`` reads it (the same errors) but not built.

    The open containers are kept as runs, ``[closer, count]``: ``[`` x 1,000,000 is one
    entry, opened and closed in one step each, so the cost is per run of brackets and per
    scalar or key, never per nesting level."""
    open_: list[list[Any]] = []  # [closing character, how many], innermost last
    want_value = True
    while True:
        if want_value:
            char = text[pos : pos + 1]
            if char == "[":
                run = _OPEN_RUN.match(text, pos)
                assert run is not None  # text[pos] is "["
                _push(open_, "]", run.group().count("["))
                pos = _skip(text, run.end())
                # An empty array: its "]" is next (read by the closing step below).
                want_value = text[pos : pos + 1] != "]"
            elif char == "{":
                pos = _skip(text, pos + 1)
                if text[pos : pos + 1] == "}":  # an empty object: a complete value
                    pos += 1
                    want_value = False
                else:
                    _push(open_, "}", 1)
                    _, pos = _read_key(text, pos)
            else:
                _, pos = _scalar(text, pos)
                want_value = False
            continue
        pos = _skip(text, pos)
        if not open_:
            return pos
        char = text[pos : pos + 1]
        if char == ",":
            pos = _skip(text, pos + 1)
            if open_[-1][0] == "}":
                _, pos = _read_key(text, pos)
            want_value = True
        elif char == "]" or char == "}":
            pos = _close_run(text, pos, open_)
        else:
            raise ValueError(f"expected ',' or {open_[-1][0]!r} at offset {pos}")


def _push(open_: list[list[Any]], closer: str, count: int) -> None:
    if open_ and open_[-1][0] == closer:
        open_[-1][1] += count
    else:
        open_.append([closer, count])


def _close_run(text: str, pos: int, open_: list[list[Any]]) -> int:
    """Close containers with the run of closing brackets at ``text[pos]``; stops after
    the outermost open one (the rest of the run is the caller's). Returns the position
    after the last bracket used."""
    run = _CLOSE_RUN.match(text, pos)
    assert run is not None  # text[pos] is "]" or "}"
    closers = run.group().translate(_NO_WS)
    used = 0
    for group in _CLOSER_GROUP.finditer(closers):
        char, count = group.group()[0], len(group.group())
        while count and open_:
            top = open_[-1]
            if top[0] != char:
                where = _closer_end(text, pos, used + 1, len(closers), run.end()) - 1
                raise ValueError(f"expected ',' or {top[0]!r} at offset {where}")
            taken = min(count, top[1])
            top[1] -= taken
            count -= taken
            used += taken
            if not top[1]:
                open_.pop()
        if not open_:
            break
    if used == len(closers):
        return run.end()
    return _closer_end(text, pos, used, len(closers), run.end())


def _closer_end(text: str, pos: int, n: int, total: int, end: int) -> int:
    """The position after the ``n``-th (n >= 1) of the ``total`` closing brackets of the
    run ``text[pos:end]`` (once per checked value, from the nearer end: linear)."""
    if _WS_CHAR.search(text, pos, pos + n) is None:  # no white space among them
        return pos + n
    if total - n < n:  # back from the end: the start of the first bracket not used
        for _ in range(total - n):
            end = max(text.rfind("]", pos, end), text.rfind("}", pos, end))
        return end
    return next(islice(_CLOSER.finditer(text, pos), n - 1, None)).end()  # skipped in C


def _skip(text: str, pos: int) -> int:
    # Most positions hold no whitespace: test one character before calling the regex.
    if pos < len(text) and text[pos] in " \t\n\r":
        return _WS.match(text, pos).end()  # type: ignore[union-attr]
    return pos


def _read_key(text: str, pos: int) -> tuple[str, int]:
    if text[pos : pos + 1] != '"':
        raise ValueError(f"expected a property name at offset {pos}")
    key, pos = _scanstring(text, pos + 1, True)
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise ValueError(f"expected ':' at offset {pos}")
    return key, _skip(text, pos + 1)


_LITERALS: Final = {"true": True, "false": False, "null": None}


def _scalar(text: str, pos: int) -> tuple[Any, int]:
    char = text[pos : pos + 1]
    if char == '"':
        return _scanstring(text, pos + 1, True)
    for word, value in _LITERALS.items():
        if text.startswith(word, pos):
            return value, pos + len(word)
    m = _NUMBER.match(text, pos)
    if m is None:
        raise ValueError(f"expected a value at offset {pos}")
    if m.group(1) or m.group(2):
        return float(m.group(0)), m.end()
    return int(m.group(0)), m.end()


def dumps_iterative(
    value: Any, *, default: Callable[[Any], Any] = str, sort_keys: bool = False
) -> str:
    """Compact JSON (``ensure_ascii=False``, NaN / infinity as strings) without recursion.

    Mappings, lists and tuples nest to any depth; other values are written by
    ``json.dumps`` after ``default`` for what JSON cannot hold. A circular structure raises
    ``ValueError``.
    """
    out: list[str] = []
    # Work items: a value to write, or a literal piece of text ("]", "}", ",").
    todo: list[tuple[bool, Any]] = [(False, value)]
    # Containers on the current path (a stack, and a set to test in constant time).
    path: list[int] = []
    on_path: set[int] = set()
    while todo:
        is_text, item = todo.pop()
        if is_text:
            if item is None:
                on_path.discard(path.pop())
            else:
                out.append(item)
            continue
        if isinstance(item, Mapping | list | tuple):
            if id(item) in on_path:
                raise ValueError("circular reference")
            path.append(id(item))
            on_path.add(id(item))
            todo.append((True, None))  # leaving the container
            if isinstance(item, Mapping):
                out.append("{")
                todo.append((True, "}"))
                pairs = sorted(item.items()) if sort_keys else list(item.items())
                for i in range(len(pairs) - 1, -1, -1):
                    k, v = pairs[i]
                    todo.append((False, v))
                    sep = "," if i else ""
                    todo.append((True, sep + _scalar_json(_key_text(k), default) + ":"))
            else:
                out.append("[")
                todo.append((True, "]"))
                for i in range(len(item) - 1, -1, -1):
                    todo.append((False, item[i]))
                    if i:
                        todo.append((True, ","))
            continue
        out.append(_scalar_json(item, default, sort_keys))
    return "".join(out)


def _key_text(key: Any) -> str:
    # json.dumps's rules for keys: str as is, scalars spelled as JSON, others refused.
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return json.dumps(key)
    if isinstance(key, int | float):
        return _scalar_json(key, str)
    return str(key)


def _scalar_json(value: Any, default: Callable[[Any], Any], sort_keys: bool = False) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(str(value))
    if not isinstance(value, str | int | float | bool | type(None)):
        value = default(value)
        if isinstance(value, Mapping | list | tuple):
            return dumps_iterative(value, default=default, sort_keys=sort_keys)
    return json.dumps(value, ensure_ascii=False)


__all__ = ["compact_encoder", "dumps_iterative", "loads_iterative"]
