"""REWRITE actions (``remove``, ``set``, ``redact``) applied to copies of the arguments.

Redaction replaces a value with ``[REDACTED]`` (a key path: the whole value, unless it is
null or already a redaction marker; a regex: each match inside every string value). The
engine redacts the *original* arguments first and derives everything it reports (targets,
templates, rewritten arguments) from the redacted copy, so a secret cannot travel into any
field of a Decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from tooltrail.policy.matchers import ArgPath, RewriteError, ValueTemplate, copy_json
from tooltrail.policy.model import REDACTED, TextRedaction, ToolCall
from tooltrail.policy.regex import PolicyRegex
from tooltrail.redact import is_redaction_marker

_Location = tuple[Any, Any]  # (container, key or index)


def _locations(args: Any, path: ArgPath) -> list[_Location]:
    """Every (container, key) the path designates; fans out over lists like ArgPath. A
    dotted path designates both a top-level key literally named so and the nested value
    (as conditions read both): ``redact`` and ``remove`` must not miss the one a junk
    literal key would otherwise shadow."""
    found = list(_walk(args, path.segments))
    if isinstance(args, Mapping) and path.dotted and path.text in args:
        found.insert(0, (args, path.text))
    return found


def _walk(current: Any, segments: Sequence[str]) -> Iterator[_Location]:
    seg, rest = segments[0], segments[1:]
    if isinstance(current, Mapping):
        if seg in current:
            if rest:
                yield from _walk(current[seg], rest)
            else:
                yield (current, seg)
    elif isinstance(current, list):
        if seg.isdigit():
            idx = int(seg)
            if idx < len(current):
                if rest:
                    yield from _walk(current[idx], rest)
                else:
                    yield (current, idx)
        else:
            for item in current:
                yield from _walk(item, segments)


class Redactor:
    """The redactions of one rule: key paths and regexes over string values."""

    __slots__ = ("keys", "regexes")

    def __init__(self, keys: Sequence[ArgPath], regexes: Sequence[PolicyRegex]) -> None:
        self.keys = tuple(keys)
        self.regexes = tuple(regexes)

    def apply(self, args: dict[str, Any]) -> int:
        """Redact ``args`` in place (it must be a private copy); returns values redacted."""
        count = self.redact_keys(args)
        if self.regexes:
            count += self.scrub(args)
        return count

    def redact_keys(self, args: dict[str, Any]) -> int:
        """Replace the values the key paths designate; returns how many were replaced.
        A null holds no secret: it stays null (and is not counted), so a tool whose
        optional argument was not given does not run with a made-up ``[REDACTED]``."""
        count = 0
        for path in self.keys:
            for container, key in _locations(args, path):
                value = container[key]
                # A redaction marker (ours, or the credential scrub's `[REDACTED:<kind>]`)
                # holds no secret: neither replaced nor counted again (after the fact, the
                # exporter decides on arguments the normalizer has scrubbed already).
                if value is not None and not is_redaction_marker(value):
                    container[key] = REDACTED
                    count += 1
        return count

    def scrub(self, value: Any) -> int:
        """Regex-redact every string inside ``value`` (a dict or list) in place."""
        count = 0
        items: Iterator[tuple[Any, Any]]
        if isinstance(value, dict):
            items = iter(list(value.items()))
        elif isinstance(value, list):
            items = iter(list(enumerate(value)))
        else:
            return 0
        for key, item in items:
            if isinstance(item, str):
                new = self.scrub_text(item)
                if new != item:
                    value[key] = new
                    count += 1
            else:
                count += self.scrub(item)
        return count

    def scrub_text(self, text: str) -> str:
        for rx in self.regexes:
            text = rx.sub(REDACTED, text)
        return text

    def scrub_value(self, value: Any) -> Any:
        """A regex-redacted version of one (already copied) value."""
        if isinstance(value, str):
            return self.scrub_text(value)
        self.scrub(value)
        return value


def text_redaction(redactors: Sequence[Redactor], args: Mapping[str, Any]) -> TextRedaction | None:
    """What the matched rules' redactions must also erase from free text (a result, an
    error message, a summary): the *original* values their key paths designate, in every
    reading a condition would see, and their regexes."""
    values = [
        v
        for red in redactors
        for path in red.keys
        for v in path.candidates(args)
        if not is_redaction_marker(v)  # nothing secret to erase, and no count for it
    ]
    regexes = [rx for red in redactors for rx in red.regexes]
    return TextRedaction.of(values, regexes)


class Rewrite:
    """One rule's ``rewrite:``. Order within a rule: ``remove``, then ``set``; the engine
    applies every matched REWRITE rule in file order, then the redactions."""

    __slots__ = ("redactor", "remove", "set")

    def __init__(
        self,
        remove: Sequence[ArgPath],
        set_: Sequence[tuple[ArgPath, ValueTemplate | None, Any]],
        redactor: Redactor | None,
    ) -> None:
        self.remove = tuple(remove)
        self.set = tuple(set_)  # (path, template or None, literal value when no template)
        self.redactor = redactor

    def apply(
        self,
        call: ToolCall,
        source: Mapping[str, Any],
        target: dict[str, Any],
        scrub: Callable[[Any], Any] | None = None,
    ) -> None:
        """Apply to ``target`` (a private copy); templates read ``source`` (the redacted
        original arguments) and each value set passes through ``scrub`` (the regex
        redactions in force). Raises RewriteError when a value cannot be produced."""
        for path in self.remove:
            # Delete list items from the back so earlier indices stay valid.
            for container, key in reversed(_locations(target, path)):
                del container[key]
        for path, template, literal in self.set:
            value = template.render(call, source) if template is not None else copy_json(literal)
            if scrub is not None:
                value = scrub(value)
            _set_path(target, path, value)


def _set_path(args: dict[str, Any], path: ArgPath, value: Any) -> None:
    current: Any = args
    segments = path.segments
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if isinstance(current, MutableMapping):
            if last:
                current[seg] = value
                return
            if seg not in current or current[seg] is None:
                current[seg] = {}
            current = current[seg]
        elif isinstance(current, list) and seg.isdigit() and int(seg) < len(current):
            if last:
                current[int(seg)] = value
                return
            current = current[int(seg)]
        else:
            where = ".".join(segments[:i]) or "arguments"
            raise RewriteError(f"cannot set {path.text}: {where} is not an object")
