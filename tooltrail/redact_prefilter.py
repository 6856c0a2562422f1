"""Which credential rules can match a long text: one linear RE2 pass, before any ``re`` one.

The scrubber's patterns are Python ``re`` (they need lookbehinds and possessive repeats,
which RE2 lacks), and ``re`` pays per position where a pattern can start: 1 MiB holding
``--password `` a hundred thousand times (no value ever follows) cost 55-75 ms though
nothing matches. RE2 (``google-re2``, already the policy regex engine) runs a set of
patterns in one DFA pass over the text, 2-6 ms per MiB, and says which of them match
somewhere; the ``re`` alternation is then built from those rules alone, and is not run
at all when none matches (nearly always).

Safe because each RE2 pattern matches wherever its rule matches (a superset), by
construction (:func:`superset`): it is the rule's own parse tree with every zero-width
assertion dropped (lookarounds, anchors: dropping a condition only adds matches),
possessive repeats and atomic groups made plain (they only take matches away), a
backreference replaced by the pattern of its group (the text it repeats matched that
pattern), ``\\s`` spelled as Python's ASCII class, and ``(?i)`` folded by RE2's Unicode
rules (a superset of ASCII folding). A construct it does not know is refused when the
module loads, so a new rule cannot slip through unfiltered.

Fail closed: an always-matching pattern is in the set, and a pass that does not report it
(RE2 gave up: out of memory) or a text RE2 cannot take (a lone surrogate) answers None:
the caller then runs every rule the substring pre-check allows, as before.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any, Final

import re2

# The standard library's own regex parser (``re`` compiles through it; the public alias
# ``sre_parse`` is deprecated): the rules are translated from its parse tree, not by
# rewriting their text.
_parser: Any = importlib.import_module("re._parser")

# Python's ASCII \s (RE2's \s lacks \v).
_SPACE: Final = r"\t\n\x{b}\x{c}\r "
_CATEGORIES: Final = {
    "CATEGORY_SPACE": (_SPACE, False),
    "CATEGORY_NOT_SPACE": (_SPACE, True),
    "CATEGORY_DIGIT": ("0-9", False),
    "CATEGORY_NOT_DIGIT": ("0-9", True),
    "CATEGORY_WORD": ("A-Za-z0-9_", False),
    "CATEGORY_NOT_WORD": ("A-Za-z0-9_", True),
}
_ESCAPES: Final = {
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}
_REPEATS: Final = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_ASSERTIONS: Final = frozenset({"AT", "ASSERT", "ASSERT_NOT"})
_RE2_MAX_REPEAT: Final = 1000


def superset(pattern: str, flags: int = re.ASCII) -> str:
    """RE2 syntax for a pattern that matches somewhere in every text ``pattern`` (Python
    ``re``, compiled with ``flags``, which must hold ``re.ASCII``) matches somewhere in.

    >>> superset(r"h(?<![A-Za-z0-9]h)f[A-Za-z0-9]{30,}+")
    'hf(?:[A-Za-z0-9]){30,}'
    """
    tree = _parser.parse(pattern, flags)
    flags = tree.state.flags  # with the pattern's own global flags ("(?i)" first)
    if not flags & re.ASCII or flags & ~(re.ASCII | re.IGNORECASE | re.DOTALL):
        raise ValueError(f"superset: flags {flags!r} (re.ASCII and I / S only)")
    body = _emit(tree.data, {})
    modes = ("i" if flags & re.IGNORECASE else "") + ("s" if flags & re.DOTALL else "")
    return f"(?{modes}:{body})" if modes else body


def _emit(items: Sequence[tuple[Any, Any]], groups: dict[int, str]) -> str:
    out = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(_char(arg))
        elif name == "NOT_LITERAL":
            out.append(f"[^{_char(arg)}]")
        elif name == "ANY":
            out.append(".")  # outside (?s) both engines leave out only "\n"
        elif name == "IN":
            out.append(_class(arg))
        elif name == "BRANCH":
            out.append("(?:" + "|".join(_emit(b, groups) for b in arg[1]) + ")")
        elif name == "SUBPATTERN":
            group, add, remove, body = arg
            inner = _emit(body, groups)
            if group is not None:
                groups[group] = inner
            out.append(f"(?{_modes(add)}{'-' + _modes(remove) if _modes(remove) else ''}:{inner})")
        elif name in _REPEATS:  # possessive and lazy: plain (as many matches or more)
            low, high, body = arg
            if low > _RE2_MAX_REPEAT or (high != _parser.MAXREPEAT and high > _RE2_MAX_REPEAT):
                raise ValueError(f"superset: repeat {{{low},{high}}} is over RE2's limit")
            upper = "" if high == _parser.MAXREPEAT else str(high)
            out.append(f"(?:{_emit(body, groups)}){{{low},{upper}}}")
        elif name == "ATOMIC_GROUP":
            out.append(f"(?:{_emit(arg, groups)})")
        elif name in _ASSERTIONS:
            continue  # a condition on the text around: dropped (more matches, never fewer)
        elif name == "GROUPREF":
            out.append(f"(?:{groups[arg]})")  # the repeated text matched the group
        else:
            raise ValueError(f"superset: the construct {name} has no RE2 translation")
    return "".join(out)


def _modes(flags: int) -> str:
    if flags & ~(re.IGNORECASE | re.DOTALL):
        raise ValueError(f"superset: inline flags {flags!r} (only i and s)")
    return ("i" if flags & re.IGNORECASE else "") + ("s" if flags & re.DOTALL else "")


def _char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


def _class(items: Sequence[tuple[Any, Any]]) -> str:
    negate, parts = False, []
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            parts.append(_char(arg))
        elif name == "RANGE":
            parts.append(f"{_char(arg[0])}-{_char(arg[1])}")
        elif name == "CATEGORY" and str(arg) in _CATEGORIES:
            chars, negated = _CATEGORIES[str(arg)]
            if negated:  # [\S] alone is [^\s]; mixed with more, RE2 has no spelling
                if len(items) != 1:
                    raise ValueError(f"superset: {arg} inside a larger class")
                negate = True
            parts.append(chars)
        else:
            raise ValueError(f"superset: class item {name} {arg}")
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


def never_reads(pattern: str, char: str, flags: int = re.ASCII) -> bool:
    """Whether no part of ``pattern`` (lookarounds included) can match ``char``, and it has
    no anchor or boundary: then, in texts joined with ``char``, the pattern finds in each
    text exactly what it finds in that text alone (a match cannot reach ``char``, and a
    lookaround that meets it fails there as it fails at the end or start of a text).

    >>> never_reads(r"g(?<![A-Za-z0-9]g)h[pous]_[A-Za-z0-9]{30,}+", "\\x00")
    True
    >>> never_reads(r"x[^a]", "\\x00"), never_reads(r"x\\Z", "\\x00")
    (False, False)
    """
    return _never_reads(_parser.parse(pattern, flags).data, ord(char))


def _never_reads(items: Sequence[tuple[Any, Any]], code: int) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            ok = arg != code
        elif name == "IN":
            ok = not _class_holds(arg, code)
        elif name in ("NOT_LITERAL", "ANY", "AT"):
            ok = False  # NOT_LITERAL could be refined; the rules do not use it
        elif name == "BRANCH":
            ok = all(_never_reads(b, code) for b in arg[1])
        elif name == "SUBPATTERN":
            ok = _never_reads(arg[3], code)
        elif name in _REPEATS:
            ok = _never_reads(arg[2], code)
        elif name == "ATOMIC_GROUP":
            ok = _never_reads(arg, code)
        elif name in ("ASSERT", "ASSERT_NOT"):
            ok = _never_reads(arg[1], code)
        elif name == "GROUPREF":
            ok = True  # repeats text its group matched, which was checked
        else:
            ok = False
        if not ok:
            return False
    return True


def _class_holds(items: Sequence[tuple[Any, Any]], code: int) -> bool:
    negate, held = False, False
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            negate = True
        elif name == "LITERAL":
            held = held or arg == code
        elif name == "RANGE":
            held = held or arg[0] <= code <= arg[1]
        elif name == "CATEGORY" and str(arg) in _ESCAPES:  # ask re itself (ASCII classes)
            held = held or re.fullmatch(_ESCAPES[str(arg)], chr(code), re.ASCII) is not None
        else:
            return True  # unknown: assume it may
    return held != negate


class RuleSet:
    """Patterns (RE2 syntax) searched for together in one pass."""

    __slots__ = ("_count", "_set")

    def __init__(self, patterns: Sequence[str]) -> None:
        options = re2.Options()
        options.log_errors = False
        # The DFA's cache: a larger one is rebuilt less often on varied text.
        options.max_mem = 32 << 20
        self._set = re2.Set.SearchSet(options)
        for pattern in patterns:
            self._set.Add(pattern)
        self._count = len(patterns)
        # Last, a pattern that matches every text: its absence means RE2 gave up.
        self._set.Add("")
        self._set.Compile()

    def matching(self, text: str) -> frozenset[int] | None:
        """Indices (into the patterns given) of those that match somewhere in ``text``
        (the set may also hold ``len(patterns)``, the sentinel); None when RE2 could not
        tell (the caller must then assume that any may match)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: RE2 takes UTF-8 only
            return None
        found = self._set.Match(data)
        if not found or self._count not in found:
            return None
        return frozenset(found)


__all__ = ["RuleSet", "never_reads", "superset"]
