"""Compiled building blocks of a policy: argument paths, glob sets, argument matchers,
templates and the per-call evaluation environment.

Everything here is compiled once at load time; the ``test``/``render`` methods run per call
and do no I/O. Glob semantics are ``fnmatch.fnmatchcase`` (case-sensitive, ``*`` crosses
``/``), precompiled into one regular expression per glob list.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any, Final

from tooltrail._json import dumps_iterative
from tooltrail.policy.model import ToolCall
from tooltrail.policy.numbers import decimal_text
from tooltrail.policy.regex import PolicyRegex


class _Missing:
    """Sentinel for 'the argument path is absent' (distinct from a JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class Many(list[Any]):
    """The values a path fanned out to through a list (``files.path`` over a list of
    objects). Matchers treat it like a list value: any element may match."""

    __slots__ = ()


# --- argument paths -------------------------------------------------------------------


class AmbiguousArgumentError(ValueError):
    """A dotted path reads two different values (a literal key and a nested path)."""


class ArgPath:
    """A dotted path into the arguments: ``a.b`` is ``args["a"]["b"]``; a numeric segment
    indexes a list; any other segment applied to a list fans out over its elements.

    A dotted path can also name a top-level key that literally contains dots. Both
    readings are kept apart: ``resolve`` (templates: one value) takes the literal key
    first; ``candidates`` (conditions) gives every reading present, so that a junk literal
    key cannot hide the nested value the tool really reads, or the other way round."""

    __slots__ = ("dotted", "segments", "text", "top_keys")

    def __init__(self, text: str) -> None:
        self.text = text
        self.segments: tuple[str, ...] = tuple(text.split("."))
        self.dotted = len(self.segments) > 1
        # The top-level argument keys this path can read (used to project arguments in replay).
        self.top_keys: frozenset[str] = frozenset({text, self.segments[0]})

    def resolve(self, args: Mapping[str, Any]) -> Any:
        """One value: the literal key's when present, else the nested path's (or MISSING).

        Raises AmbiguousArgumentError when both are present and differ: a template (a
        target, a rewrite value) has room for one value, and taking either could let a
        junk key decide which repository or branch the policy thinks the call touches.
        The engine turns it into a ``policy-error`` DENY (fail closed)."""
        if len(self.segments) == 1:
            return args.get(self.text, MISSING)
        nested = _walk(args, self.segments)
        if self.text in args:
            literal = args[self.text]
            if nested is not MISSING and nested != literal:
                raise AmbiguousArgumentError(
                    f"argument {self.text!r} is both a key and a nested path, with different values"
                )
            return literal
        return nested

    def candidates(self, args: Mapping[str, Any]) -> tuple[Any, ...]:
        """Every present reading: the literal key's value and the nested path's value
        (either may be absent); ``(MISSING,)`` when neither is present."""
        nested = _walk(args, self.segments)
        if not self.dotted or self.text not in args:
            return (nested,)
        literal = args[self.text]
        if nested is MISSING:
            return (literal,)
        return (literal, nested)

    def __repr__(self) -> str:
        return f"ArgPath({self.text!r})"


def _walk(current: Any, segments: Sequence[str]) -> Any:
    for i, seg in enumerate(segments):
        if isinstance(current, Mapping):
            if seg not in current:
                return MISSING
            current = current[seg]
        elif isinstance(current, list | tuple):
            if seg.isdigit():
                idx = int(seg)
                if idx >= len(current):
                    return MISSING
                current = current[idx]
            else:
                return _fan_out(current, segments[i:])
        else:
            return MISSING
    return current


def _fan_out(items: Sequence[Any], rest: Sequence[str]) -> Any:
    out = Many()
    for item in items:
        value = _walk(item, rest)
        if value is MISSING:
            continue
        if isinstance(value, Many):
            out.extend(value)
        else:
            out.append(value)
    return out if out else MISSING


# --- globs ----------------------------------------------------------------------------


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class GlobSet:
    """Any-of a list of fnmatchcase globs; literals are a set lookup, wildcards one regex."""

    __slots__ = ("_rx", "literals", "match", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(patterns)
        self.literals = frozenset(p for p in self.patterns if not is_glob(p))
        wild = [p for p in self.patterns if is_glob(p)]
        self._rx = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in wild)) if wild else None
        )
        # `match(text)` is truthy when any glob matches: the cheapest callable for the mix
        # (a set lookup, one regex, or both), bound once since it runs on every call.
        self.match: Callable[[str], object] = self._matcher()

    def _matcher(self) -> Callable[[str], object]:
        literals, rx = self.literals, self._rx
        if rx is None:
            return literals.__contains__
        rx_match = rx.match
        if not literals:
            return rx_match
        return lambda text: text in literals or rx_match(text) is not None

    @property
    def has_wildcards(self) -> bool:
        return self._rx is not None

    def describe(self) -> str:
        if len(self.patterns) == 1:
            return repr(self.patterns[0])
        return "any of [" + ", ".join(repr(p) for p in self.patterns) + "]"


# --- argument value matchers ----------------------------------------------------------


def scalar_text(value: Any) -> str | None:
    """The text a glob/regex sees: strings as is, numbers in decimal; other types none."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(value)
    if isinstance(value, int):
        # Past 4,300 digits ``str()`` refuses an int (ValueError), but a DENY rule must
        # still see its digits: written without that limit.
        return decimal_text(value)
    return None


def as_number(value: Any) -> float | None:
    """Numbers, and strings that spell a finite number (agents often send "100")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value  # not float(): an int past 1.8e308 has none; int < float compares exactly
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def json_key(value: Any) -> tuple[str, Any]:
    """A hashable key with JSON equality: 1 == 1.0, but true != 1 and "1" != 1."""
    if value is None:
        return ("z", None)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    try:
        return ("j", json.dumps(value, sort_keys=True, default=str))
    except RecursionError:
        # An argument nested deeper than json.dumps recurses (landed rows are read without
        # a depth limit): written with an explicit stack. It equals a policy value only if
        # the text is the same, and a policy's own values are never this deep.
        return ("j", dumps_iterative(value, sort_keys=True))


def json_equal(a: Any, b: Any) -> bool:
    """Equality with JSON semantics, deeply: 1 == 1.0, but true != 1 and "1" != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def _any_element(value: Any) -> Sequence[Any] | None:
    return value if isinstance(value, list | tuple) else None


class Check:
    """One operator of an argument matcher (``glob``, ``regex``, ``in``, ``equals``,
    ``gt``…, ``exists``). ``test`` receives the resolved value (maybe ``MISSING``)."""

    __slots__ = ()

    def test(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class _ElementCheck(Check):
    """Checks that apply to a scalar and, for list values, to any element."""

    __slots__ = ()

    def test(self, value: Any) -> bool:
        if value is MISSING:
            return False
        elements = _any_element(value)
        if elements is None:
            return self.test_scalar(value)
        return any(self.test_scalar(v) for v in elements)

    def test_scalar(self, value: Any) -> bool:
        raise NotImplementedError


class GlobCheck(_ElementCheck):
    __slots__ = ("globs", "match")

    def __init__(self, globs: GlobSet) -> None:
        self.globs = globs
        self.match = globs.match

    def test(self, value: Any) -> bool:
        if isinstance(value, str):  # the common case, without the generic dispatch
            return bool(self.match(value))
        return _ElementCheck.test(self, value)

    def test_scalar(self, value: Any) -> bool:
        text = scalar_text(value)
        return text is not None and bool(self.match(text))

    def describe(self) -> str:
        return f"matches {self.globs.describe()}"


class RegexCheck(_ElementCheck):
    __slots__ = ("rx",)

    def __init__(self, rx: PolicyRegex) -> None:
        self.rx = rx

    def test(self, value: Any) -> bool:
        if isinstance(value, str):
            return self.rx.search(value)
        return _ElementCheck.test(self, value)

    def test_scalar(self, value: Any) -> bool:
        text = scalar_text(value)
        return text is not None and self.rx.search(text)

    def describe(self) -> str:
        return f"contains regex {self.rx.pattern!r}"


class InCheck(_ElementCheck):
    __slots__ = ("keys", "values")

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = tuple(values)
        self.keys = frozenset(json_key(v) for v in values)

    def test(self, value: Any) -> bool:
        # A whole list value may itself be one of the listed values.
        if value is not MISSING and not isinstance(value, Many) and json_key(value) in self.keys:
            return True
        return super().test(value)

    def test_scalar(self, value: Any) -> bool:
        return json_key(value) in self.keys

    def describe(self) -> str:
        return f"in {json.dumps(list(self.values), default=str)}"


class EqualsCheck(Check):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def test(self, value: Any) -> bool:
        if value is MISSING:
            return False
        if isinstance(value, Many):
            return any(json_equal(v, self.value) for v in value)
        return json_equal(value, self.value)

    def describe(self) -> str:
        return f"equals {json.dumps(self.value, default=str)}"


_COMPARATORS: Final = {
    # operator's, not float.__gt__: an int argument is compared as it is (exactly, and an
    # int past 1.8e308 has no float to convert to).
    "gt": (operator.gt, ">"),
    "gte": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "lte": (operator.le, "<="),
}


class CompareCheck(_ElementCheck):
    __slots__ = ("bound", "compare", "op")

    def __init__(self, op: str, bound: float) -> None:
        self.op = op
        self.bound = float(bound)
        self.compare = _COMPARATORS[op][0]

    def test(self, value: Any) -> bool:
        cls = value.__class__
        if cls is int or cls is float:  # not bool: bool is a subclass, not int itself
            return bool(self.compare(value, self.bound))  # int vs float compares exactly
        return _ElementCheck.test(self, value)

    def test_scalar(self, value: Any) -> bool:
        number = as_number(value)
        return number is not None and bool(self.compare(number, self.bound))

    def describe(self) -> str:
        return f"{_COMPARATORS[self.op][1]} {self.bound:g}"


class ExistsCheck(Check):
    __slots__ = ("expected",)

    def __init__(self, expected: bool) -> None:
        self.expected = expected

    def test(self, value: Any) -> bool:
        return (value is not MISSING) is self.expected

    def describe(self) -> str:
        return "is present" if self.expected else "is absent"


# --- the per-call environment and condition predicates --------------------------------


def _hint(annotations: Any, camel: str, snake: str) -> bool | None:
    if isinstance(annotations, Mapping):
        value = annotations.get(camel)
        if value is None:
            value = annotations.get(snake)
    else:  # an MCP ToolAnnotations model passed as is
        value = getattr(annotations, snake, None)
    return value if isinstance(value, bool) else None


def read_only_hint(annotations: Any) -> bool | None:
    """MCP readOnlyHint; None when the tool's annotations are unknown (default false)."""
    if annotations is None:
        return None
    value = _hint(annotations, "readOnlyHint", "read_only_hint")
    return False if value is None else value


def destructive_hint(annotations: Any) -> bool | None:
    """MCP destructiveHint; None when unknown. Its MCP default is true, and it is only
    meaningful for tools that are not read-only, so a read-only tool defaults to false."""
    if annotations is None:
        return None
    value = _hint(annotations, "destructiveHint", "destructive_hint")
    if value is None:
        return not bool(read_only_hint(annotations))
    return value


class Env:
    """What the predicates of one call look at; built once per ``decide``."""

    __slots__ = ("agent", "annotations", "args", "branch", "path", "repo", "server", "tool")

    def __init__(
        self,
        call: ToolCall,
        args: Mapping[str, Any],
        targets: tuple[str | None, str | None, str | None],
    ) -> None:
        self.tool = call.tool
        self.agent = call.agent
        self.server = call.server
        self.annotations = call.annotations
        self.args = args
        self.repo, self.branch, self.path = targets


class Pred:
    """One condition of a ``when`` (or a blast-radius entry), other than the tool glob."""

    __slots__ = ()

    def test(self, env: Env) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class FieldGlobPred(Pred):
    """agent / server / repo / branch / path against a glob list; absent never matches."""

    __slots__ = ("field", "get", "globs", "match")

    def __init__(self, field: str, globs: GlobSet) -> None:
        self.field = field
        self.globs = globs
        self.get = attrgetter(field)
        self.match = globs.match

    def test(self, env: Env) -> bool:
        value = self.get(env)
        return isinstance(value, str) and bool(self.match(value))

    def describe(self) -> str:
        return f"{self.field} matches {self.globs.describe()}"


class ArgPred(Pred):
    __slots__ = ("checks", "key", "path", "single")

    def __init__(self, path: ArgPath, checks: Sequence[Check]) -> None:
        self.path = path
        self.checks = tuple(checks)
        # Fast paths: a plain top-level key, and a single operator (the usual shape).
        self.key = path.text if len(path.segments) == 1 else None
        self.single = self.checks[0].test if len(self.checks) == 1 else None

    def test(self, env: Env) -> bool:
        key = self.key
        if key is None:
            # A dotted path: holds when any reading (literal key, nested path) satisfies
            # every check; absent (``exists: false``) only when both readings are absent.
            return any(self.holds(v) for v in self.path.candidates(env.args))
        # A plain key (the usual case): holds(), inlined on the hot path.
        value = env.args.get(key, MISSING)
        single = self.single
        if single is not None:
            return single(value)
        for check in self.checks:  # noqa: SIM110 - hot path, no generator
            if not check.test(value):
                return False
        return True

    def holds(self, value: Any) -> bool:
        """Every check holds for one resolved value (maybe ``MISSING``)."""
        single = self.single
        if single is not None:
            return single(value)
        for check in self.checks:  # noqa: SIM110 - hot path, no generator
            if not check.test(value):
                return False
        return True

    def describe(self) -> str:
        return f"args.{self.path.text} " + " and ".join(c.describe() for c in self.checks)


class HintPred(Pred):
    __slots__ = ("expected", "name")

    def __init__(self, name: str, expected: bool) -> None:
        self.name = name
        self.expected = expected

    def test(self, env: Env) -> bool:
        if self.name == "readOnlyHint":
            value = read_only_hint(env.annotations)
        else:
            value = destructive_hint(env.annotations)
        return value is not None and value is self.expected

    def describe(self) -> str:
        return f"{self.name} is {str(self.expected).lower()}"


# --- templates ------------------------------------------------------------------------


class TemplateError(ValueError):
    """A template is malformed (unbalanced brace, empty or unknown placeholder)."""


_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

Part = str | tuple[str, ...]
"""A template part: literal text, or a placeholder's alternatives (first present wins)."""


def parse_template(text: str) -> tuple[Part, ...]:
    """``"{a|b}/x"`` -> ``(("a", "b"), "/x")``; ``{{`` and ``}}`` are literal braces."""
    parts: list[Part] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        token = m.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif token in ("{", "}"):
            raise TemplateError(f"unbalanced {token!r} at position {m.start()} of {text!r}")
        else:
            alternatives = tuple(a.strip() for a in (m.group(1) or "").split("|"))
            if any(a == "" for a in alternatives):
                raise TemplateError(f"empty placeholder {token!r} in {text!r}")
            if "".join(literal):
                parts.append("".join(literal))
            literal = []
            parts.append(alternatives)
    literal.append(text[pos:])
    if "".join(literal):
        parts.append("".join(literal))
    return tuple(parts)


def render_scalar(value: Any) -> str | None:
    """A present scalar as template text (JSON spelling for booleans); else None."""
    if value is None or value is MISSING:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


class TargetTemplate:
    """``repo: "{owner}/{repo}"``: placeholders are argument paths with ``|`` fallbacks;
    if any placeholder has no present scalar value, the target is absent (None)."""

    __slots__ = ("parts", "paths", "render", "simple_keys", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = parse_template(text)
        self.paths: dict[str, ArgPath] = {
            alt: ArgPath(alt) for part in self.parts if isinstance(part, tuple) for alt in part
        }
        self.render: Callable[[Mapping[str, Any]], str | None] = self._render
        # "{a|b|c}" over plain top-level keys: the keys, so fallbacks can be merged.
        self.simple_keys: tuple[str, ...] | None = None
        if not any("." in alt for alt in self.paths):
            # Plain top-level keys (the usual target): dict lookups, no path walking.
            only = self.parts[0] if len(self.parts) == 1 else None
            if isinstance(only, tuple):
                self.simple_keys = only
                self.render = first_scalar(only)
            else:
                self.render = _joined_scalars(self.parts)

    def _render(self, args: Mapping[str, Any]) -> str | None:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            for alt in part:
                text = render_scalar(self.paths[alt].resolve(args))
                if text is not None:
                    out.append(text)
                    break
            else:
                return None
        return "".join(out)


def first_scalar(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], str | None]:
    def render(args: Mapping[str, Any]) -> str | None:
        for key in keys:
            value = args.get(key)
            if isinstance(value, str):
                return value
            if value is not None:
                text = render_scalar(value)
                if text is not None:
                    return text
        return None

    return render


def _joined_scalars(parts: tuple[Part, ...]) -> Callable[[Mapping[str, Any]], str | None]:
    steps = tuple(part if isinstance(part, str) else first_scalar(part) for part in parts)

    def render(args: Mapping[str, Any]) -> str | None:
        out: list[str] = []
        for step in steps:
            if isinstance(step, str):
                out.append(step)
                continue
            text = step(args)
            if text is None:
                return None
            out.append(text)
        return "".join(out)

    return render


CALL_PLACEHOLDERS: Final = ("session_id", "agent", "tool", "server")


class RewriteError(Exception):
    """A rewrite could not be applied to this call (fail closed: the call is denied)."""


class ValueTemplate:
    """A ``rewrite.set`` string: placeholders ``{session_id}``, ``{agent}``, ``{tool}``,
    ``{server}`` and ``{args.PATH}`` with ``|`` fallbacks. A string that is exactly one
    ``{args.PATH}`` placeholder keeps the value's JSON type."""

    __slots__ = ("parts", "paths", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts = parse_template(text)
        self.paths: dict[str, ArgPath] = {}
        for part in self.parts:
            if not isinstance(part, tuple):
                continue
            for alt in part:
                if alt.startswith("args.") and len(alt) > len("args."):
                    self.paths[alt] = ArgPath(alt[len("args.") :])
                elif alt not in CALL_PLACEHOLDERS:
                    close = difflib.get_close_matches(alt, CALL_PLACEHOLDERS, n=1)
                    hint = f"did you mean {{{close[0]}}}? " if close else ""
                    raise TemplateError(
                        f"unknown placeholder {{{alt}}} in {text!r} ({hint}use {{session_id}}, "
                        "{agent}, {tool}, {server} or {args.KEY})"
                    )

    @property
    def uses(self) -> frozenset[str]:
        """The call placeholders used (``session_id``…); argument paths are in ``paths``."""
        return frozenset(
            alt
            for part in self.parts
            if isinstance(part, tuple)
            for alt in part
            if alt in CALL_PLACEHOLDERS
        )

    def _lookup(self, alt: str, call: ToolCall, args: Mapping[str, Any]) -> Any:
        if alt in self.paths:
            return self.paths[alt].resolve(args)
        if alt == "session_id":
            return call.session_id
        if alt == "agent":
            return call.agent
        if alt == "tool":
            return call.tool
        return call.server

    def render(self, call: ToolCall, args: Mapping[str, Any]) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], tuple):
            for alt in self.parts[0]:
                value = self._lookup(alt, call, args)
                if value is not MISSING and value is not None:
                    return copy_json(value)
            raise RewriteError(f"placeholder {{{'|'.join(self.parts[0])}}} has no value")
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            for alt in part:
                value = self._lookup(alt, call, args)
                text = render_scalar(value)
                if text is None and value is not MISSING and value is not None:
                    text = json.dumps(value, sort_keys=True, default=str)
                if text is not None:
                    out.append(text)
                    break
            else:
                raise RewriteError(f"placeholder {{{'|'.join(part)}}} has no value")
        return "".join(out)


def copy_json(value: Any) -> Any:
    """Deep copy of JSON-shaped data (dicts and lists; tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(v) for v in value]
    return value
