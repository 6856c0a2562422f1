"""JSON from senders and files: an integer past Python's digit limit is bad input, named.

``json.loads`` turns an integer literal into an ``int``, and CPython refuses to convert one
longer than ``sys.get_int_max_str_digits()`` (4,300 by default) with a bare ValueError, not
a JSONDecodeError: every caller that caught only the latter answered 500 or printed a
traceback. :func:`loads` parses as ``json.loads`` does (no extra cost when nothing is
wrong); only when that limit is hit does it parse again, keeping the huge literal as text,
to name where it is.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from tooltrail.errors import BadInputError

_MAX_PATH: Final = 200


class HugeIntegerError(BadInputError):
    """A JSON integer too long to convert; the message names its path in the document."""


class _Huge(str):
    """A JSON integer literal kept as text because it is too long to convert."""

    __slots__ = ()


def _digit_limit() -> int:
    return sys.get_int_max_str_digits() or sys.maxsize  # 0 means no limit


def _keep_huge(text: str) -> Any:
    if len(text.lstrip("-")) > _digit_limit():
        return _Huge(text)
    return int(text)


def loads(data: str | bytes) -> Any:
    """``json.loads``, raising :class:`HugeIntegerError` (naming the field) instead of a
    bare ValueError for an integer past the digit limit. Other errors are json.loads'."""
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise
    doc = json.loads(data, parse_int=_keep_huge)
    where, digits = _find_huge(doc)  # at most _MAX_PATH characters: the keys are the sender's
    limit = _digit_limit()
    raise HugeIntegerError(
        f"{where or 'the document'}: an integer of {digits} digits, over the {limit}-digit"
        " limit (send it as a string if it is an id)"
    )


def _find_huge(doc: Any) -> tuple[str, int]:
    """The path (``a.b[2].c``) and digit count of the first huge integer (breadth-first,
    without recursion: the document may nest deeply).

    Each node keeps only its parent's index and its own key: building every node's full
    path would cost key length x depth^2 (a 0.9 MB body reached 400 MB). Only the found
    integer's path is built, from the leaf up, and at most ``_MAX_PATH`` characters of it.
    """
    # (index of the parent in the queue, key or list index, value); the root has parent -1
    queue: list[tuple[int, str | int, Any]] = [(-1, "", doc)]
    for at, (_, _, value) in enumerate(queue):  # the list grows while it is walked
        if isinstance(value, _Huge):
            return _path_to(queue, at), len(value.lstrip("-"))
        if isinstance(value, dict):
            queue.extend((at, str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            queue.extend((at, i, v) for i, v in enumerate(value))
    return "", 0  # pragma: no cover - loads found one


def _path_to(queue: list[tuple[int, str | int, Any]], at: int) -> str:
    """The path of ``queue[at]``, built from the leaf up and cut once it passes
    ``_MAX_PATH`` characters (then it starts with ``...``)."""
    parts: list[str] = []
    size = 0
    while at > 0:
        parent, key, _ = queue[at]
        part = f"[{key}]" if isinstance(key, int) else f".{key}"
        parts.append(part)
        size += len(part)
        if size > _MAX_PATH:
            return "..." + "".join(reversed(parts))[-_MAX_PATH:]
        at = parent
    return "".join(reversed(parts)).removeprefix(".")


__all__ = ["HugeIntegerError", "loads"]
