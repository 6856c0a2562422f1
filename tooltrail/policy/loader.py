"""Load a policy: YAML with line numbers -> JSON Schema validation -> compile.

Every error names the file, the YAML line and, inside ``rules:``, the rule id, e.g.
``policy.yaml:14: rule 'no-reset' (rules[0].when.tol): unknown key 'tol' (did you
mean 'tool'?)``. All problems found are reported together, sorted by line, in one PolicyError.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, NoReturn, cast

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from tooltrail.errors import PolicyError
from tooltrail.policy.compiler import DocPath, Problem, build, check_entries
from tooltrail.policy.engine import Policy
from tooltrail.policy.numbers import fits_decimal, too_long_int_message

SCHEMA_RESOURCE: Final = "schema.json"
_MAX_REPORTED: Final = 50


class PolicyValidationError(PolicyError):
    """A policy failed to load; ``problems`` holds each one as ``(line, where, message)``."""

    def __init__(self, message: str, problems: Sequence[tuple[int | None, str, str]]) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


# --- YAML with line numbers -----------------------------------------------------------


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers its line and the line of each key (1-based)."""

    line: int | None = None
    key_lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its line and the line of each item (1-based)."""

    line: int | None = None
    item_lines: list[int]


# A policy is a few levels deep (rules[0].when.args.files.in[0]); deeper nesting is no
# policy, and every walk of the document (schema validation, canonical form) recurses.
MAX_DEPTH: Final = 64
# What aliases may add to the document, in nodes (an alias counts as the whole node it
# names). Merge keys and shared `when:` blocks add tens; a "billion laughs" alias bomb
# (ten aliases of ten aliases of …) adds billions from a 1 KB file and would hang every
# walk of the document (`configure()`, the exporter, `policy check`, the dashboard).
MAX_ALIAS_NODES: Final = 10_000


class _Refused(Exception):
    """A document refused while composing (too deep, aliases too large); ``line`` 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


# PyYAML's parser methods are untyped; one typed handle for the strict checker.
_peek_event: Callable[[Any], Any] = yaml.SafeLoader.peek_event


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records lines, reports duplicate and non-string keys (collected in
    ``key_problems`` so they can be placed in their rule once the document is built),
    keeps dates and the YAML 1.1 boolean words (yes/no/on/off) as strings, and refuses
    nesting past MAX_DEPTH and alias use past MAX_ALIAS_NODES before anything walks the
    document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.key_problems: list[tuple[int, str]] = []
        self.depth = 0
        # Each alias as written: its line, its anchor, the node it names.
        self.alias_uses: list[tuple[int, str, yaml.Node]] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = _peek_event(self)
            node = super().compose_node(parent, index)
            if node is not None:
                anchor = str(getattr(event, "anchor", ""))
                self.alias_uses.append((event.start_mark.line + 1, anchor, node))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = _peek_event(self).start_mark.line + 1
                raise _Refused(line, f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_sizes(
    root: yaml.Node, alias_uses: Sequence[tuple[int, str, yaml.Node]]
) -> dict[int, int]:
    """Each node's size once its aliases are expanded (by node id), without expanding
    them: a depth-first walk of the node graph (aliases share their node), iterative so
    a chain of aliases cannot exhaust the stack. An alias inside the node it names (a
    cycle) is refused."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
        elif key in on_path:
            line, anchor = next((ln, a) for ln, a, n in alias_uses if n is node)
            raise _Refused(line, f"alias *{anchor} is inside the node it names (a cycle)")
        elif key not in sizes:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes


def _check_aliases(root: yaml.Node, alias_uses: Sequence[tuple[int, str, yaml.Node]]) -> None:
    if not alias_uses:
        return
    sizes = _expanded_sizes(root, alias_uses)
    added = 0
    for line, anchor, node in alias_uses:
        added += sizes[id(node)]
        if added > MAX_ALIAS_NODES:
            raise _Refused(
                line,
                f"alias *{anchor} takes the aliases past {MAX_ALIAS_NODES:,} nodes in all "
                f"(*{anchor} alone stands for {sizes[id(node)]:,}): refused as a YAML alias "
                "bomb; write the repeated parts out",
            )


_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
# YAML 1.2 core schema booleans. YAML 1.1 also reads yes/no/on/off (any case) as booleans,
# so `args: {mode: on}` would silently compare the argument with true and never match the
# text "on" an agent sends; a policy means the text, so those words stay strings.
_CORE_BOOL: Final = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def _resolvers(first: str, resolvers: list[tuple[str, re.Pattern[str]]]) -> list[Any]:
    out: list[tuple[str, re.Pattern[str]]] = []
    for tag, rx in resolvers:
        if tag == _TIMESTAMP_TAG:
            continue  # YAML 1.1 turns `2024-01-01` into a date, which is not JSON
        if tag == _BOOL_TAG:
            if first in "tTfF":
                out.append((tag, _CORE_BOOL))
            continue
        out.append((tag, rx))
    return out


_LineLoader.yaml_implicit_resolvers = {
    first: _resolvers(first, resolvers)
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                loader.key_problems.append(
                    (
                        line,
                        f"duplicate key {key_node.value!r} (first at line {seen[key_node.value]})",
                    )
                )
            seen.setdefault(key_node.value, line)
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            line = key_node.start_mark.line + 1
            loader.key_problems.append((line, f"key {key!r} is not a string (quote it)"))
            continue
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: _LineLoader, node: yaml.ScalarNode) -> int | None:
    """An integer, unless longer than Python writes in decimal (4,300 digits): that would
    fail in whatever prints or hashes the policy; reported at its line, in its rule."""
    value: int | None
    try:
        value = loader.construct_yaml_int(node)
    except ValueError:  # a decimal integer past the limit: int() refuses to read it
        value = None
    if value is None or not fits_decimal(value):
        line = node.start_mark.line + 1
        loader.key_problems.append((line, too_long_int_message(len(str(node.value)))))
        return None
    return value


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text into LineDict / LineList; YAML errors raise PolicyValidationError."""
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_aliases(node, loader.alias_uses)
        doc = None if node is None else loader.construct_document(node)
    except _Refused as e:
        raise PolicyValidationError(
            f"{_prefix(source, e.line)}{e.message}", [(e.line, "policy", e.message)]
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = f"malformed YAML: {e.context + ', ' if e.context else ''}{e.problem or e}"
        raise PolicyValidationError(
            f"{_prefix(source, line)}{problem}", [(line, "policy", problem)]
        ) from e
    except yaml.YAMLError as e:
        problem = f"malformed YAML: {e}"
        raise PolicyValidationError(f"{source}: {problem}", [(None, "policy", problem)]) from e
    finally:
        loader.dispose()
    if loader.key_problems:
        located = sorted((line, _where_line(doc, line), msg) for line, msg in loader.key_problems)
        text_lines = [f"{_prefix(source, line)}{where}: {msg}" for line, where, msg in located]
        raise PolicyValidationError("\n".join(text_lines), located)
    return doc


def _where_line(doc: Any, line: int) -> str:
    """Which top-level section (and, in ``rules:``, which rule) holds ``line``."""
    if not isinstance(doc, LineDict):
        return "policy"
    above = [(ln, key) for key, ln in doc.key_lines.items() if ln <= line]
    if not above:
        return "policy"
    section: str = max(above)[1]
    rules = doc.get(section)
    if section == "rules" and isinstance(rules, LineList) and rules.item_lines:
        starts = [i for i, ln in enumerate(rules.item_lines) if ln <= line]
        if starts:
            rule = rules[starts[-1]]
            rule_id = rule.get("id") if isinstance(rule, Mapping) else None
            if isinstance(rule_id, str):
                return f"rule {rule_id!r} (rules[{starts[-1]}])"
            return f"rules[{starts[-1]}]"
    return section


# --- locating problems ------------------------------------------------------------------


def locate(doc: Any, path: DocPath) -> int | None:
    """The line of the deepest element of ``path`` the document knows about."""
    line = getattr(doc, "line", None)
    node = doc
    for step in path:
        if isinstance(node, Mapping) and isinstance(step, str) and step in node:
            if isinstance(node, LineDict):
                line = node.key_lines.get(step, line)
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            if isinstance(node, LineList):
                line = node.item_lines[step]
            node = node[step]
        else:
            break
        line = getattr(node, "line", None) if line is None else line
    return line


def _rule_id(doc: Any, path: DocPath) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        try:
            rule = doc["rules"][path[1]]
        except (KeyError, IndexError, TypeError):
            return None
        rule_id = rule.get("id") if isinstance(rule, Mapping) else None
        return rule_id if isinstance(rule_id, str) else None
    return None


def _path_text(path: DocPath) -> str:
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step == "" or "." in step:  # a key a dotted path cannot spell: quote it
            out += f"[{json.dumps(step)}]"
        else:
            out += f".{step}" if out else step
    return out


def _where(doc: Any, path: DocPath) -> str:
    rule_id = _rule_id(doc, path)
    text = _path_text(path)
    if rule_id is not None:
        return f"rule {rule_id!r} ({text})"
    return text or "policy"


def _prefix(source: str, line: int | None) -> str:
    return f"{source}:{line}: " if line is not None else f"{source}: "


# --- JSON Schema ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The policy JSON Schema shipped in the package."""
    text = resources.files("tooltrail.policy").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


def _arg_path_pattern() -> str:
    pattern: str = schema()["$defs"]["argPath"]["pattern"]
    return pattern


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _schema_problems(error: ValidationError) -> list[Problem]:
    """Readable problems for one jsonschema error (which may stand for several keys)."""
    path: DocPath = tuple(error.absolute_path)
    validator = error.validator
    if validator in ("anyOf", "oneOf") and error.context:
        return _schema_problems(_relevant(error))
    if validator == "additionalProperties" and isinstance(error.instance, Mapping):
        schema_node = error.schema if isinstance(error.schema, Mapping) else {}
        allowed = sorted(schema_node.get("properties", {}))
        extras = [k for k in error.instance if k not in allowed]
        if extras:
            return [
                Problem((*path, str(k)), f"unknown key {k!r}{_suggest(str(k), allowed)}")
                for k in extras
            ]
    if validator == "required" and isinstance(error.instance, Mapping):
        required: list[str] = list(cast(list[str], error.validator_value))
        missing = [k for k in required if k not in error.instance]
        return [Problem(path, f"missing required key {k!r}") for k in missing]
    if validator == "enum":
        choices = [str(c) for c in cast(list[Any], error.validator_value)]
        hint = ""
        if isinstance(error.instance, str):
            upper = [c for c in choices if c.upper() == error.instance.upper()]
            hint = f" (did you mean {upper[0]!r}?)" if upper else _suggest(error.instance, choices)
        return [Problem(path, f"{error.instance!r} is not one of {', '.join(choices)}{hint}")]
    if validator == "const":
        return [Problem(path, f"must be {error.validator_value!r}, got {error.instance!r}")]
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        article = "an" if str(expected)[0] in "aeiou" else "a"
        return [Problem(path, f"must be {article} {expected}, got {_json_type(error.instance)}")]
    if validator == "pattern" and error.validator_value == _arg_path_pattern():
        if "propertyNames" in error.schema_path:
            path = (*path, str(error.instance))  # the key itself is wrong: point at it
        return [
            Problem(
                path,
                f"{error.instance!r} is not an argument path: names separated by single dots, "
                "none empty (e.g. 'token', 'files.0.path')",
            )
        ]
    if validator == "pattern" and path and path[-1] == "id":
        return [
            Problem(
                path,
                f"{error.instance!r} is not a valid rule id "
                "(letters, digits, '-', '_', '.'; starting with a letter or digit)",
            )
        ]
    return [Problem(path, error.message)]


_SHAPE_VALIDATORS: Final = frozenset({"type", "enum", "const"})


def _relevant(error: ValidationError) -> ValidationError:
    """For an anyOf/oneOf failure, the sub-error from the alternative whose shape fits the
    value (an object given where a string or an operator object is allowed is judged as
    an operator object), so the message says what is actually wrong."""
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    fitting = [
        subs
        for subs in branches.values()
        if not any(s.validator in _SHAPE_VALIDATORS and not s.relative_path for s in subs)
    ]
    chosen = best_match(fitting[0]) if len(fitting) == 1 else best_match(error.context or [error])
    return cast(ValidationError, chosen)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_plain(value: Any, path: DocPath, out: list[Problem], keys: list[Problem]) -> None:
    """What JSON cannot hold, at the place it is: non-string keys (possible from a Python
    mapping; into ``keys``), nesting past MAX_DEPTH (into ``keys``: the schema validator
    recurses), infinities and NaN (YAML `.inf`, `.nan`), integers too long to write in
    decimal and values of other types (into ``out``)."""
    if isinstance(value, Mapping | list | tuple) and len(path) >= MAX_DEPTH:
        keys.append(Problem(path, f"nested deeper than {MAX_DEPTH} levels"))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                keys.append(Problem(path, f"key {key!r} is not a string"))
            else:
                _check_plain(item, (*path, key), out, keys)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(item, (*path, i), out, keys)
    elif isinstance(value, int) and not isinstance(value, bool) and not fits_decimal(value):
        out.append(Problem(path, too_long_int_message(value.bit_length() * 30103 // 100000 + 1)))
    elif isinstance(value, float) and not math.isfinite(value):
        name = "NaN" if math.isnan(value) else "infinity"
        out.append(Problem(path, f"{name} is not a JSON number (write a finite number)"))
    elif value is not None and not isinstance(value, str | int | float):
        out.append(Problem(path, f"a {type(value).__name__} is not a JSON value"))


def _located(doc: Any, problems: Sequence[Problem]) -> list[tuple[int | None, str, str]]:
    return sorted(
        {(locate(doc, p.path), _where(doc, p.path), p.message) for p in problems},
        key=lambda t: (t[0] if t[0] is not None else 0, t[1], t[2]),
    )


def _raise(doc: Any, source: str, problems: Sequence[Problem]) -> NoReturn:
    located = _located(doc, problems)
    lines = [f"{_prefix(source, line)}{where}: {msg}" for line, where, msg in located]
    if len(lines) > _MAX_REPORTED:
        lines = [*lines[:_MAX_REPORTED], f"... and {len(lines) - _MAX_REPORTED} more problems"]
    raise PolicyValidationError("\n".join(lines), located)


# --- entry points ---------------------------------------------------------------------


def compile_document(doc: Any, source: str, file: str | None = None) -> Policy:
    """Validate and compile a parsed document (from YAML or a Python mapping); ``source``
    names it in messages, ``file`` is the path it was read from, if any."""
    if doc is None:
        raise PolicyValidationError(
            f"{source}: the policy is empty", [(None, "policy", "the policy is empty")]
        )
    if not isinstance(doc, Mapping):
        got = _json_type(doc)
        raise PolicyValidationError(
            f"{_prefix(source, getattr(doc, 'line', None))}the policy must be a mapping, got {got}",
            [(getattr(doc, "line", None), "policy", f"the policy must be a mapping, got {got}")],
        )
    problems: list[Problem] = []
    key_problems: list[Problem] = []
    _check_plain(doc, (), problems, key_problems)
    if key_problems:  # jsonschema's pattern keywords raise on a non-string key
        _raise(doc, source, key_problems + problems)
    for error in _validator().iter_errors(doc):
        problems.extend(_schema_problems(error))
    if problems:
        # Also the semantic problems of the entries the schema passed (duplicate ids, bad
        # regexes…), so one run lists them all instead of revealing them fix by fix.
        bad = [p.path for p in problems]

        def broken(path: DocPath) -> bool:
            return any(p[: len(path)] == path for p in bad)

        # Best effort on a document known to be invalid: should an entry the schema passed
        # still trip the compiler, the schema problems must be reported all the same.
        with contextlib.suppress(Exception):
            problems += check_entries(doc, lambda path: locate(doc, path), broken)
        _raise(doc, source, problems)
    compiled, problems = build(doc, lambda path: locate(doc, path))
    if compiled is None:
        _raise(doc, source, problems)
    warnings = [
        f"{_prefix(source, line)}{where}: {msg}"
        for line, where, msg in _located(doc, compiled.warnings)
    ]
    return Policy(compiled, source=file, warnings=warnings)


def loads_policy(text: str, source: str = "<string>", file: str | None = None) -> Policy:
    """Load a policy from YAML text (``source`` names it in error messages)."""
    return compile_document(parse_yaml(text, source), source, file)


def load_policy(source: str | os.PathLike[str] | Mapping[str, Any]) -> Policy:
    """Load, validate and compile a policy from a YAML file path or a mapping.

    Raises tooltrail.errors.PolicyError naming the file, line and rule id of each problem.
    """
    if isinstance(source, Mapping):
        return compile_document(source, "<mapping>")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PolicyValidationError(
            f"{path}: cannot read the policy file: {reason}", [(None, "policy", reason)]
        ) from e
    return loads_policy(text, str(path), str(path))
