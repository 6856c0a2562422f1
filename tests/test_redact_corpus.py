"""Property tests over a corpus of secret shapes: every secret, wherever it is embedded
(free text, JSON values, list elements, dict keys, JSON text), is removed and counted once,
and text or values holding no secret come back unchanged.

The corpus is every rule's sample from tooltrail/secret_rules.toml plus the shapes that
need no marker (bare AWS secrets, base64-encoded secrets) and the list forms. Secret-shaped
values are assembled at run time, so this file holds no string a secret scanner would flag.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail.redact import RULES, Redactor

GITHUB = next(r.sample for r in RULES if r.id == "github_token")
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"

# (text holding the secret, the secret part) for free text: every rule's sample.
TEXT_CORPUS = [(r.sample, r.secret) for r in RULES]
# Whole string values: the rules' samples and the shapes recognised only as a whole value.
VALUE_CORPUS = [
    *TEXT_CORPUS,
    (AWS_SECRET, AWS_SECRET),
    (base64.b64encode(GITHUB.encode()).decode(), base64.b64encode(GITHUB.encode()).decode()),
    (
        base64.b64encode(json.dumps({"api_key": "k-1"}).encode()).decode(),
        base64.b64encode(json.dumps({"api_key": "k-1"}).encode()).decode(),
    ),
]

# Words that look close to secrets but are not: what ordinary tool calls hold.
SAFE_WORDS = [
    "the",
    "fix:",
    "retry",
    "payments",
    "README.md",
    "/srv/repos/payments",
    "9fceb02d0ae598e95dc970b74767f19372d61af8",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "feature/token-refresh",
    "max_tokens=512",
    "https://github.com/org/repo.git",
    "ASIAN",
    "high",
    "eyes",
    "bypass",
    "design",
    "keyboard",
    "Authorization required",
    "tokenizer=fast",
    "sk-learn-compat",
    "42",
    "-v",
    "{",
    "]",
    ",",
]
SAFE_KEYS = ["path", "message", "branch", "count", "env", "args", "headers", "input_tokens"]

safe_text = st.lists(st.sampled_from(SAFE_WORDS), max_size=6).map(" ".join)
safe_leaf = st.one_of(
    safe_text,
    st.integers(-1000, 1000),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
safe_value = st.recursive(
    safe_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(SAFE_KEYS), children, max_size=4),
    ),
    max_leaves=12,
)
_SEPARATORS = st.sampled_from([" ", "\n", "\t", " | ", "; "])


def _expected(sample: str) -> str:
    return Redactor().scrub_text(sample)[0]


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(safe_text, _SEPARATORS, st.sampled_from(TEXT_CORPUS), _SEPARATORS),
        max_size=4,
    ),
    tail=safe_text,
)
def test_secrets_in_text_are_removed_and_counted(
    parts: list[tuple[str, str, tuple[str, str], str]], tail: str
) -> None:
    text = "".join(f"{a}{s1}{sample}{s2}" for a, s1, (sample, _), s2 in parts) + tail
    expected = "".join(f"{a}{s1}{_expected(sample)}{s2}" for a, s1, (sample, _), s2 in parts)
    out, count = Redactor().scrub_text(text)
    assert (out, count) == (expected + tail, len(parts))
    for _, _, (_, secret), _ in parts:
        assert secret not in out


def _embed(value: Any, secrets: list[tuple[str, str]], data: st.DataObject) -> Any:
    """``value`` with each secret put somewhere: a list element, a dict value or key."""
    for sample, _ in secrets:
        where = data.draw(st.sampled_from(["list", "value", "key"]))
        if where == "list":
            value = [data.draw(safe_leaf), sample, value]
        elif where == "value":
            value = {"path": value, "message": sample}
        else:
            value = {sample: value, "count": 1}
    return value


@settings(max_examples=200, deadline=None)
@given(
    base=safe_value,
    secrets=st.lists(st.sampled_from(VALUE_CORPUS), min_size=1, max_size=4),
    data=st.data(),
)
def test_secrets_in_structures_are_removed_and_counted(
    base: Any, secrets: list[tuple[str, str]], data: st.DataObject
) -> None:
    value = _embed(base, secrets, data)
    r = Redactor()
    out, count = r.scrub_obj(value)
    assert count == len(secrets)
    dumped = json.dumps(out)
    for _, secret in secrets:
        assert secret not in dumped
    # The same value as JSON text: the same count, still JSON, nothing left.
    text = json.dumps(value)
    assert r.maybe_sensitive(text)
    out_text, text_count = r.scrub_json(text)
    assert text_count == len(secrets)
    for _, secret in secrets:
        assert secret not in out_text
    json.loads(out_text)


@settings(max_examples=300, deadline=None)
@given(value=safe_value)
def test_clean_values_are_unchanged(value: Any) -> None:
    r = Redactor()
    assert r.scrub_obj(value) == (json.loads(json.dumps(value)), 0)
    text = json.dumps(value)
    assert r.scrub_json(text) == (text, 0)
    assert r.scrub_text(text) == (text, 0)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.tuples(safe_text, _SEPARATORS), max_size=8))
def test_clean_text_is_unchanged(text: list[tuple[str, str]]) -> None:
    joined = "".join(a + b for a, b in text)
    assert Redactor().scrub_text(joined) == (joined, 0)
