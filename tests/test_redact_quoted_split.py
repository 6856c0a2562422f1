"""The quoted-name rule in one split (``_QUOTED_HITS``) removes exactly what the loop does.

Text that quotes a credential pair every 20 bytes (``['X-Api-Key', 'v'], ``) cost one
Python step per pair in the loop; the split decides each name in the regex engine
(``_KEY_RULE_AT_END``: the key-name rule as lookbehinds) and is taken only where it is
exact. Checked here: the engine's key-name rule says what ``is_sensitive_key`` says for
every spelling of every credential name and for names that only look like one, and
wherever the split is taken its result (text and count) is the loop's.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail import redact
from tooltrail.redact import SENSITIVE_KEY_SUFFIXES, SENSITIVE_KEY_WORDS, Redactor

# As in the pattern: the name's opening quote before it (a word is a whole name).
_NAME_RULE = re.compile('"' + redact._QUOTED_NAME_CHARS + redact._KEY_RULE_AT_END, redact._FLAGS)


def _engine_says(name: str) -> bool:
    return _NAME_RULE.fullmatch(f'"{name}') is not None


def _spellings(name: str) -> set[str]:
    words = name.split("_")
    camel = words[0] + "".join(w.capitalize() for w in words[1:])
    pascal = "".join(w.capitalize() for w in words)
    return {
        name,
        name.upper(),
        name.replace("_", "-"),
        name.replace("_", "."),
        name.replace("_", " "),
        camel,
        pascal,
        f"db_{name}",
        f"dbX{pascal}",
        f"x{camel}",
        f"my{name}",
        f"--{name}",
        f"{name}s",
        f"{name}_id",
        f"{camel[:1]}{camel[1:].swapcase()}",
    }


@pytest.mark.parametrize("name", SENSITIVE_KEY_SUFFIXES + SENSITIVE_KEY_WORDS)
def test_the_engine_decides_names_as_the_key_name_rule(name: str) -> None:
    r = Redactor()
    for spelling in _spellings(name):
        assert _engine_says(spelling) == r.is_sensitive_key(spelling), spelling


# Names built from the endings' own pieces, in any case, with every separator.
_PIECES = sorted(
    {p for e in SENSITIVE_KEY_SUFFIXES + SENSITIVE_KEY_WORDS for p in e.split("_")}
    | {"x", "amz", "goog", "db", "by", "de", "1", "S", "K", "Ab"}
)
_names = st.lists(
    st.tuples(
        st.sampled_from(_PIECES),
        st.sampled_from(["lower", "upper", "title", "swap", "mixed"]),
        st.sampled_from(["", "", "_", "-", ".", " "]),
    ),
    min_size=1,
    max_size=4,
).map(
    lambda parts: "".join(
        {
            "lower": p.lower(),
            "upper": p.upper(),
            "title": p.title(),
            "swap": p.swapcase(),
            "mixed": "".join(c.upper() if i % 2 else c for i, c in enumerate(p)),
        }[case]
        + sep
        for p, case, sep in parts
    )
)


@settings(max_examples=3000, deadline=None)
@given(name=_names)
def test_the_engine_decides_built_names_as_the_key_name_rule(name: str) -> None:
    if not 1 <= len(name) <= redact._MAX_NAME_LEN:
        return
    assert _engine_says(name) == Redactor().is_sensitive_key(name), name


# Text where names, flags, pairs and values meet: every way the split could differ.
_FRAGMENTS = [
    '"', "'", '"', "'", ", ", ": ", "=", "[", "]", " ", "\n", "\\", '\\"', "--password",
    "-", "token", "X-Api-Key", "pwd", "decision", "v4lue", "Cookie", "a", "[REDACTED:key]",
    "option", "Authorization", "x-amz-signature", "db.PASS", "apiKey", "Pass_Code", "-x",
    "[ ", "aCcessKey", "dbPwd",
]  # fmt: skip
_texts = st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join)


@settings(max_examples=3000, deadline=None)
@given(text=_texts)
def test_the_split_removes_what_the_loop_removes(text: str) -> None:
    r = Redactor()
    fast = redact._scrub_quoted_hits(text)
    if fast is not None:
        assert fast == r._scrub_quoted_names_loop(text), text
    assert r._scrub_quoted_names(text) == r._scrub_quoted_names_loop(text), text


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("['X-Api-Key', 'v'], " * 50, 50),
        ('["--password", "token", ' * 50, 50),
        ('{"db_pwd": "a", "Cookie": "b", "note": "c"}', 2),
        ("saw [ \n 'secretAccessKey' ,\t'v' ]", 1),
    ],
)
def test_dense_quoted_secrets_are_removed_in_one_split(text: str, count: int) -> None:
    fast = redact._scrub_quoted_hits(text)
    assert fast is not None
    assert fast == Redactor()._scrub_quoted_names_loop(text)
    assert fast[1] == count
    assert "'v'" not in fast[0] and '"token"' not in fast[0] and '"a"' not in fast[0]


@pytest.mark.parametrize(
    "text",
    [
        'saw ["--password", "--token", "x"]',  # the value is itself a flag
        'saw ["--password", "pwd": "c"]',  # the value is a key before its own value
        'saw {"db_pwd": "a\\"b", "pass": "c"}',  # an escape inside the value
        "saw {'token': 'it\"s'}",  # the other quote inside the value
        'saw {"token": "a[", "k": "v"}',  # a list could open inside the value
    ],
)
def test_values_that_decide_what_follows_go_to_the_loop(text: str) -> None:
    assert redact._scrub_quoted_hits(text) is None
    r = Redactor()
    assert r._scrub_quoted_names(text) == r._scrub_quoted_names_loop(text)
    assert r._scrub_quoted_names(text)[1] >= 1


# Text dense with one family's secrets: a subn or a split instead of a call per match.
_RULE_FRAGMENTS = sorted(
    {m for r in redact.RULES for m in r.markers}
    | {r.sample for r in redact.RULES}
    | {r.sample[: len(r.sample) // 2] for r in redact.RULES}
    | {" ", "\n", "=", ": ", '"', "'", "[REDACTED:key]", "x", "A1b2"}
)
_rule_texts = st.lists(st.sampled_from(_RULE_FRAGMENTS), max_size=12).map("".join)


@settings(max_examples=1500, deadline=None)
@given(
    text=_rule_texts,
    kinds=st.sampled_from(
        [(r.id,) for r in redact.RULES] + [("key", "github_token"), ("bearer_token", "jwt")]
    ),
)
def test_one_family_substituted_at_once_as_one_match_at_a_time(
    text: str, kinds: tuple[str, ...]
) -> None:
    regex = Redactor()._regex_for(kinds)
    assert redact._substitute_rules(kinds, regex, text) == redact._substitute(regex, text)


def test_key_values_every_few_bytes_are_split_not_called() -> None:
    text = "X-Api-Key: 9f8e7d6c5b password=hunter2 " * 20
    assert redact._split_form("key") is not None
    scrubbed, count = Redactor().scrub_text(text)
    assert count == 40 and "9f8e7d6c5b" not in scrubbed and "hunter2" not in scrubbed
    assert scrubbed.startswith("X-Api-Key: [REDACTED:key] password=[REDACTED:key] ")
