"""Policy regexes, matched in linear time.

A policy's ``regex:`` operands (conditions and ``redact:``) run on every call an agent makes,
on text the agent chose. Python's ``re`` backtracks: ``(a+)+$`` takes seconds on 26
characters, so a policy regex could hang the agent it guards. They run on RE2 instead
(``google-re2``), whose matching time is linear in the text whatever the pattern. RE2 has
no backreferences, lookaround, atomic groups or possessive repeats (the constructs that
need backtracking); a pattern using one is refused when the policy loads, naming it.

Semantics are Python's ``re`` for the syntax a policy may use (docs/POLICY.md "Regexes"): a
DENY rule written and tested under ``re`` must not quietly match less on RE2. Where the two
engines differ the pattern is translated before RE2 compiles it (``translate``): ``$``
outside ``(?m)`` also matches before a final newline, and ``\\s``, ``\\d``, ``\\w`` (and
their negations) are Unicode classes holding exactly the characters Python's ``re`` puts in
them (unfolded by ``(?i)``, as in Python), and ``(?i)`` puts i, I, İ and ı in one class
as Python does. ``\\b`` and ``\\B`` (Unicode word boundaries) have no RE2 equivalent, nor
has a ``$`` followed by more pattern in its branch: refused, naming the construct.

Text is matched as UTF-8; a lone surrogate (which JSON can carry, ``"\\ud800"``) is encoded
as is (``surrogatepass``) rather than failing the call: RE2 reads it as that code point,
so ``.``, negated classes and ``\\S``/``\\W``/``\\D`` match it, as in Python.
"""

from __future__ import annotations

import array
import re
import unicodedata
import warnings
from functools import lru_cache
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
            translated = translate(pattern)
            self._rx = re2.compile(translated.encode(_ENCODING, _ERRORS), _OPTIONS)
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
    if message.startswith("pattern too large"):
        # RE2 bounds a compiled program's memory; Unicode classes (\w is ~700 ranges,
        # as Python's is) repeated many times pass it.
        return "a pattern too large to compile (repeat a smaller class, or fewer times)"
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


# --- Python's `re` semantics in RE2 syntax -------------------------------------------------
#
# A small tokenizer walks the pattern once, keeping track of what changes meaning: an
# escape (the next character is taken with it), a character class (`[...]`: `$` and groups
# are literal there, `\\s` is spliced in without brackets) and groups with their `(?m)`
# flag (which decides what `$` means). Everything it does not translate is copied as is,
# and RE2 reports what it cannot parse (``_explain`` names the construct).

_LAST_CHAR: Final = 0x10FFFF
_CLASS_ESCAPES: Final = frozenset("sSdDwW")
_WORD_BOUNDARY: Final = (
    "{escape} (a word boundary), which is not supported: Python's is Unicode-aware and RE2 "
    "has only an ASCII one, so the rule would match other text than it was tested on; "
    "write (?:^|\\W) before or (?:\\W|$) after the word instead"
)
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_DOTTED_I: Final = "iI\u0130\u0131"  # one class under Python's (?i), two under RE2's


@lru_cache(maxsize=1)
def _every_character() -> str:
    """Every code point in one string (surrogates too: Python's str holds them)."""
    codes = array.array("I", range(_LAST_CHAR + 1))
    if codes.itemsize != 4:  # pragma: no cover - "I" is 32 bits on every platform we run
        return "".join(map(chr, range(_LAST_CHAR + 1)))
    return codes.tobytes().decode("utf-32-le", "surrogatepass")


def _ranges(escape: str) -> list[tuple[int, int]]:
    """The code point ranges Python's ``re`` matches with ``\\<escape>`` (str pattern,
    Unicode): asked of ``re`` itself, so they hold on this Python's Unicode version.
    Surrogates stay in (``\\S`` matches a lone one in Python): text is encoded with
    ``surrogatepass`` and RE2 reads such a sequence as that code point."""
    found = re.finditer(f"\\{escape}+", _every_character())
    return [(m.start(), m.end() - 1) for m in found]


@lru_cache(maxsize=6)
def _class_body(escape: str) -> str:
    """RE2 class items (no brackets) for exactly the characters Python's ``\\<escape>``
    matches (a negation is the complement of the positive class)."""
    ranges = _ranges(escape.lower())
    if escape.isupper():
        complement: list[tuple[int, int]] = []
        nxt = 0
        for start, end in ranges:
            if start > nxt:
                complement.append((nxt, start - 1))
            nxt = end + 1
        if nxt <= _LAST_CHAR:
            complement.append((nxt, _LAST_CHAR))
        ranges = complement
    return "".join(
        f"\\x{{{start:x}}}" if start == end else f"\\x{{{start:x}}}-\\x{{{end:x}}}"
        for start, end in ranges
    )


def _flag_group(pattern: str, i: int) -> tuple[int, str, str, bool] | None:
    """At ``(?flags)`` / ``(?flags-flags:``: (the end of the prefix, the flags it sets and
    clears, whether it opens a group); None for other groups."""
    j = i + 2
    on = off = ""
    target = "on"
    while j < len(pattern) and (pattern[j].isalpha() or pattern[j] == "-"):
        if pattern[j] == "-":
            target = "off"
        elif target == "on":
            on += pattern[j]
        else:
            off += pattern[j]
        j += 1
    if j >= len(pattern) or pattern[j] not in ":)" or j == i + 2:
        return None
    return j + 1, on, off, pattern[j] == ":"


def _hex_escape(pattern: str, i: int, digits: int) -> tuple[str, int] | None:
    """``\\uXXXX`` / ``\\UXXXXXXXX`` at ``i`` as RE2's ``\\x{...}`` (RE2 has no \\u)."""
    text = pattern[i + 2 : i + 2 + digits]
    if len(text) != digits or not set(text) <= _HEX:
        return None
    return f"\\x{{{text}}}", i + 2 + digits


def _named_escape(pattern: str, i: int) -> tuple[str, int] | None:
    """``\\N{NAME}`` as ``\\x{...}``."""
    if not pattern.startswith("{", i + 2):
        return None
    end = pattern.find("}", i + 3)
    if end < 0:
        return None
    try:
        char = unicodedata.lookup(pattern[i + 3 : end])
    except KeyError:
        return None
    return f"\\x{{{ord(char):x}}}", end + 1


def _escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """The RE2 text for the escape at ``pattern[i]`` (a backslash), and where it ends."""
    if i + 1 >= len(pattern):
        return "\\", i + 1  # a trailing backslash: RE2 reports it
    char = pattern[i + 1]
    if char in _CLASS_ESCAPES:
        body = _class_body(char)
        # Outside a class: not case-folded, as Python tests \w on the character itself
        # (RE2's (?i) would fold the ranges: U+0345 in \W stands for every iota).
        return (body if in_class else f"(?-i:[{body}])"), i + 2
    if char in "bB":
        if in_class and char == "b":
            return "\\x08", i + 2  # [\b] is a backspace in Python
        if not in_class:
            raise RegexError(f"regex {pattern!r} uses " + _WORD_BOUNDARY.format(escape=f"\\{char}"))
    if char == "Z" and not in_class:
        return "\\z", i + 2  # Python's \Z is the very end: RE2's \z
    translated = None
    if char in "uU":
        translated = _hex_escape(pattern, i, 4 if char == "u" else 8)
    elif char == "N":
        translated = _named_escape(pattern, i)
    if translated is not None:
        return translated
    return pattern[i : i + 2], i + 2


def translate(pattern: str) -> str:
    """``pattern`` (Python ``re`` syntax) rewritten for RE2 so that it matches what Python's
    ``re`` matches: ``$`` (outside ``(?m)``) as ``(?:\\n?\\z)``, ``\\s \\d \\w`` and their
    negations as Python's Unicode classes, ``\\Z`` as ``\\z``, ``\\u``/``\\U``/``\\N{}`` as
    ``\\x{}``, ``{,n}`` as ``{0,n}``, a ``[`` or ``]`` literal inside a class escaped (RE2
    reads ``[[:alpha:]]`` as a POSIX class, Python as a set of characters), under ``(?i)``
    the i-family as one class. Raises ``RegexError`` for ``\\b``, ``\\B`` and for a ``$``
    followed by more pattern."""
    return _Translator(pattern).run()


class _Translator:
    """One pass over a pattern (see ``translate``). Per open group it keeps the flags
    ``(?m)`` (what ``$`` means) and ``(?i)`` (the i-family), and whether a translated
    ``$`` was passed in the current branch: Python's ``$`` does not consume the final
    newline, ``(?:\\n?\\z)`` does, which is exact only when nothing that consumes text
    follows it in its branch (``^a$``, ``(a$|b)``); ``a$\\n`` cannot be written in RE2
    and is refused."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.out: list[str] = []
        self.flags: list[frozenset[str]] = [frozenset()]  # per open group: (?m), (?i) on
        self.after_dollar = [False]  # per open group: a translated $ earlier in the branch

    def consume(self) -> None:
        if any(self.after_dollar):
            raise RegexError(
                f"regex {self.pattern!r} has more pattern after $, which is not supported: "
                "Python's $ also matches before a final newline without taking it, which "
                "RE2 cannot express; end the branch at $, or write \\n?\\z or (?m)$"
            )

    def run(self) -> str:
        pattern, out = self.pattern, self.out
        in_class = False
        class_open = 0  # where the class began
        class_start = 0  # where a "]" is still a literal member of the class
        i, n = 0, len(pattern)
        while i < n:
            char = pattern[i]
            if char == "\\":
                if not in_class and pattern[i + 1 : i + 2] != "A":  # \z after $ differs too
                    self.consume()
                text, i = _escape(pattern, i, in_class)
                out.append(text)
                continue
            if in_class:
                if char == "]" and i != class_start:
                    in_class = False
                    out.append(self.case_fold_extra(pattern[class_open : i + 1]) + char)
                elif char in "[]":
                    out.append("\\" + char)
                else:
                    out.append(char)
                i += 1
                continue
            if char == "[":
                self.consume()
                in_class = True
                class_open = i
                i += 1
                if pattern.startswith("^", i):
                    i += 1
                    out.append("[^")
                else:
                    out.append("[")
                class_start = i
                continue
            if char == "(":
                i = self.open_group(i)
                continue
            i = self.other(char, i)
        return "".join(out)

    def case_fold_extra(self, source: str) -> str:
        """Under ``(?i)`` Python folds i, I, İ (U+0130) and ı (U+0131) into one class, RE2
        only i and I: a class Python's ``re`` says holds one of them gets all four (asked
        of ``re`` itself, on the class without its ``^``, so ranges count too)."""
        if "i" not in self.flags[-1]:
            return ""
        positive = "[" + source[2:] if source.startswith("[^") else source
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "possible nested set" and the like
                holds = re.search("(?i)" + positive, "i") is not None
        except re.error:
            return ""  # not a class Python reads: RE2 reports the pattern
        return _DOTTED_I if holds else ""

    def open_group(self, i: int) -> int:
        pattern = self.pattern
        flags = _flag_group(pattern, i) if pattern.startswith("(?", i) else None
        if flags is None:
            self.flags.append(self.flags[-1])
            self.after_dollar.append(False)
            self.out.append("(")
            return i + 1
        end, on, off, opens = flags
        state = (self.flags[-1] | set(on)) - set(off)
        if opens:
            self.flags.append(state)
            self.after_dollar.append(False)
        else:
            self.flags[-1] = state
        self.out.append(pattern[i:end])
        return end

    def other(self, char: str, i: int) -> int:
        """Outside classes: everything but escapes, classes and group openings."""
        if char == ")":
            if len(self.flags) > 1:
                self.flags.pop()
                # A $ inside the group is followed by what follows the group.
                passed = self.after_dollar.pop()
                self.after_dollar[-1] = self.after_dollar[-1] or passed
        elif char == "|":
            self.after_dollar[-1] = False  # a new branch
        elif char == "$" and "m" not in self.flags[-1]:
            self.after_dollar[-1] = True
            char = "(?:\\n?\\z)"
        elif char == "{" and (m := _REPEAT.match(self.pattern, i)):
            # Python's {,n} is {0,n}; RE2 reads it as literal text.
            char = m.group(0) if m.group(1) is None else "{0," + m.group(1) + "}"
            i = m.end() - 1
        elif char not in "*+?^$":
            self.consume()  # a literal character or "."
            if char in _DOTTED_I and "i" in self.flags[-1]:
                char = f"[{_DOTTED_I}]"
        self.out.append(char)
        return i + 1


_REPEAT: Final = re.compile(r"\{,([0-9]+)\}|\{[0-9]+(?:,[0-9]*)?\}")
