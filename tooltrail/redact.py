"""Credential scrubbing: secrets never reach disk.

Everything free-form that tooltrail lands (tool arguments, results, status messages, action
summaries, the ``attributes`` / ``resource`` JSON) goes through a :class:`Redactor` first.
The rules:

* **shapes**: well-known credential formats anywhere in a string become
  ``[REDACTED:<kind>]``. The families (GitHub, GitLab, OpenAI, Anthropic, AWS, Stripe,
  Google, Hugging Face, npm, PyPI, Azure, SendGrid, Slack ... tokens, ``Bearer`` and
  ``Basic`` headers, PEM private keys, JWTs, passwords in URLs, pre-signed URL signatures,
  ``password=...`` assignments, ``--password value`` flags) are data:
  ``tooltrail/secret_rules.toml``, each with a sample the tests run;
* **bare tokens**: a run of base64 characters with upper- and lower-case letters and digits
  is an AWS secret access key when it is 40 long, and is removed when it decodes to text
  that holds a secret (``base64_secret``);
* **key names**: in mappings, the value of a key named like a credential (``password``,
  ``pwd``, ``api_key``, ``secretAccessKey``, ``GITHUB_TOKEN``, ``Authorization``,
  ``cookie`` ...) becomes ``[REDACTED:key]`` whatever it looks like; so does, in a list,
  the value after a credential-named flag (``["--password", p]``) and the second of a
  pair whose first names a credential (``["X-Api-Key", v]``, header lists). A key that
  itself holds a credential shape is scrubbed like any string. In free text that quotes a
  value (JSON or a Python repr in a reason, an error, a result), the same rules apply to
  a quoted name, a separator and a quoted value (``"--password", "p"``, ``'pwd': 'v'``).

Every replacement is counted, so an auditor sees that something was removed.

Time: every pattern is written to match in time linear in the text (see the rules file's
header; bench/redact.py measures adversarial input), and nested values are walked with an
explicit stack, so no input can stall landing or raise ``RecursionError``.

Speed: the exporter scrubs every span on the host's export thread, and nearly all text holds
no secret. The patterns only run on text that passed a pre-check: a handful of substring
searches for literal markers that every pattern needs (``sk-``, ``akia``, ``token``,
``://`` ...), plus one scan for a long mixed-case base64 run. Text with neither costs about
a microsecond per few hundred characters. Text with a marker gets one RE2 pass
(``tooltrail/redact_prefilter.py``: each rule translated into an RE2 pattern that matches
wherever the rule does) that says which rules, and whether the quoted-name rule and the
bare-token search, can match at all: only those run (``re`` pays per position where a rule
can start, RE2 a few ms per MiB whatever the text), their alternation cached per
combination. A mapping's keys get one such pass together. A container under a
credential-named key is replaced whole, so a JSON document's is checked, not built. The
agent-side instrumentation uses this module: it needs the standard library and
``google-re2`` (a dependency already, for policy regexes).

One file past 600 lines: the text rules, the object walk and the pre-checks share the rule
tables and the per-Redactor caches, and every writer imports this one module.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from itertools import accumulate, repeat
from operator import ne
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from tooltrail._json import dumps_iterative, loads_iterative
from tooltrail.config import ENV_REDACT, env_flag
from tooltrail.redact_prefilter import RuleSet, never_reads, superset

REDACTED_TEMPLATE: Final = "[REDACTED:{}]"
KEY_KIND: Final = "key"
AWS_SECRET_KIND: Final = "aws_secret_key"
BASE64_KIND: Final = "base64_secret"
_KEY_MARK: Final = REDACTED_TEMPLATE.format(KEY_KIND)
_V = TypeVar("_V")

# Key-name rule: a normalized key (lower case; ``-``, ``.`` and spaces become ``_``; also
# read with camelCase split, ``secretAccessKey`` -> ``secret_access_key``) that equals or
# ends with one of these is a credential. "Ends with" catches GITHUB_TOKEN, client_secret,
# x-api-key; it deliberately misses ``input_tokens`` / ``max_tokens`` (token counts), which
# end in "tokens".
SENSITIVE_KEY_SUFFIXES: Final = (
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "pass_code",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "accesskey",
    "private_key",
    "privatekey",
    "secret_key",
    "secretkey",
    "account_key",
    "accountkey",
    "auth_key",
    "authkey",
    "signing_key",
    "encryption_key",
    "master_key",
    "session_key",
    "authorization",
    "cookie",
    "credential",
    "credentials",
    "x_amz_signature",
    "x_goog_signature",
)
# Words that name a credential only whole (the key, or its last ``_`` part): ``pwd``,
# ``db_pass``, ``sig``; as the end of a longer word they do not (``bypass``, ``design``).
SENSITIVE_KEY_WORDS: Final = ("pwd", "pass", "sig", "auth")
_KEY_ENDINGS: Final = SENSITIVE_KEY_SUFFIXES + tuple(f"_{w}" for w in SENSITIVE_KEY_WORDS)

# Flags for every pattern: ASCII keeps (?i) and \s to ASCII, matching the pre-check, which
# lower-cases text and looks for ASCII markers.
_FLAGS: Final = re.ASCII
RULES_FILE: Final = Path(__file__).with_name("secret_rules.toml")


class Rule(NamedTuple):
    """One credential family from ``secret_rules.toml``."""

    id: str
    kind: str
    pattern: str  # the kept part (a key or header name) ends at the empty group ``<id>_p``
    markers: tuple[str, ...]
    sample: str  # a text the rule matches
    secret: str  # the part of ``sample`` that must not survive scrubbing


_ALNUM: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_FILL: Final = re.compile(r"@(hex|low)?([0-9]+)")


def _fill(piece: str, seed: int) -> str:
    # Sample pieces "@N" / "@hexN" / "@lowN" stand for generated characters, so the rules
    # file holds no literal credential for a secret scanner to flag.
    m = _FILL.fullmatch(piece)
    if m is None:
        return piece
    alphabet = {"hex": "0123456789abcdef", "low": _ALNUM[:26] + _ALNUM[52:]}.get(
        m.group(1) or "", _ALNUM
    )
    return "".join(alphabet[(i * 17 + seed * 5) % len(alphabet)] for i in range(int(m[2])))


def _load_rules(path: Path) -> tuple[tuple[Rule, ...], tuple[str, ...]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    rules = []
    for entry in data["rule"]:
        rid = entry["id"]
        pieces = [_fill(p, i) for i, p in enumerate(entry["sample"])]
        lo, hi = entry.get("secret", [0, len(pieces)])
        pattern = entry["regex"].replace("(?P<keep>", f"(?P<{rid}_p>")
        try:
            re.compile(pattern, _FLAGS)
        except re.error as e:  # a broken rules file is a bug: name the rule
            raise ValueError(f"{path}: rule {rid!r}: invalid regex: {e}") from e
        rules.append(
            Rule(
                rid,
                entry.get("kind", rid),
                pattern,
                tuple(entry["markers"]),
                "".join(pieces),
                "".join(pieces[lo:hi]),
            )
        )
    tier = data["first_tier"]
    if not isinstance(tier, list) or not all(isinstance(m, str) and m for m in tier):
        raise ValueError(f"{path}: first_tier must be a list of non-empty strings")
    return tuple(rules), tuple(tier)


RULES, FIRST_TIER = _load_rules(RULES_FILE)

# rule id -> (pattern, markers). Markers are lower-case substrings; a text matching the
# pattern always contains one of them (lower-cased), which is what makes the pre-check
# safe. Order matters where two rules can match at one position: the first listed wins.
_KINDS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    r.id: (r.pattern, r.markers) for r in RULES
}


def _leading_group(pattern: str) -> tuple[list[str], str] | None:
    """For a pattern ``(?:A|B|...)REST``: its alternatives and REST, else None."""
    if not pattern.startswith("(?:"):
        return None
    depth, i, start, parts = 0, 0, 3, []
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a class: skip to its end ("|" and parentheses are literal inside)
            i = _class_end(pattern, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                parts.append(pattern[start:i])
                return parts, pattern[i + 1 :]
        elif c == "|" and depth == 1:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    return None


def _class_end(pattern: str, i: int) -> int:
    """The index after the class that starts at ``pattern[i]`` ("[")."""
    i += 1
    if pattern.startswith("^", i):
        i += 1
    if pattern.startswith("]", i):  # a "]" first in a class is literal
        i += 1
    while pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


_FIRST_CLASS: Final = re.compile(r"\[([A-Za-z]+)\]")


def _literal_first(pattern: str) -> list[str]:
    """``pattern`` as alternatives that each start with one literal character, where it
    starts with a class of letters (``[bB]earer``) or an alternation of such: a regex whose
    alternatives all start with a literal lets the engine skip to the positions where one
    of those characters is, instead of entering every alternative at every position."""
    group = _leading_group(pattern)
    if group is not None:
        alternatives, rest = group
        return [x for alt in alternatives for x in _literal_first(alt + rest)]
    m = _FIRST_CLASS.match(pattern)
    if m is not None:
        return [c + pattern[m.end() :] for c in m.group(1)]
    return [pattern]


# Rule id -> its alternatives in the combined regex, each named ``<id>__<n>``: an empty group
# ending it (the last group to close, so it is ``lastgroup``), the kept part ending at
# ``<id>__<n>_p``.
_ALTERNATIVES: Final[dict[str, str]] = {
    r.id: "|".join(
        f"{alt.replace(f'(?P<{r.id}_p>)', f'(?P<{r.id}__{n}_p>)')}(?P<{r.id}__{n}>)"
        for n, alt in enumerate(_literal_first(r.pattern))
    )
    for r in RULES
}
_GROUP_RULE: Final[dict[str, str]] = {
    f"{r.id}__{n}": r.id for r in RULES for n in range(len(_literal_first(r.pattern)))
} | {r.id: r.id for r in RULES}
_RULE_KIND: Final[dict[str, str]] = {r.id: r.kind for r in RULES}
_PREFIXED: Final = frozenset(r.id for r in RULES if f"<{r.id}_p>" in r.pattern)
_KIND_ORDER: Final = tuple(_KINDS)
_REGEX_CACHE_MAX: Final = 256
_KEY_CACHE_MAX: Final = 4096
# Values _leaf returns as they are (exact types: a subclass goes the long way).
_PLAIN: Final = frozenset({int, float, bool, type(None)})
# A mapping with this many keys not seen before has them checked in one RE2 pass.
_KEYS_TOGETHER: Final = 16
# A list element longer than this is text, not a flag or header name.
_MAX_NAME_LEN: Final = 64


def _first_tier(markers: tuple[str, ...]) -> Callable[[str], bool]:
    # A plain loop over the entries (it replaced an ``or`` chain generated from the rules
    # file and exec'd). Measured, maybe_sensitive on clean text (best of 30 interleaved
    # rounds): 57 bytes +14..16% over the exec'd chain, 100 KB the same; any() over a
    # generator cost +37..59% and a regex alternation of the literals about 2x on short
    # text (the engine pays per position; ``in`` is one fast C search per entry).
    def _may_hold_secret(low: str) -> bool:
        """First pre-check tier on lower-cased text: one short marker per family.

        Every rule's markers (second tier) contain one of these, so False here means no
        pattern can match."""
        for marker in markers:  # noqa: SIM110 (any() over a generator is slower, see above)
            if marker in low:
                return True
        return False

    return _may_hold_secret


_may_hold_secret: Final = _first_tier(FIRST_TIER)

# First-tier entry -> the rules with a marker holding it: the rules a text can need are those
# of the entries it holds, found with one scan per entry (a scan per rule marker costs as
# much again on long text, whose cost is one scan per entry per MiB).
_TIER_RULES: Final = tuple(
    (t, frozenset(r.id for r in RULES if any(t in m for m in r.markers))) for t in FIRST_TIER
)
# Up to this length the rules found are narrowed by their own markers (a smaller regex);
# above it each marker scan would cost more than the regex it saves.
_NARROW_MAX: Final = 4096


def _rules_for(low: str) -> tuple[tuple[str, ...], bool]:
    """The rules that can match lower-cased text ``low``, in rule order, and whether it
    can hold a quoted credential name (see ``_QUOTED_NAME``)."""
    found: set[str] = set()
    names = False
    for entry, ids in _TIER_RULES:
        if entry in low:
            found |= ids
            names = names or entry in _NAME_TIER
    if not found:
        return (), names
    if len(low) > _NARROW_MAX:
        return tuple(k for k in _KIND_ORDER if k in found), names
    kinds = tuple(k for k in _KIND_ORDER if k in found and any(m in low for m in _KINDS[k][1]))
    return kinds, names


# Quoted names in text: what the list and pair rules of ``scrub_obj`` see in a parsed value,
# seen where the value is quoted inside free text (a decider's reason "saw {...}", a result
# or error message that prints the arguments, JSON or a Python repr): a quoted name, a
# separator and a quoted value, ``"--password", "p"``, ``["X-Api-Key", "v"]``,
# ``'pwd': 'v'``. Whether the name names a credential is the key-name rule's call
# (``Redactor.is_sensitive_key``), so text and objects agree.
#
# Linear: the search starts only at a quote (a literal class the engine skips to); the name
# is at most _MAX_NAME_LEN characters of a class without quotes; the value is read in a
# lookahead from its opening quote to its closing one (not consumed, so it can be the next
# name: ``"a", "--password", "p"``). A value starts right after a separator, and a quote
# inside another value of its kind is escaped (``\"``), so no two value reads of one quote
# kind overlap: each character is read at most twice (once per kind) plus the bounded names.
# (A quoted value is read as runs of a class between escapes, not a character at a time:
# sre repeats a group per iteration, 3-10x slower than a class.)
#
# Only the candidates ``_scrub_quoted_names`` can take reach Python (text quoting names
# at every element would otherwise cost a loop step each): right after the quote, a
# lookahead asks for a flag (a name starting with "-"), a name before ":" or "=", or a name,
# "," and a value the list closes after (the pair rule). It reads the name (bounded) and,
# for "," only, the value, which the pattern then reads again: twice per value at most.
_QUOTED_NAME_VALUE: Final = (
    r"""(?:"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"|'[^'\\\n]*+(?:\\.[^'\\\n]*+)*+')"""
)
_QUOTED_NAME_CHARS: Final = r"[A-Za-z0-9_.\- ]{1," + str(_MAX_NAME_LEN) + "}+"
_QUOTED_NAME_BODY: Final = (
    r"""(?P<q>["'])(?=-|"""
    + _QUOTED_NAME_CHARS
    + r"""["']\s*+(?:[:=]|,\s*+"""
    + _QUOTED_NAME_VALUE
    + r"""\s*+\]))(?P<name>"""
    + _QUOTED_NAME_CHARS
    + r""")"""
    + r"""{ending}(?P=q)\s*+(?P<sep>[,:=])\s*+"""
    + r"""(?=(?P<v>"""
    + _QUOTED_NAME_VALUE
    + r""")(?P<close>\s*+\])?)"""
)
# Every credential name (``_KEY_ENDINGS``, ``SENSITIVE_KEY_WORDS``, in any spelling) ends
# with one of these, so names that cannot be one (nearly every JSON key) fail inside the
# regex engine instead of costing a call of the key-name rule each; a Redactor with extra
# key names uses the pattern without this filter.
_NAME_TAILS: Final = (
    "word", "wd", "phrase", "code", "secret", "token", "key", "tion", "cookie", "tial",
    "tials", "ture", "pass", "sig", "auth",
)  # fmt: skip
_QUOTED_NAME: Final = re.compile(
    _QUOTED_NAME_BODY.replace(
        "{ending}", "(?i:" + "|".join(f"(?<={t})" for t in _NAME_TAILS) + ")"
    ),
    _FLAGS,
)
_QUOTED_ANY_NAME: Final = re.compile(_QUOTED_NAME_BODY.replace("{ending}", ""), _FLAGS)
# Group numbers (read by number: faster than by name, once per element); the same in both
# patterns ({ending} adds no capturing group).
_QUOTED_GROUPS: Final = tuple(_QUOTED_NAME.groupindex[g] for g in ("name", "sep", "close", "v"))


# Quoted names, all in the engine: a match only where the loop below would redact, the
# value consumed, the key-name rule decided by ``_KEY_RULE_AT_END`` (built-in names).
# Text quoting a secret every 20 bytes (``['X-Api-Key', 'v'], `` repeated: 52k per MiB)
# then costs one ``split`` and slice assignments, no Python step per match (the loop
# cost 66 ms/MiB there, this 41). Exact where it is taken: a match whose value could
# change what the loop finds after it (a quote, "\\" or "[" inside the value, a value
# that is itself a name before ":"/"=", or a flag before ",") leaves ``val`` unset, and
# then the loop runs instead; tests/test_redact_quoted_split.py compares the two.
def _key_rule_at_end(endings: tuple[str, ...], words: tuple[str, ...]) -> str:
    """Lookbehinds, true at the end of a name of ``_QUOTED_NAME_CHARS`` exactly when
    ``Redactor.is_sensitive_key`` (without extra keys) says it names a credential: its
    normalized form ends with an ending (each "_" a separator character, or, as read
    with camelCase split, a lower-to-upper step, no such step inside a word), or is a
    word (then the name's opening quote is right before it)."""
    # Grouped by the name's last character (one test picks the group), then by width (a
    # lookbehind's alternatives share one); the plain readings before the camelCase ones.
    groups: dict[str, dict[tuple[bool, int], list[str]]] = {}

    def letter(c: str) -> str:
        return f"[{c}{c.upper()}]"

    def add(last: str, camel: bool, width: int, body: str) -> None:
        groups.setdefault(last, {}).setdefault((camel, width), []).append(body)

    for e in endings:
        last = "[-_. ]" if e[-1] == "_" else letter(e[-1])
        add(last, False, len(e), "".join("[-_. ]" if c == "_" else letter(c) for c in e))
        seps = [i for i, c in enumerate(e) if c == "_"]
        for mask in range(1, 1 << len(seps)):
            camel = {seps[j] for j in range(len(seps)) if mask >> j & 1}
            add(last, True, *_camel_reading(e, camel, letter))
    for w in words:
        add(letter(w[-1]), False, len(w) + 1, "[\"']" + "".join(letter(c) for c in w))
    lasts = "".join(sorted({c for last in groups for c in last.strip("[]")}))
    return (
        f"(?<=[{lasts}])(?:"
        + "|".join(
            f"(?<={last})(?:" + "|".join(f"(?<={'|'.join(b)})" for _, b in sorted(by.items())) + ")"
            for last, by in groups.items()
        )
        + ")"
    )


def _camel_reading(e: str, camel: set[int], letter: Callable[[str], str]) -> tuple[int, str]:
    """``e`` with the "_" at the indexes ``camel`` read as camelCase steps (no character);
    no other step inside its words. (width, lookbehind body)."""
    chars = [(i, c) for i, c in enumerate(e) if not (c == "_" and i in camel)]
    out = []
    width = len(chars)
    if 0 in camel:  # a leading step: the character before the ending is lower case or a digit
        out.append("(?=[a-z0-9][A-Z])[a-z0-9]")
        width += 1
    for j, (i, c) in enumerate(chars):
        nxt = chars[j + 1] if j + 1 < len(chars) else None
        if nxt is not None and nxt[0] != i + 1:  # a step between this and the next
            out.append("(?=[a-z][A-Z])")
        elif nxt is not None and c != "_" and nxt[1] != "_":
            out.append("(?![a-z][A-Z])")
        out.append("[-_. ]" if c == "_" else letter(c))
    return width, "".join(out)


_KEY_RULE_AT_END: Final = _key_rule_at_end(_KEY_ENDINGS, SENSITIVE_KEY_WORDS)
_QN_SAFE: Final = r"""[^"'\\\n\[]++"""
_QN_MARKER: Final = r"\[REDACTED(?::[A-Za-z0-9_.-]+)?\]"


def _quoted_hits() -> re.Pattern[str]:
    name = _QUOTED_NAME_CHARS + _KEY_RULE_AT_END  # possessive: the closing quote is next
    flag = r"-[A-Za-z0-9_.\- ]{0,63}+" + _KEY_RULE_AT_END
    named = [
        # the first of a pair: a list opens before it (maybe after white space) and
        # closes after the value
        r"(?<=\[)[ \t\r\n]*+(?:" + "|".join(f"{q}(?!-){name}{q}" for q in "\"'") + ")"
        rf"\s*+,\s*+(?={_QUOTED_NAME_VALUE}\s*+\])"
    ] + [
        # a flag before ",", ":" or "="; any other name before ":" or "=" (a value read
        # before the key-name rule: a JSON key's value that never closes fails first)
        rf"(?<={q})(?:{flag}{q}\s*+[,:=]"
        rf"|(?!-)(?=[A-Za-z0-9_.\- ]{{1,64}}+{q}\s*+[:=]\s*+{_QUOTED_NAME_VALUE})"
        rf"{name}{q}\s*+[:=])\s*+"
        for q in "\"'"
    ]
    value = (
        # a value nothing after it depends on: its opening quote ends the head
        "(?:"
        + "|".join(rf"{q}(?={_QN_SAFE}{q}(?!\s*+[:=]))" for q in "\"'")
        + r""")(?!-[^"'\\\n\[]*+["']\s*+,)"""
        # any other value (not empty, not a marker): the head ends before it, val unset
        + rf"""|(?={_QUOTED_NAME_VALUE})(?!""|''|"{_QN_MARKER}"|'{_QN_MARKER}')"""
    )
    # It starts with a class: sre skips to where one of its characters is; then a quoted
    # name must follow (most quotes fail here, before any branch).
    return re.compile(
        r"""(?P<head>[\["'](?=[ \t\r\n]*+["']?[A-Za-z0-9_.\- ]{1,64}+["'])(?:"""
        + "|".join(named)
        + ")(?:"
        + value
        + "))"
        r"""(?P<val>(?<=["'])""" + _QN_SAFE + ")?",
        _FLAGS,
    )


_QUOTED_HITS: Final = _quoted_hits()


def _scrub_quoted_hits(s: str) -> tuple[str, int] | None:
    """``_scrub_quoted_names`` of a Redactor without extra key names in one split, or
    None when a match's value could change what comes after it (then the loop decides)."""
    parts = _QUOTED_HITS.split(s)  # [text, head, value, text, head, value, ..., text]
    n = len(parts) // 3
    if not n:
        return s, 0
    if None in parts[2::3]:
        return None
    parts[2::3] = [_KEY_MARK] * n
    return "".join(parts), n


# The first-tier entries that a credential key name, spelled any way (snake, kebab, camel,
# dotted, upper case) and followed by its closing quote, always contains: text holding none
# of them holds no quoted credential name (tests/test_redact_in_prose.py checks every name).
_NAME_TIER: Final = frozenset(
    {"key", "secret", "token", "pass", "pwd", "auth", "cookie", "credential", "signature"}
    | {'sig"', "sig'"}
)

_SPACE: Final = frozenset(" \t\r\n")


def _opens_list(s: str, start: int) -> bool:
    """Whether the quoted name at ``s[start]`` is a list's first element (``[`` before it,
    maybe after white space). Reads back over white space only, which no other name shares."""
    i = start - 1
    while i >= 0 and s[i] in _SPACE:
        i -= 1
    return i >= 0 and s[i] == "["


# Bare tokens: a run of base64 characters (16+) holding upper- and lower-case letters and a
# digit; hex (git SHAs, ids), words and numbers fail at the run's first character. Looked
# for where a value is the whole run: a whole string, a quoted string in text (JSON, a
# repr), a value in the pre-check's NUL-joined texts. Each search starts at a literal
# (a quote, a NUL, the start), which the regex engine finds fast; a base64 run inside prose
# is not decoded (that would cost a scan on every text). Linear: the possessive lookaheads
# each read the run once.
_B64_MIXED: Final = r"(?=[a-z0-9+/]*+[A-Z])(?=[A-Z0-9+/]*+[a-z])(?=[A-Za-z+/]*+[0-9])"
_B64_BODY: Final = r"[A-Za-z0-9+/]{16,}+={0,2}+"
_B64_END: Final = r"(?:[\"'\x00]|\Z)"
# Quoted: in JSON ("...") or in a Python repr ('...'), such as an error message or a
# result that prints the arguments.
_B64_GATE_QUOTED: Final = re.compile("[\"']" + _B64_MIXED + _B64_BODY + _B64_END, _FLAGS)
_B64_GATE_JOINED: Final = re.compile("\x00" + _B64_MIXED + _B64_BODY + _B64_END, _FLAGS)
_B64_GATE_START: Final = re.compile(_B64_MIXED + _B64_BODY + _B64_END, _FLAGS)
_B64_WHOLE: Final = re.compile(_B64_MIXED + _B64_BODY, _FLAGS)
_B64_QUOTED: Final = re.compile("([\"'])(" + _B64_BODY + ")\\1", _FLAGS)


def _may_hold_bare_token(s: str) -> bool:
    return (
        _B64_GATE_START.match(s) is not None
        or _B64_GATE_QUOTED.search(s) is not None
        or ("\x00" in s and _B64_GATE_JOINED.search(s) is not None)
    )


# Long text: which rules can match, and whether a quoted credential name can, from one RE2
# pass (tooltrail/redact_prefilter.py: each RE2 pattern matches wherever its rule does).
# The quoted-name one is written here: a quote, up to 63 name characters and a last word
# (letters, so inside the name, which is at most 64 long), a quote, a separator and the
# value's opening quote; the rest of _QUOTED_NAME only adds conditions.
#
# Finer than the tails: a name is a credential's when, normalized, it ends with an ending
# (or is a word); the ending's last word (after its last "_") has no "_", so its letters
# are the name's last characters in every spelling (case, "-", ".", " ", camelCase only
# change or add separators), e.g. "authorization", not just "tion": a JSON document with
# a "decision" key is then not searched for quoted names at all.
_NAME_LAST_WORDS: Final = tuple(
    sorted({e.rsplit("_", 1)[-1] for e in _KEY_ENDINGS + SENSITIVE_KEY_WORDS})
)
# As in _QUOTED_NAME's own filter: "," only after a flag, or before a value the list
# closes after.
_RE2_SPACE: Final = r"[\t\n\x{b}\x{c}\r ]*"
_RE2_WORD: Final = "(?i:" + "|".join(_NAME_LAST_WORDS) + ")"
_RE2_VALUE: Final = r"""(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
_QUOTED_NAME_SUPERSET: Final = (
    r"""["'](?:-[A-Za-z0-9_.\- ]{0,62}"""
    + _RE2_WORD
    + r"""["']"""
    + _RE2_SPACE
    + r"""[,:=]|[A-Za-z0-9_.\- ]{0,63}"""
    + _RE2_WORD
    + r"""["']"""
    + _RE2_SPACE
    + r"""(?:[:=]|,"""
    + _RE2_SPACE
    + _RE2_VALUE
    + _RE2_SPACE
    + r"""\]))"""
)
# Then the bare-token gates (_may_hold_bare_token). Scrubbing never adds a gate match to a
# text: what it inserts is a marker, "[" to "]", which no base64 run holds, starts or ends
# at, and the quotes it keeps stay next to what they were next to; so a text whose RE2
# pass finds no gate needs no gate search after its shapes are replaced.
_GATES: Final = (_B64_GATE_START, _B64_GATE_QUOTED, _B64_GATE_JOINED)
# (The first is used with .match: its superset is anchored at the start too.)
_GATE_SUPERSETS: Final = [rf"\A(?:{superset(_B64_GATE_START.pattern, _FLAGS)})"] + [
    superset(g.pattern, _FLAGS) for g in _GATES[1:]
]
_PREFILTER: Final = RuleSet(
    [superset(r.pattern, _FLAGS) for r in RULES] + [_QUOTED_NAME_SUPERSET] + _GATE_SUPERSETS
)
_NAMES_AT: Final = len(RULES)
_GATES_AT: Final = frozenset(range(_NAMES_AT + 1, _NAMES_AT + 1 + len(_GATES)))
# maybe_sensitive on long text, in one RE2 pass: a first-tier entry in any case (RE2 folds
# case at least as wide as str.lower: "K" (Kelvin) is "k" to both; "İ" lowers to "i" and a
# combining dot, which no entry holds) or a bare-token gate (a superset of the gate).
_TIER_SET: Final = RuleSet(
    [superset(re.escape(t), _FLAGS | re.IGNORECASE) for t in FIRST_TIER] + _GATE_SUPERSETS
)
_TIER_ENTRIES: Final = frozenset(range(len(FIRST_TIER)))
_TIER_GATES: Final = frozenset(range(len(FIRST_TIER), len(FIRST_TIER) + len(_GATES)))


def _rules_in(s: str, low: str) -> tuple[tuple[str, ...], bool, bool]:
    """``_rules_for``, from the RE2 pass (per rule, not per marker; on 40 characters
    1.2 us against 2.9 for the marker scans, on 1 MiB 2-6 ms against 15-20), and whether
    a bare token's gate can match."""
    found = _rules_found(s)
    return (*_rules_for(low), True) if found is None else found


_Found = tuple[tuple[str, ...], bool, bool]


def _rules_found(s: str) -> _Found | None:
    """The rules the RE2 pass finds can match in ``s``, whether a quoted credential name
    can, and whether a bare token's gate can; None when RE2 could not tell."""
    found = _PREFILTER.matching(s)
    if found is None:
        return None
    hit = _FOUND_RULES.get(found)
    if hit is None:
        kinds = tuple(k for i, k in enumerate(_KIND_ORDER) if i in found)
        hit = kinds, _NAMES_AT in found, not _GATES_AT.isdisjoint(found)
        if len(_FOUND_RULES) >= _REGEX_CACHE_MAX:
            _FOUND_RULES.clear()
        _FOUND_RULES[found] = hit
    return hit


# The RE2 pass's answer -> _Found: few combinations recur.
_FOUND_RULES: dict[frozenset[int], _Found] = {}


_AWS_SECRET_LEN: Final = 40
# How many base64 layers are decoded (each is 3/4 the length of the last, so the total
# work stays linear anyway).
_MAX_DECODE_DEPTH: Final = 3
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_BYTES: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# A PEM private key split into a list of lines: the header opens a block whose lines up to
# the END line are redacted with it.
_PEM_BEGIN: Final = re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*+-----", _FLAGS)
_PEM_END: Final = re.compile(r"-----END[A-Z ]*PRIVATE KEY[A-Z ]*+-----", _FLAGS)
_PEM_MARK: Final = REDACTED_TEMPLATE.format("private_key")


def _pem_state(item: Any, open_block: bool) -> bool:
    """Whether a PEM block is open after list element ``item``."""
    if not isinstance(item, str) or "-----" not in item:
        return open_block
    if open_block:
        return _PEM_END.search(item) is None
    begin = _PEM_BEGIN.search(item)
    return begin is not None and _PEM_END.search(item, begin.end()) is None


def _decode_base64(run: str) -> str | None:
    """The text a base64 run encodes, or None (not base64, not UTF-8 text)."""
    core = run.rstrip("=")
    if len(core) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    # A control byte is a control character in UTF-8 (or no UTF-8 at all): refused before
    # decoding, since random runs (nearly all) would raise UnicodeDecodeError, which
    # costs more than the rest of the check.
    if _CONTROL_BYTES.search(raw) is not None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _normalize_key(key: str) -> str:
    return key.lower().replace("-", "_").replace(".", "_").replace(" ", "_")


_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


_MARKER: Final = re.compile(r"\[REDACTED(?::[A-Za-z0-9_.-]+)?\]")


def is_redaction_marker(value: Any) -> bool:
    """Whether ``value`` is a redaction marker (``[REDACTED]``, ``[REDACTED:key]``…)."""
    return isinstance(value, str) and _MARKER.fullmatch(value) is not None


def _holds_secret(value: Any) -> bool:
    # Empty strings, None and booleans under a credential-named key reveal nothing, nor
    # does a value a policy already redacted (scrubbing it again would count it twice).
    return (
        value is not None
        and value != ""
        and not isinstance(value, bool)
        and not is_redaction_marker(value)
    )


class Redactor:
    """Scrubs credentials from text and from JSON-like objects.

    Args:
        enabled: when False every method returns its input unchanged with a count of 0.
        extra_patterns: more shapes, ``{kind: regex}``; a match becomes ``[REDACTED:kind]``.
            They run on every non-empty string (they have no pre-check), so keep them few.
        extra_keys: more credential key names, matched like the built-in ones (equal, or
            a suffix after normalization: ``"pin"`` also catches ``card_pin``).
    """

    __slots__ = (
        "_clean_keys",
        "_extra",
        "_extra_key_markers",
        "_extra_kinds",
        "_key_cache",
        "_key_endings",
        "_key_last",
        "_key_text_cache",
        "_regex_cache",
        "enabled",
    )

    def __init__(
        self,
        enabled: bool = True,
        extra_patterns: Mapping[str, str | re.Pattern[str]] | None = None,
        extra_keys: Iterable[str] = (),
    ) -> None:
        self.enabled = enabled
        extra = tuple(_normalize_key(k) for k in extra_keys if k)
        self._key_endings: tuple[str, ...] = _KEY_ENDINGS + extra
        # The last characters a credential name can have (an ending's "_" is any separator).
        self._key_last = frozenset(
            c
            for e in self._key_endings + SENSITIVE_KEY_WORDS
            for c in ("_-. " if e[-1] == "_" else e[-1])
        )
        # A key's text always contains each piece of its normalized name, so the longest
        # piece is a safe pre-check marker for text holding such a key.
        self._extra_key_markers = tuple(max(k.split("_"), key=len) for k in extra)
        self._key_cache: dict[str, bool] = {}
        # Dict keys repeat (the same argument names in every call): each is scrubbed once.
        self._key_text_cache: dict[str, tuple[str, int]] = {}
        self._clean_keys: set[str] = set()
        self._regex_cache: dict[tuple[str, ...], re.Pattern[str]] = {}
        self._extra: re.Pattern[str] | None = None
        self._extra_kinds: dict[str, str] = {}
        if extra_patterns:
            self._extra = self._compile_extra(extra_patterns)

    def _compile_extra(self, patterns: Mapping[str, str | re.Pattern[str]]) -> re.Pattern[str]:
        parts = []
        for i, (kind, pattern) in enumerate(patterns.items()):
            source = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
            try:
                re.compile(source)
            except re.error as e:
                raise ValueError(f"redaction pattern {kind!r} is not a valid regex: {e}") from e
            self._extra_kinds[f"x{i}"] = kind
            parts.append(f"(?P<x{i}>{source})")
        return re.compile("|".join(parts))

    @classmethod
    def from_env(cls) -> Redactor:
        """On unless ``$TOOLTRAIL_REDACT`` is a false value (0 / false / no / off ...)."""
        return cls(enabled=env_flag(ENV_REDACT, default=True, unrecognized=True))

    # -- text ---------------------------------------------------------------------------

    def maybe_sensitive(self, s: str) -> bool:
        """False when ``s`` certainly holds nothing to redact (cheap; may say True wrongly).

        "Nothing" covers both rules: no credential shape, and no credential key name
        (every built-in and extra key name contains a marker), so a False for a JSON
        document's text means walking it would change nothing.
        """
        if not self.enabled:
            return False
        if self._extra is not None:
            return True
        if "\\u" in s or "\\/" in s:
            # A JSON escape can spell any marker (``"\\u0070assword"`` reads "password",
            # ``:\\/\\/`` reads "://"): such text is walked, where keys are read decoded.
            return True
        if len(s) > _NARROW_MAX and not self._extra_key_markers:
            # Long text: one RE2 pass instead of a scan per first-tier entry.
            found = _TIER_SET.matching(s)
            if found is not None:
                if not found.isdisjoint(_TIER_ENTRIES):
                    return True
                if found.isdisjoint(_TIER_GATES):
                    return False
                return s.lower() != s and _may_hold_bare_token(s)  # the gates exactly
        low = s.lower()
        # A bare token holds an upper-case letter: text equal to its lower case holds none.
        if _may_hold_secret(low) or (low != s and _may_hold_bare_token(s)):
            return True
        return bool(self._extra_key_markers) and any(m in low for m in self._extra_key_markers)

    def scrub_text(self, s: str) -> tuple[str, int]:
        """``s`` with every credential shape replaced, and how many were replaced."""
        return self._scrub_text(s, 0)

    def _scrub_text(self, s: str, depth: int, found: _Found | None = None) -> tuple[str, int]:
        """``found``: what the RE2 pass found in a text holding ``s`` (a superset of what
        it would find in ``s``: the keys of one mapping are checked in one pass)."""
        if not self.enabled or not s:
            return s, 0
        count = 0
        low = s.lower()
        # A bare token holds an upper-case letter: text equal to its lower case holds none.
        upper = low != s
        if found is not None:
            kinds, names, bare = found
        elif len(low) <= _NARROW_MAX and not _may_hold_secret(low):
            # Short text: the first tier's substring scans reject clean text fastest.
            kinds, names, bare = (), False, True
        else:
            kinds, names, bare = _rules_in(s, low)
        if kinds:
            s, count = _substitute_rules(kinds, self._regex_for(kinds), s)
        if self._extra_key_markers and not names:
            names = any(m in low for m in self._extra_key_markers)
        # After the shapes: a value the ``key`` rule took is a marker now, not counted again.
        if names and ('"' in s or "'" in s):
            s, quoted = self._scrub_quoted_names(s)
            count += quoted
        if self._extra is not None:
            s, extra = _substitute(self._extra, s, self._extra_kinds)
            count += extra
        if upper and bare and depth < _MAX_DECODE_DEPTH and _may_hold_bare_token(s):
            s, runs = self._scrub_runs(s, depth)
            count += runs
        return s, count

    def _scrub_quoted_names(self, s: str) -> tuple[str, int]:
        """Quoted values that a quoted credential name before them names (``_QUOTED_NAME``)
        become ``[REDACTED:key]``, inside their quotes.

        The rules are ``_walk``'s for a parsed value: a key before ``:`` or ``=``; before
        ``,``, a flag (``"--password", p``) or the first of a pair (``["X-Api-Key", v]``,
        the list closing after the value). Without extra key names, one split
        (``_QUOTED_HITS``) when that is exact, else the loop."""
        if not self._extra_key_markers:
            fast = _scrub_quoted_hits(s)
            if fast is not None:
                return fast
        return self._scrub_quoted_names_loop(s)

    def _scrub_quoted_names_loop(self, s: str) -> tuple[str, int]:
        """``_scrub_quoted_names`` as a loop over the candidates (``_QUOTED_NAME``): any
        text, any key names. No call per match but the cached key-name rule."""
        pieces: list[str] = []
        add = pieces.append
        done = 0  # s[:done] is in pieces
        regex = _QUOTED_ANY_NAME if self._extra_key_markers else _QUOTED_NAME
        # Text dense with quoted names costs one step of this loop per name: the key-name
        # rule's cache is read here first, and the list test reads one character first.
        is_key = self.is_sensitive_key
        known = self._key_cache
        name_group, sep_group, close_group, value_group = _QUOTED_GROUPS
        flags: dict[str, bool] = {}
        for m in regex.finditer(s):
            name, sep, close = m.group(name_group, sep_group, close_group)
            if sep != ",":
                hit = known.get(name)
                if hit is None:
                    hit = is_key(name)
            elif name[0] == "-":  # a flag: _names_secret(name, False), once per name
                hit = flags.get(name)
                if hit is None:
                    flag = name.lstrip("-")
                    hit = flags[name] = bool(flag) and "=" not in flag and is_key(flag)
            else:  # the first of a pair: a list opens before it, and closes after the value
                at = m.start()
                hit = (
                    close is not None
                    and at > 0
                    and (s[at - 1] == "[" or _opens_list(s, at))
                    and (known.get(name) or is_key(name))
                )
            if not hit:
                continue
            start, end = m.span(value_group)
            start, end = start + 1, end - 1  # inside the quotes
            if start < done or start == end:
                continue
            if s.startswith("[REDACTED", start) and is_redaction_marker(s[start:end]):
                continue  # scrubbed before: nothing new, nothing counted
            add(s[done:start])
            add(_KEY_MARK)
            done = end
        if not pieces:
            return s, 0
        count = len(pieces) // 2
        pieces.append(s[done:])
        return "".join(pieces), count

    def _scrub_runs(self, s: str, depth: int) -> tuple[str, int]:
        """Bare tokens (after the shapes, so what they caught is already a marker), in a
        whole string or a quoted one: a 40-character mixed base64 run is an AWS secret
        access key; a run that decodes to text holding a secret goes whole."""
        kind = self._bare_kind(s, depth)
        if kind is not None:
            return REDACTED_TEMPLATE.format(kind), 1
        count = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal count
            kind = self._bare_kind(m.group(2), depth)
            if kind is None:
                return m.group()
            count += 1
            quote = m.group(1)
            return f"{quote}{REDACTED_TEMPLATE.format(kind)}{quote}"

        return _B64_QUOTED.sub(repl, s), count

    def _bare_kind(self, run: str, depth: int) -> str | None:
        if _B64_WHOLE.fullmatch(run) is None:
            return None
        if len(run) == _AWS_SECRET_LEN:
            return AWS_SECRET_KIND
        text = _decode_base64(run)
        if text is not None and self._decoded_holds_secret(text, depth + 1):
            return BASE64_KIND
        return None

    def _decoded_holds_secret(self, text: str, depth: int) -> bool:
        if text.lstrip()[:1] in ("{", "[") and self.maybe_sensitive(text):
            return self.scrub_json(text)[1] > 0
        return self._scrub_text(text, depth)[1] > 0

    def _regex_for(self, kinds: tuple[str, ...]) -> re.Pattern[str]:
        regex = self._regex_cache.get(kinds)
        if regex is None:
            source = "|".join(_ALTERNATIVES[k] for k in kinds)
            regex = re.compile(source, _FLAGS)
            if len(self._regex_cache) >= _REGEX_CACHE_MAX:
                self._regex_cache.clear()
            self._regex_cache[kinds] = regex
        return regex

    # -- objects ------------------------------------------------------------------------

    def is_sensitive_key(self, key: str) -> bool:
        """True when the value under ``key`` is a credential whatever it looks like."""
        if not self.enabled:
            return False
        hit = self._key_cache.get(key)
        if hit is not None:
            return hit
        if key[-1:].lower()[-1:] not in self._key_last:
            # Every ending and word ends with a character of _key_last, and normalizing
            # (lower case, separators, camelCase) keeps a name's last character: most
            # names (and a token-indexed map's keys) are settled here.
            return False
        endings = self._key_endings
        name = _normalize_key(key)
        hit = (
            name.endswith(endings)
            or (not key.islower() and _normalize_key(_CAMEL.sub("_", key)).endswith(endings))
            or name in SENSITIVE_KEY_WORDS
        )
        if len(self._key_cache) >= _KEY_CACHE_MAX:
            self._key_cache.clear()
        self._key_cache[key] = hit
        return hit

    def _names_secret(self, item: Any, pair: bool) -> bool:
        """Whether a list element makes the next one a credential: a flag named like one
        (``--password``), or the first of a pair naming one (``["X-Api-Key", v]``)."""
        if not isinstance(item, str) or len(item) > _MAX_NAME_LEN:
            return False
        if item.startswith("-"):
            name = item.lstrip("-")
            return bool(name) and "=" not in name and self.is_sensitive_key(name)
        return pair and self.is_sensitive_key(item)

    def all_keys_clean(self, keys: Iterable[str]) -> bool:
        """True when no key in ``keys`` is credential-named (one set operation when the
        keys were all seen before, which for span attribute names is nearly always)."""
        if not self.enabled or self._clean_keys.issuperset(keys):
            return True
        unknown = set(keys) - self._clean_keys
        if any(self.is_sensitive_key(k) for k in unknown):
            return False
        if len(self._clean_keys) >= _KEY_CACHE_MAX:
            self._clean_keys.clear()
        self._clean_keys.update(unknown)
        return True

    def scrub_obj(self, obj: Any) -> tuple[Any, int]:
        """A scrubbed copy of a JSON-like value (dicts, lists, tuples, strings, scalars).

        Values of credential-named keys become ``[REDACTED:key]``; strings are scanned for
        shapes (a string that itself holds a JSON object or array is scrubbed as JSON, so it
        stays parseable). Tuples come back as lists, their JSON form.
        """
        if not self.enabled:
            return obj, 0
        return self._walk(obj)

    def secret_values(self, obj: Any) -> list[Any]:
        """The values :meth:`scrub_obj` would replace for their credential-named key (or
        flag, or pair): what must not reappear in a result or an error message that
        quotes them."""
        if not self.enabled:
            return []
        found: list[Any] = []
        todo = [obj]  # an explicit stack: no nesting depth raises RecursionError
        while todo:
            node = todo.pop()
            if isinstance(node, Mapping):
                for k, v in node.items():
                    if isinstance(k, str) and self.is_sensitive_key(k) and _holds_secret(v):
                        found.append(v)
                    else:
                        todo.append(v)
            elif isinstance(node, list | tuple):
                redact_next = in_pem = False
                for i, v in enumerate(node):
                    if (redact_next and _holds_secret(v)) or (in_pem and isinstance(v, str)):
                        found.append(v)
                    else:
                        todo.append(v)
                    redact_next = self._names_secret(v, i == 0 and len(node) == 2)
                    in_pem = _pem_state(v, in_pem)
        return found

    def _walk(self, obj: Any) -> tuple[Any, int]:
        """Scrubbed copy of ``obj``, walked with an explicit stack (any depth)."""
        if not isinstance(obj, Mapping | list | tuple):
            return self._leaf(obj)
        total = 0
        # (source container, its empty copy to fill); a child container is put in place
        # in its parent's copy at once and filled when its own entry is popped.
        todo: list[tuple[Any, Any]] = []

        def copy_of(value: Any) -> Any:
            nonlocal total
            if isinstance(value, Mapping):
                todo.append((value, {}))
            elif isinstance(value, list | tuple):
                todo.append((value, []))
            else:
                value, n = self._leaf(value)
                total += n
                return value
            return todo[-1][1]

        root = copy_of(obj)
        is_key, scrub_key = self.is_sensitive_key, self._scrub_key  # once per key: bound once
        # A key whose last character is ASCII and none an ending has (in either case) is
        # no credential's name (is_sensitive_key's first test, without the call): a
        # token-indexed map's keys, thousands per mapping, are settled here.
        last_ok = self._key_last | {c.upper() for c in self._key_last}
        while todo:
            source, out = todo.pop()
            if isinstance(out, dict):
                suffixes: dict[str, int] = {}  # last "#N" given per scrubbed key here
                found, keys, texts, counts = (
                    self._keys_together(source)
                    if len(source) >= _KEYS_TOGETHER
                    else (None, [], [], [])
                )
                if len(keys) == len(source) and type(source) is dict:
                    # Every key scrubbed ahead, in the mapping's order (a token-indexed
                    # map): read alongside, no lookup per key.
                    for (k, v), text, n in zip(source.items(), texts, counts, strict=True):
                        if (
                            (k[-1:] in last_ok or not k[-1:].isascii())
                            and is_key(k)
                            and _holds_secret(v)
                        ):
                            value: Any = _KEY_MARK
                            total += 1
                        elif type(v) in _PLAIN:
                            value = v
                        else:
                            value = copy_of(v)
                        if n:
                            total += n
                            if text in out:
                                text = _unused_key(text, out, suffixes)
                        out[text] = value
                    continue
                ahead = dict(zip(keys, zip(texts, counts, strict=True), strict=True))
                for k, v in source.items():
                    text_key = isinstance(k, str)
                    if (
                        text_key
                        and (k[-1:] in last_ok or not k[-1:].isascii())
                        and is_key(k)
                        and _holds_secret(v)
                    ):
                        value = _KEY_MARK
                        total += 1
                    elif type(v) in _PLAIN:  # nothing to scrub (most values): no call
                        value = v
                    else:
                        value = copy_of(v)
                    if text_key:
                        # The keys scrubbed ahead (a big mapping's) without a call each.
                        cached = ahead.get(k) if ahead else None
                        if cached is None:
                            k, n = scrub_key(k, out, suffixes, found, ahead)
                        else:
                            k, n = cached
                            if n and k in out:
                                k = _unused_key(k, out, suffixes)
                        total += n
                    out[k] = value
            else:
                redact_next = in_pem = False
                pair = len(source) == 2
                for i, v in enumerate(source):
                    if redact_next and _holds_secret(v):
                        out.append(_KEY_MARK)
                        total += 1
                    elif in_pem and isinstance(v, str):
                        out.append(_PEM_MARK)  # counted once, with the block's header
                    else:
                        out.append(copy_of(v))
                    redact_next = self._names_secret(v, pair and i == 0)
                    in_pem = _pem_state(v, in_pem)
        return root, total

    def _leaf(self, obj: Any) -> tuple[Any, int]:
        if isinstance(obj, str):
            if obj[:1] in ("{", "[") and self.maybe_sensitive(obj):
                return self.scrub_json(obj)
            return self.scrub_text(obj)
        return obj, 0

    def _keys_ahead(self, keys: Iterable[Any]) -> tuple[_Found | None, dict[str, _Scrubbed]]:
        """A mapping's keys not scrubbed before, all at once: what the RE2 pass finds in
        them (one pass: a match in one key is one in their joined text too), and, when
        only shapes can match and their regex never reads the NUL that joins the keys
        (``never_reads``: then it finds in each key what it finds in it alone), every
        key scrubbed in one substitution. A token-indexed map has thousands of keys."""
        found, todo, texts, counts = self._keys_together(keys)
        return found, dict(zip(todo, zip(texts, counts, strict=True), strict=True))

    def _keys_together(
        self, keys: Iterable[Any]
    ) -> tuple[_Found | None, list[str], list[str], list[int]]:
        """``_keys_ahead`` as lists: what the RE2 pass found, the keys scrubbed (in the
        order ``keys`` gives them), their texts and counts (no lists: none scrubbed)."""
        todo = [k for k in keys if isinstance(k, str) and k not in self._key_text_cache]
        if len(todo) < _KEYS_TOGETHER:
            return None, [], [], []
        joined = "\x00".join(todo)
        found = _rules_found(joined)
        if found is None:
            return None, [], [], []
        kinds, names, bare = found
        if (
            not kinds
            or names
            or self._extra is not None
            or self._extra_key_markers
            or joined.count("\x00") != len(todo) - 1  # a key holding a NUL
            or not _joinable(kinds, self._regex_for(kinds))
        ):
            return found, [], [], []
        texts, counts = _substitute_keys(self._regex_for(kinds), kinds, joined, todo)
        if bare and joined.lower() != joined:  # then as _scrub_text goes on: bare tokens
            for i, key in enumerate(todo):
                if key.lower() != key and _may_hold_bare_token(texts[i]):
                    texts[i], runs = self._scrub_runs(texts[i], 0)
                    counts[i] += runs
        return found, todo, texts, counts

    def _scrub_key(
        self,
        key: str,
        out: Mapping[str, Any],
        suffixes: dict[str, int],
        found: _Found | None = None,
        ahead: Mapping[str, _Scrubbed] | None = None,
    ) -> tuple[str, int]:
        # A credential used as a key (a token-indexed map): scrubbed like any text; two
        # keys scrubbed alike are told apart so neither value is lost. ``suffixes`` keeps
        # the last number given per scrubbed key of this mapping, so N token keys cost
        # O(N), not O(N^2) (each new key would otherwise count up from #2 again).
        cached = ahead.get(key) if ahead else None
        if cached is None:
            cached = self._key_text_cache.get(key)
        if cached is None:
            cached = self._scrub_text(key, 0, found)  # (no maybe_sensitive: the same check)
            if len(self._key_text_cache) >= _KEY_CACHE_MAX:
                self._key_text_cache.clear()
            self._key_text_cache[key] = cached
        scrubbed, n = cached
        if n and scrubbed in out:
            scrubbed = _unused_key(scrubbed, out, suffixes)
        return scrubbed, n

    def scrub_json(self, text: str) -> tuple[str, int]:
        """Scrub a JSON document given as text; the result is still valid JSON.

        The document is parsed and walked (so key names count too) only when the
        pre-check finds a marker; text that is not JSON is scrubbed as plain text. A
        document nested too deep for ``json`` is read and written without recursion.
        """
        if not self.maybe_sensitive(text):
            return text, 0
        try:
            doc = json.loads(text)
        except RecursionError:
            try:
                # A container under a credential-named key is replaced whole by _walk
                # (_holds_secret is true of every list and dict), so it is checked, not
                # built: the empty list it reads as is replaced the same way.
                doc = loads_iterative(text, opaque=self.is_sensitive_key)
            except ValueError:
                return self.scrub_text(text)
        except ValueError:
            return self.scrub_text(text)
        scrubbed, count = self._walk(doc)
        if count == 0:
            return text, 0
        try:
            return json.dumps(scrubbed, ensure_ascii=False, separators=(",", ":")), count
        except RecursionError:
            return dumps_iterative(scrubbed), count


def _substitute_keys(
    regex: re.Pattern[str], kinds: tuple[str, ...], joined: str, keys: list[str]
) -> tuple[list[str], list[int]]:
    """``_substitute`` on ``keys`` joined with NUL (``joined``): each key's text, and how
    many matches it held. A token-indexed map has thousands of keys, each a match: no
    Python step per key or match where that can be avoided."""
    if "[REDACTED" not in joined:
        # With no marker in the keys, a key's text changes exactly when a match is in it
        # (what a match becomes holds a marker, the key did not), so when as many keys
        # changed as there were matches, each changed key held one. One kind of shape
        # and no kept part: a constant replacement, no call per match.
        mark = _constant_mark(kinds, regex)
        scrubbed, n = regex.subn(mark, joined) if mark else _substitute(regex, joined)
        texts = scrubbed.split("\x00")
        changed = list(map(int, map(ne, texts, keys)))
        if sum(changed) == n:
            return texts, changed
    starts: list[int] = []
    scrubbed, _ = _substitute(regex, joined, starts=starts)
    # Which key each match is in, without a Python step per match: key i ends (its NUL
    # included) at ends[i]; a match never starts at a NUL.
    ends = list(accumulate(len(k) + 1 for k in keys))
    per_key = Counter(map(partial(bisect_right, ends), starts))
    return scrubbed.split("\x00"), list(map(per_key.get, range(len(keys)), repeat(0)))


def _substitute_rules(kinds: tuple[str, ...], regex: re.Pattern[str], s: str) -> tuple[str, int]:
    """``_substitute(regex, s)``, without a Python step per match where the result is
    the same: text dense with one kind of secret (a ``key: value`` every 22 bytes) paid
    one per match. When every match becomes one marker: one ``subn``. One rule with a
    kept part (a key name), in text with no quote and no marker (so no value is kept
    quoted, none was scrubbed before): one split into kept parts and values."""
    mark = _constant_mark(kinds, regex)
    if mark:
        return regex.subn(mark, s)
    if len(kinds) == 1 and "[REDACTED" not in s and '"' not in s and "'" not in s:
        split = _split_form(kinds[0])
        if split is not None:
            parts = split.split(s)  # [text, kept, value, text, kept, value, ..., text]
            n = len(parts) // 3
            parts[2::3] = [REDACTED_TEMPLATE.format(_RULE_KIND[kinds[0]])] * n
            return "".join(parts), n
    return _substitute(regex, s)


# Rule id -> its regex as (kept part)(value), its alternatives starting with a literal as
# in _ALTERNATIVES (None: no kept part at its top level, or other groups).
_SPLIT_FORMS: dict[str, re.Pattern[str] | None] = {}


def _split_form(rule: str) -> re.Pattern[str] | None:
    if rule in _SPLIT_FORMS:
        return _SPLIT_FORMS[rule]
    pattern, _ = _KINDS[rule]
    keep = f"(?P<{rule}_p>)"
    form = None
    at = pattern.find(keep)
    prefix, value = pattern[:at], pattern[at + len(keep) :]
    if at > 0 and _top_level(prefix):
        alternatives = "|".join(_literal_first(prefix))
        candidate = re.compile(f"((?:{alternatives}))((?:{value}))", _FLAGS)
        form = candidate if candidate.groups == len("kv") else None  # kept, value
    _SPLIT_FORMS[rule] = form
    return form


def _top_level(prefix: str) -> bool:
    """Whether ``prefix`` (a pattern's start) closes every group it opens: what follows
    it is then in sequence with all of it."""
    depth, i = 0, 0
    while i < len(prefix):
        c = prefix[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _class_end(prefix, i)
            continue
        depth += (c == "(") - (c == ")")
        i += 1
    return depth == 0


# Rules -> their one replacement, when every match of their regex becomes the same marker
# ("" when not).
_CONSTANT_MARK: dict[tuple[str, ...], str] = {}


def _constant_mark(kinds: tuple[str, ...], regex: re.Pattern[str]) -> str:
    mark = _CONSTANT_MARK.get(kinds)
    if mark is None:
        actions = {_GROUP_ACTIONS[g] for g in regex.groupindex if g in _GROUP_ACTIONS}
        only = actions.pop() if len(actions) == 1 else ("", "keep")
        mark = only[0] if only[1] is None and "\\" not in only[0] else ""
        if len(_CONSTANT_MARK) >= _REGEX_CACHE_MAX:
            _CONSTANT_MARK.clear()
        _CONSTANT_MARK[kinds] = mark
    return mark


def _unused_key(scrubbed: str, out: Mapping[str, Any], suffixes: dict[str, int]) -> str:
    """``scrubbed`` told apart from the keys already in ``out`` (``#2``, ``#3``...);
    ``suffixes`` keeps the last number given per scrubbed key of this mapping, so N token
    keys cost O(N), not O(N^2) (each new key would otherwise count up from #2 again)."""
    base, i = scrubbed, suffixes.get(scrubbed, 1)
    while scrubbed in out:
        i += 1
        scrubbed = f"{base}#{i}"
    suffixes[base] = i
    return scrubbed


def _substitute(
    regex: re.Pattern[str],
    s: str,
    labels: Mapping[str, str] | None = None,
    starts: list[int] | None = None,
) -> tuple[str, int]:
    """``s`` with ``regex``'s matches replaced, and how many; ``starts`` (when given)
    receives where each counted match starts."""
    # Called once per match (text dense with secrets: one every ~25 characters), so the
    # per-group work is looked up, not rebuilt: (marker, the kept part's group or None).
    actions = _extra_actions(labels) if labels is not None else _GROUP_ACTIONS
    count = 0

    def repl(m: re.Match[str]) -> str:
        nonlocal count
        # lastgroup is the group that closed last: the rule's own (empty) group, which ends
        # its alternative (the oracle in the tests wraps the rule instead; its keep group
        # nests inside and closes first).
        mark, keep = actions[m.lastgroup or ""]
        if keep is None:
            count += 1
            if starts is not None:
                starts.append(m.start())
            return mark
        # Kept: from the match's start to the end of its ``<rule>_p`` group.
        whole = m.group()
        cut = m.end(keep) - m.start()
        value = whole[cut:]
        if "[REDACTED" in value and is_redaction_marker(value.strip("'\"")):
            # Scrubbed before (the instrumentation scrubs as values enter the span, the
            # exporter again as they land): nothing new removed, so nothing counted.
            return whole
        count += 1
        if starts is not None:
            starts.append(m.start())
        # Keep the quotes around a quoted value, so JSON / YAML text stays well-formed.
        quote = value[:1]
        if quote == "'" or quote == '"':
            closed = len(value) >= 2 and value[-1] == quote
            return f"{whole[:cut]}{quote}{mark}{quote if closed else ''}"
        return whole[:cut] + mark

    return regex.sub(repl, s), count


_Scrubbed = tuple[str, int]
# Rules -> whether their regex never reads a NUL (texts joined with one are then scrubbed
# together, each as if alone).
_JOINABLE: dict[tuple[str, ...], bool] = {}


def _joinable(kinds: tuple[str, ...], regex: re.Pattern[str]) -> bool:
    hit = _JOINABLE.get(kinds)
    if hit is None:
        hit = never_reads(regex.pattern, "\x00", _FLAGS)
        if len(_JOINABLE) >= _REGEX_CACHE_MAX:
            _JOINABLE.clear()
        _JOINABLE[kinds] = hit
    return hit


def _group_actions() -> dict[str, tuple[str, str | None]]:
    """Group that ends a rule's alternative -> (its marker, its kept part's group)."""
    actions: dict[str, tuple[str, str | None]] = {}
    for group, rule in _GROUP_RULE.items():
        keep = f"{group}_p" if rule in _PREFIXED else None
        actions[group] = (REDACTED_TEMPLATE.format(_RULE_KIND[rule]), keep)
    return actions


_GROUP_ACTIONS: Final = _group_actions()


def _extra_actions(labels: Mapping[str, str]) -> dict[str, tuple[str, str | None]]:
    return {group: (REDACTED_TEMPLATE.format(kind), None) for group, kind in labels.items()}


_STABLE_PASSES: Final = 4


def scrub_stable(scrub: Callable[[_V], tuple[_V, int]], value: _V) -> tuple[_V, int]:
    """``scrub(value)`` (a Redactor's ``scrub_text``, ``scrub_obj`` or ``scrub_json``) run
    again until a pass removes nothing; the count is the first pass's (what was removed).

    One pass can leave text a second pass changes (``Authorization: Basic <token>`` keeps
    ``Basic``, which the key rule then takes). Scrubbed to the end, a value is a fixed
    point: a later scrub (the exporter's, the control store's) neither changes nor counts
    it again, and a key scrubbed once or twice is the same key."""
    value, count = scrub(value)
    if count:
        for _ in range(_STABLE_PASSES):
            value, again = scrub(value)
            if not again:
                break
    return value, count


__all__ = [
    "AWS_SECRET_KIND",
    "BASE64_KIND",
    "KEY_KIND",
    "REDACTED_TEMPLATE",
    "RULES",
    "SENSITIVE_KEY_SUFFIXES",
    "SENSITIVE_KEY_WORDS",
    "Redactor",
    "Rule",
    "scrub_stable",
]
