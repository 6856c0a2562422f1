"""The RE2 pre-pass (tooltrail/redact_prefilter.py) never hides a match from the scrubber.

Each rule runs only on text where its RE2 translation matches, so the translation must
match wherever the rule does: checked on every sample and, property-tested, on text built
from the rules' own pieces (quotes, separators, brackets, white space, markers). The
speed-ups that rewrote a pattern (quoted values read as class runs, the quoted-name
rule's candidate filter, url_password's run) are checked against the patterns they
replaced: the same matches, the same secrets removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail import redact
from tooltrail.redact import RULES, Redactor, Rule
from tooltrail.redact_prefilter import RuleSet, superset

PREFILTER = redact._PREFILTER
KEY = "[REDACTED:key]"


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_every_rule_is_found_by_its_translation(rule: Rule) -> None:
    index = [r.id for r in RULES].index(rule.id)
    for text in (rule.sample, f"see: {rule.sample}\n", "x" * 5000 + rule.sample):
        found = PREFILTER.matching(text)
        assert found is not None and index in found, (rule.id, superset(rule.pattern))


# Pieces the rules are made of: text built from them meets the rules' edges (a marker and
# no value, a quote never closed, a value after white space, escapes, a list closing).
FRAGMENTS = sorted(
    {m for r in RULES for m in r.markers}
    | {r.sample[: len(r.sample) // 2] for r in RULES}
    | {r.sample[len(r.sample) // 2 :] for r in RULES}
    | {'"', "'", "\\", '\\"', ":", "=", ",", "[", "]", "{", "}", "@", "/", "-", "--", "_"}
    | {
        " ",
        "\n",
        "\t",
        "\x0b",
        "\x00",
        "é",
        "K",
        "\u212a",
        "İ",
        "ſ",
        "Bearer ",
        "Basic ",
        "://u:p@h",
    }
    | {"token", "Password", "X-Api-Key", "pwd", "sig", "AccessKey", "aws_secret_access_key"}
    | {"ABCDEFGHabcdefgh0123456789+/", "dXNlcjpodW50ZXIy", "eyJ", "AKIA", "ghp_"}
)
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
# (name, how the scrubber looks for it, its index in the RE2 set): the first bare-token
# gate is used with .match (at the start), the rest with .search.
PATTERNS = (
    [(r.id, re.compile(r.pattern, redact._FLAGS).search, i) for i, r in enumerate(RULES)]
    + [("gate at start", redact._B64_GATE_START.match, redact._NAMES_AT + 1)]
    + [(f"gate {i}", g.search, redact._NAMES_AT + 1 + i) for i, g in enumerate(redact._GATES)][1:]
)


@settings(max_examples=1500, deadline=None)
@given(text=texts)
def test_a_rule_that_matches_is_always_found(text: str) -> None:
    found = PREFILTER.matching(text)
    assert found is not None
    for name, find, index in PATTERNS:
        if find(text) is not None:
            assert index in found, (name, text)
    if Redactor()._scrub_quoted_names(text)[0] != text:  # a quoted name that names a secret
        assert redact._NAMES_AT in found, text


def _old_maybe_sensitive(s: str) -> bool:
    low = s.lower()
    return redact._may_hold_secret(low) or (low != s and redact._may_hold_bare_token(s))


@settings(max_examples=800, deadline=None)
@given(text=texts, case=st.sampled_from([str, str.upper, str.title]))
def test_the_long_text_precheck_says_yes_wherever_the_scans_do(
    text: str, case: Callable[[str], str]
) -> None:
    """maybe_sensitive on long text asks RE2 for the first-tier entries in any case (and
    the gates): wherever a scan of the lower-cased text finds an entry, so does it."""
    long = "." * redact._NARROW_MAX + case(text)
    if _old_maybe_sensitive(long):
        assert Redactor().maybe_sensitive(long), long[redact._NARROW_MAX :]


def test_what_re2_cannot_read_falls_back_to_every_rule() -> None:
    # A lone surrogate (JSON can carry one) is not UTF-8: RE2 cannot take the text, the
    # pass says so (None) and the substring pre-check picks the rules, as before.
    token = "ghp_p2GbDqvIjUmMxaS6iWIn610aC4KIFhOg21v1"
    for text in (f"\ud800 {token}", "x" * 5000 + f"\ud800 {token}"):
        assert PREFILTER.matching(text) is None
        out, count = Redactor().scrub_text(text)
        assert token not in out and count == 1


def test_the_sentinel_is_what_says_the_pass_ran() -> None:
    rules = RuleSet(["ab", "cd"])
    assert rules.matching("xxab") == frozenset({0, 2})  # 2: the always-matching sentinel
    assert rules.matching("none") == frozenset({2})


@pytest.mark.parametrize(
    ("pattern", "matches"),
    [
        (r"a\sb", ["a\x0bb", "a\tb"]),  # Python's ASCII \s holds \v; RE2's lacks it
        (r"[^\s]x", ["yx", "éx"]),
        (r"(?P<q>[\"'])v(?P=q)", ['"v"', "'v'", "\"v'"]),  # a backreference: its group
        (r"a(?<!b)c++(?=d)", ["acc", "ac"]),  # assertions dropped, possessive plain
        (r"x\Zy|(?i:key)", ["KEY", "\u212aey"]),  # RE2 folds case at least as wide
    ],
)
def test_translations_match_at_least_what_the_pattern_does(
    pattern: str, matches: list[str]
) -> None:
    rules = RuleSet([superset(pattern)])
    for text in matches:
        assert rules.matching(text) == frozenset({0, 1}), (pattern, text)


@pytest.mark.parametrize("pattern", [r"(a)?(?(1)b|c)", r"[\S\d]"])
def test_a_construct_without_a_translation_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="superset"):
        superset(pattern)


# --- rewritten patterns: the same matches as the ones they replaced ---------------------

_RUN_DQ = '"[^"\\\\\\n]*+(?:\\\\.[^"\\\\\\n]*+)*+'
_RUN_SQ = "'[^'\\\\\\n]*+(?:\\\\.[^'\\\\\\n]*+)*+"
_OLD_DQ = '"(?:[^"\\\\\\n]|\\\\.)*+'
_OLD_SQ = "'(?:[^'\\\\\\n]|\\\\.)*+"


def _before(pattern: str) -> str:
    """The pattern as it was before its quoted values were read as class runs, and
    url_password's run was one step."""
    old = pattern.replace(_RUN_DQ, _OLD_DQ).replace(_RUN_SQ, _OLD_SQ)
    return old.replace("""(?:[^\\s@"'?#:]++|:(?!//))++""", """(?:[^\\s@"'?#:]|:(?!//))++""")


REWRITTEN = [r for r in RULES if _before(r.pattern) != r.pattern]


def test_the_rewritten_rules_are_the_expected_ones() -> None:
    assert {r.id for r in REWRITTEN} == {"key", "key_flag", "url_password"}


@settings(max_examples=800, deadline=None)
@given(text=texts)
def test_rewritten_rules_match_as_before(text: str) -> None:
    for rule in REWRITTEN:
        new = re.compile(rule.pattern, redact._FLAGS)
        old = re.compile(_before(rule.pattern), redact._FLAGS)
        assert [m.span() for m in new.finditer(text)] == [m.span() for m in old.finditer(text)], (
            rule.id,
            text,
        )


# The quoted-name rule as it was: a match at every quoted name, the list test reading back
# from the quote, and the decision in Python.
_OLD_BODY = (
    r"""(?P<q>["'])(?P<name>[A-Za-z0-9_.\- ]{1,64}+){ending}(?P=q)\s*+(?P<sep>[,:=])\s*+"""
    r"""(?=(?P<v>"(?:[^"\\\n]|\\.)*+"|'(?:[^'\\\n]|\\.)*+')(?P<close>\s*+\])?)"""
)
_OLD_QUOTED_NAME = re.compile(
    _OLD_BODY.replace("{ending}", "(?i:" + "|".join(f"(?<={t})" for t in redact._NAME_TAILS) + ")"),
    redact._FLAGS,
)


def _old_scrub_quoted_names(r: Redactor, s: str) -> tuple[str, int]:
    pieces: list[str] = []
    done = 0
    for m in _OLD_QUOTED_NAME.finditer(s):
        name, sep, close = m.group("name", "sep", "close")
        if sep != ",":
            hit = r.is_sensitive_key(name)
        elif name[0] == "-":
            hit = r._names_secret(name, False)
        else:
            i = m.start() - 1
            while i >= 0 and s[i] in " \t\r\n":
                i -= 1
            hit = close is not None and r.is_sensitive_key(name) and i >= 0 and s[i] == "["
        if not hit:
            continue
        start, end = m.span("v")
        start, end = start + 1, end - 1
        if start < done or start == end:
            continue
        if redact.is_redaction_marker(s[start:end]):
            continue
        pieces += [s[done:start], KEY]
        done = end
    if not pieces:
        return s, 0
    return "".join([*pieces, s[done:]]), len(pieces) // 2


NAME_FRAGMENTS = [
    '"', "'", '"', "'", ", ", ": ", "=", "[", "]", " ", "\n", "\\", '\\"', "--password",
    "-", "token", "X-Api-Key", "pwd", "decision", "v4lue", "Cookie", "a", "[REDACTED:key]",
    "option", "Authorization", "x-amz-signature", "db.PASS", "apiKey", "Pass_Code",
]  # fmt: skip
name_texts = st.lists(st.sampled_from(NAME_FRAGMENTS), max_size=25).map("".join)


@settings(max_examples=1500, deadline=None)
@given(text=name_texts)
def test_the_quoted_name_rule_removes_what_it_removed_before(text: str) -> None:
    r = Redactor()
    scrubbed = _old_scrub_quoted_names(r, text)
    assert r._scrub_quoted_names(text) == scrubbed, text
    if scrubbed[0] != text:  # the RE2 pass must not skip a text the rule changes
        found = PREFILTER.matching(text)
        assert found is not None and redact._NAMES_AT in found, text


@pytest.mark.parametrize(
    "text",
    [
        'saw ["--password", "--token", "x"]',
        "saw [ \n 'X-Api-Key' ,\t'v' ]",
        'saw {"db_pwd": "a\\"b", "pass": "c"}',
        "saw ['secretAccessKey', 'v']",
    ],
)
def test_quoted_names_dense_text_is_scrubbed_like_before(text: str) -> None:
    r = Redactor()
    assert r._scrub_quoted_names(text) == _old_scrub_quoted_names(r, text)
    assert r._scrub_quoted_names(text)[1] >= 1
    found = PREFILTER.matching(text)
    assert found is not None and redact._NAMES_AT in found


@pytest.mark.parametrize("name", redact.SENSITIVE_KEY_SUFFIXES + redact.SENSITIVE_KEY_WORDS)
def test_every_credential_name_is_found_by_the_re2_pass(name: str) -> None:
    """The RE2 pass looks for a credential name's last word: every spelling of every name,
    as a key, a flag and the first of a pair, is found, and then scrubbed."""
    words = name.split("_")
    camel = words[0] + "".join(w.capitalize() for w in words[1:])
    for spelling in {name, name.upper(), name.replace("_", "-"), name.replace("_", "."), camel}:
        for text in (
            f'saw {{"{spelling}": "v4lue"}}',
            f"saw ['--{spelling}', 'v4lue']",
            f'saw ["{spelling}", "v4lue"]',
        ):
            found = PREFILTER.matching(text)
            assert found is not None and redact._NAMES_AT in found, text
            assert "v4lue" not in Redactor().scrub_text(text)[0], text


# --- the key-name rule's last-character shortcut ---------------------------------------


def _key_rule(r: Redactor, key: str) -> bool:
    """The key-name rule as written before the shortcut (normalize, then compare)."""
    endings = r._key_endings
    name = redact._normalize_key(key)
    camel = redact._normalize_key(redact._CAMEL.sub("_", key))
    return (
        name.endswith(endings)
        or (not key.islower() and camel.endswith(endings))
        or name in redact.SENSITIVE_KEY_WORDS
    )


_NAME_PIECES = [
    *redact.SENSITIVE_KEY_SUFFIXES,
    *redact.SENSITIVE_KEY_WORDS,
    "Password", "API-KEY", "secretAccessKey", "x.amz.signature", "Pin", "card pin", "x-",
    "_", "-", ".", " ", "a", "Z", "0", "İ", "\u212a", "ſ", "Σ", "",
]  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(key=st.lists(st.sampled_from(_NAME_PIECES), max_size=4).map("".join))
def test_the_key_name_shortcut_decides_as_the_rule(key: str) -> None:
    for r in (Redactor(), Redactor(extra_keys=["pin", "x-"])):
        assert r.is_sensitive_key(key) == _key_rule(r, key), key


# --- a mapping's keys scrubbed together -------------------------------------------------

KEY_FRAGMENTS = [
    "ghp_" + "0" * 36, "ghp_p2GbDqvIjUmMxaS6iWIn610aC4KIFhOg21v1", "AKIAKSWUQLDMHDIB5MAL",
    "sk-proj-UyzCnQXImlROkFEF78KtnaECa33smE5y", "dXNlcjpodW50ZXIy", "Bearer ", "x", "Q",
    "q2MEffRJjgZ4mVVnK2tgKSbF2rIZ1JJe4ysO/Sfz", "password=", "\x00", "'", " ", "-", "é",
]  # fmt: skip
# Without "password=" (the key rule reads past a NUL), a quote or a NUL, the keys are
# scrubbed together whenever a shape can match: the first strategy checks that path.
TOGETHER_FRAGMENTS = [f for f in KEY_FRAGMENTS if f not in ("password=", "\x00", "'")]


def _key_lists(fragments: list[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(
        st.lists(st.sampled_from(fragments), max_size=3).map("".join),
        min_size=redact._KEYS_TOGETHER,
        max_size=40,
        unique=True,
    )


@settings(max_examples=300, deadline=None)
@given(keys=_key_lists(TOGETHER_FRAGMENTS))
def test_keys_scrubbed_together_are_scrubbed_as_alone(keys: list[str]) -> None:
    found, ahead = Redactor()._keys_ahead(keys)
    assert found is not None
    assert set(ahead) == (set(keys) if found[0] else set())
    for key, result in ahead.items():
        assert result == Redactor().scrub_text(key), key


@settings(max_examples=300, deadline=None)
@given(keys=_key_lists(KEY_FRAGMENTS))
def test_keys_that_cannot_be_scrubbed_together_are_scrubbed_alone(keys: list[str]) -> None:
    _, ahead = Redactor()._keys_ahead(keys)
    for key, result in ahead.items():
        assert result == Redactor().scrub_text(key), key
    mapping = {k: 1 for k in keys}
    _, count = Redactor().scrub_obj(mapping)
    assert count == sum(Redactor().scrub_text(k)[1] for k in keys)


def test_a_token_indexed_map_is_scrubbed_together() -> None:
    keys = [f"ghp_{i:036d}" for i in range(100)] + ["ghp_p2GbDqvIjUmMxaS6iWIn610aC4KIFhOg21v1"]
    _, ahead = Redactor()._keys_ahead(keys)
    assert set(ahead) == set(keys)  # the batch ran (the test above is not vacuous)
    out, count = Redactor().scrub_obj({k: i for i, k in enumerate(keys)})
    assert count == len(keys) and not any(k in out for k in keys)
    assert sorted(out.values()) == list(range(len(keys)))  # no value lost to a collision
