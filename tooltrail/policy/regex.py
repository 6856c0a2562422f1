"""Policy regexes, matched in linear time.

A policy's ``regex:`` operands (conditions and ``redact:``) run on every call an agent makes,
on text the agent chose. Python's ``re`` backtracks: ``(a+)+$`` takes seconds on 26
characters, so a policy regex could hang the agent it guards. They run on RE2 instead
(``google-re2``), whose matching time is linear in the text whatever the pattern. RE2 has
no backreferences, lookaround, atomic groups or possessive repeats (the constructs that
need backtracking); a pattern using one is refused when the policy loads, naming it.

Semantics a policy author may notice (docs/POLICY.md "Regexes"): ``$`` matches only at the
very end of the text (Python's also before a final newline), ``\\d``, ``\\w``, ``\\s`` and
``\\b`` are ASCII (``\\pN``, ``\\pL`` are the Unicode classes); ``(?i)`` folds Unicode case.

Text is matched as UTF-8; a lone surrogate (which JSON can carry, ``"\\ud800"``) is encoded
as is (``surrogatepass``) rather than failing the call: it is simply a character no
pattern but ``.`` or a negated class matches.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import re2

_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogatepass"


class RegexError(ValueError):
    """A pattern that is not a valid policy regex (the message says why)."""


class TextPattern(Protocol):
    """What the redaction code needs of a pattern: an RE2 ``PolicyRegex`` for a policy's
    own regexes, or a ``re.Pattern`` for the literal-prefix ones built from a value."""

    @property
    def pattern(self) -> str: ...

    def subn(self, repl: str, string: str) -> tuple[str, int]: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # RE2 would print parse errors on stderr; we report them
    options.never_capture = True  # only whole matches are used: no submatch bookkeeping
    return options


_OPTIONS: Final = _options()


class PolicyRegex:
    """One compiled policy regex: ``search`` (is there a match anywhere) and ``sub``/``subn``
    (replace every match with a fixed text, as ``re.sub`` with a plain replacement)."""

    __slots__ = ("_rx", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            # Compiled as UTF-8 bytes (RE2's UTF-8 mode, so `.` and classes are per
            # character): matching bytes skips the wrapper's str offset bookkeeping, and
            # lets text with a lone surrogate be matched instead of raising.
            self._rx = re2.compile(pattern.encode(_ENCODING, _ERRORS), _OPTIONS)
        except re2.error as e:
            raise RegexError(_explain(pattern, e)) from None

    def __repr__(self) -> str:
        return f"PolicyRegex({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyRegex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in ``text``."""
        return self._rx.search(text.encode(_ENCODING, _ERRORS)) is not None

    def subn(self, repl: str, string: str) -> tuple[str, int]:
        """``string`` with every (non-overlapping, leftmost) match replaced by ``repl``
        taken literally, and how many were replaced."""
        fixed = repl.encode(_ENCODING, _ERRORS)
        out, count = self._rx.subn(lambda _m: fixed, string.encode(_ENCODING, _ERRORS))
        if not count:
            return string, 0
        try:
            return out.decode(_ENCODING, _ERRORS), count
        except UnicodeDecodeError:  # a match cut a (surrogate) sequence: keep it readable
            return out.decode(_ENCODING, "replace"), count

    def sub(self, repl: str, string: str) -> str:
        return self.subn(repl, string)[0]


# What RE2's parser says about a construct Python's `re` accepts, and its name for people.
_UNSUPPORTED: Final = (
    ("(?=", "a lookahead (?=...)"),
    ("(?!", "a negative lookahead (?!...)"),
    ("(?<=", "a lookbehind (?<=...)"),
    ("(?<!", "a negative lookbehind (?<!...)"),
    ("(?>", "an atomic group (?>...)"),
    ("(?P=", "a named backreference (?P=name)"),
    ("(?#", "a comment group (?#...)"),
    ("(?x", "the verbose flag (?x)"),
    ("(?a", "the ASCII flag (?a)"),
    ("(?L", "the locale flag (?L)"),
    ("(?u", "the unicode flag (?u)"),
)
_BACKREF: Final = re.compile(r"invalid escape sequence: \\([1-9]|g)")
_ESCAPE: Final = re.compile(r"invalid escape sequence: (\\.)")
_POSSESSIVE: Final = re.compile(r"bad repetition operator: (\S+)")
_LINEAR: Final = "policy regexes run in linear time (RE2 syntax)"


def _explain(pattern: str, error: re2.error) -> str:
    """A readable reason, naming the construct when Python's ``re`` would accept it."""
    raw = error.args[0] if error.args else str(error)
    message = raw.decode(_ENCODING, "replace") if isinstance(raw, bytes) else str(raw)
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        return f"bad regex {pattern!r}: {e}"
    construct = _construct(message, pattern)
    if construct is None:
        return f"regex {pattern!r} is not supported: {message} ({_LINEAR})"
    return f"regex {pattern!r} uses {construct}, which is not supported: {_LINEAR}"


def _construct(message: str, pattern: str) -> str | None:
    if message.startswith("invalid perl operator: "):
        # RE2 quotes a few characters of the operator: look in its words, then the pattern.
        for text in (message, pattern):
            for prefix, name in _UNSUPPORTED:
                if prefix in text:
                    return name
        return None
    if message.startswith("invalid repetition size: "):
        # RE2 bounds a repeat (nested repeats multiplied) at 1000 copies: larger ones
        # would compile to huge programs.
        return f"a repeat of more than 1000 in all ({message.split(': ', 1)[1]})"
    if m := _BACKREF.search(message):
        return f"a backreference (\\{m.group(1)})"
    if m := _ESCAPE.search(message):
        hint = " (write \\z for the end of the text)" if m.group(1) == "\\Z" else ""
        return f"the escape {m.group(1)}{hint}"
    if m := _POSSESSIVE.search(message):
        return f"a possessive repeat ({m.group(1)})"
    return None


def compile_regex(pattern: str) -> PolicyRegex:
    """Compile a policy regex; ``RegexError`` names an unsupported construct."""
    return PolicyRegex(pattern)
