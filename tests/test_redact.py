"""Credential scrubbing: every kind is removed and counted, JSON stays JSON, and ordinary
text (git SHAs, UUIDs, branch names, token counts) is left alone.

Secret-shaped test values are assembled at run time, so this file itself holds no string
that a secret scanner would flag.
"""

from __future__ import annotations

import json
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooltrail import redact
from tooltrail.redact import SENSITIVE_KEY_SUFFIXES, Redactor

ALNUM = string.ascii_letters + string.digits


def _body(n: int, seed: int = 7) -> str:
    """A deterministic alphanumeric string of length n with letters and digits mixed."""
    return "".join(ALNUM[(i * 17 + seed * 5) % len(ALNUM)] for i in range(n))


GITHUB_CLASSIC = "gh" + "p_" + _body(36)
GITHUB_OAUTH = "gh" + "o_" + _body(36, 3)
GITHUB_FINE = "github" + "_pat_" + _body(22) + "_" + _body(59, 5)
OPENAI_PROJECT = "sk" + "-proj-" + _body(48) + "-" + _body(20, 9)
OPENAI_LEGACY = "sk" + "-" + _body(48, 11)
ANTHROPIC = "sk" + "-ant-api03-" + _body(40) + "-" + _body(20, 2) + "AA"
AWS_ACCESS_ID = "AK" + "IA" + "IOSFODNN7" + "EXAMPL3"
AWS_SESSION_ID = "AS" + "IA" + "Y34FZKBOKMUTVV7A"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY"
SLACK_TOKEN = "xo" + "xb-" + "2400000000-" + "1100000000000-" + _body(24)
SLACK_WEBHOOK = "https://hooks" + ".slack.com/services/T000/B000/" + _body(24)
BEARER = "ya29." + _body(40) + "-" + _body(12, 4)
BASIC = "dXNlcjpodW50ZXIy"
JWT = "ey" + "JhbGciOiJIUzI1NiJ9" + ".ey" + "JzdWIiOiIxMjM0NTY3ODkwIn0" + "." + _body(43)
PEM_BODY = "MIIEowIBAAKCAQEA" + _body(64) + "\n" + _body(64, 3)
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + PEM_BODY + "\n-----END RSA " + "PRIVATE KEY-----"
URL_PASSWORD = "s3cr3t-" + _body(10)

# (kind, text holding the secret, the secret itself)
CASES = [
    ("github_token", f"push with {GITHUB_CLASSIC} now", GITHUB_CLASSIC),
    ("github_token", f"fetched {GITHUB_OAUTH}", GITHUB_OAUTH),
    ("github_token", f"using {GITHUB_FINE}.", GITHUB_FINE),
    ("openai_key", f"OPENAI={OPENAI_PROJECT}", OPENAI_PROJECT),
    ("openai_key", f"key is {OPENAI_LEGACY}", OPENAI_LEGACY),
    ("anthropic_key", f"client({ANTHROPIC})", ANTHROPIC),
    ("aws_access_key", f"id {AWS_ACCESS_ID} ok", AWS_ACCESS_ID),
    ("aws_access_key", f"[{AWS_SESSION_ID}]", AWS_SESSION_ID),
    ("aws_secret_key", f"aws_secret_access_key = {AWS_SECRET}\n", AWS_SECRET),
    ("slack_token", f"slack {SLACK_TOKEN} end", SLACK_TOKEN),
    ("slack_webhook", f"post to {SLACK_WEBHOOK} please", SLACK_WEBHOOK),
    ("bearer_token", f"curl -H 'X-Auth: Bearer {BEARER}' https://x", BEARER),
    ("basic_auth", f"Authorization: Basic {BASIC}", BASIC),
    ("private_key", f"key:\n{PEM}\ndone", PEM_BODY),
    ("jwt", f"session {JWT} set", JWT),
    ("url_password", f"git clone https://bob:{URL_PASSWORD}@github.com/o/r.git", URL_PASSWORD),
    ("key", "mysql --user=bob password=hunter2-horse", "hunter2-horse"),
    ("key", "export GITHUB_TOKEN=abc123def456", "abc123def456"),
    ("key", "X-Api-Key: 9f8e7d6c5b4a", "9f8e7d6c5b4a"),
]


@pytest.mark.parametrize(("kind", "text", "secret"), CASES, ids=[c[0] for c in CASES])
def test_each_kind_is_redacted_and_counted(kind: str, text: str, secret: str) -> None:
    out, count = Redactor().scrub_text(text)
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert count == 1


def test_context_is_kept_around_the_secret() -> None:
    out, _ = Redactor().scrub_text(f"Authorization: Basic {BASIC}")
    assert out == "Authorization: Basic [REDACTED:basic_auth]"
    out, _ = Redactor().scrub_text(f"https://bob:{URL_PASSWORD}@github.com/o/r.git")
    assert out == "https://bob:[REDACTED:url_password]@github.com/o/r.git"


def test_counts_every_secret_in_one_text() -> None:
    text = f"a={GITHUB_CLASSIC} b={AWS_ACCESS_ID} c={JWT} d={SLACK_TOKEN}"
    out, count = Redactor().scrub_text(text)
    assert count == 4
    for secret in (GITHUB_CLASSIC, AWS_ACCESS_ID, JWT, SLACK_TOKEN):
        assert secret not in out


def test_bearer_header_value_is_redacted_whole() -> None:
    # The header name is a credential key: scheme and token go, in one redaction.
    assert Redactor().scrub_text(f"Authorization: Bearer {JWT}") == (
        "Authorization: [REDACTED:key]",
        1,
    )
    assert Redactor().scrub_text(f"Bearer {JWT}") == ("Bearer [REDACTED:bearer_token]", 1)


def test_truncated_private_key_is_redacted_to_the_end() -> None:
    cut = PEM[: len(PEM) // 2]
    out, count = Redactor().scrub_text("result: " + cut)
    assert out == "result: [REDACTED:private_key]"
    assert count == 1


def test_scrub_json_keeps_valid_json_and_walks_key_names() -> None:
    doc = {
        "repo_path": "/srv/repo",
        "password": "correct horse battery staple",
        "headers": {"Authorization": "token abc", "Accept": "application/json"},
        "env": ["HOME=/root", f"GH={GITHUB_CLASSIC}"],
        "credentials": {"user": "bob", "pin": 1234},
        "max_tokens": 512,
        "notes": json.dumps({"api_key": "inner-secret-value"}),
    }
    out, count = Redactor().scrub_json(json.dumps(doc))
    parsed = json.loads(out)
    assert parsed["password"] == "[REDACTED:key]"
    assert parsed["headers"] == {"Authorization": "[REDACTED:key]", "Accept": "application/json"}
    assert parsed["env"] == ["HOME=/root", "GH=[REDACTED:github_token]"]
    assert parsed["credentials"] == "[REDACTED:key]"
    assert parsed["max_tokens"] == 512
    # A JSON document inside a string is scrubbed as JSON and stays parseable.
    assert json.loads(parsed["notes"]) == {"api_key": "[REDACTED:key]"}
    assert count == 5
    for secret in ("correct horse", "token abc", GITHUB_CLASSIC, "1234", "inner-secret"):
        assert secret not in out


def test_scrub_text_on_json_text_keeps_it_valid() -> None:
    text = json.dumps(
        {"password": 'with "quotes" and spaces', "token": "t0k3n-value", "tag": GITHUB_CLASSIC}
    )
    out, count = Redactor().scrub_text(text)
    assert json.loads(out) == {
        "password": "[REDACTED:key]",
        "token": "[REDACTED:key]",
        "tag": "[REDACTED:github_token]",
    }
    assert count == 3


def test_scrub_obj_key_rule() -> None:
    obj = {
        "db_password": "p",
        "client-secret": "s",
        "x.api.key": "k",
        "Cookie": "id=1",
        "GITHUB_TOKEN": 42,
        "token": "",
        "use_token": True,
        "refresh_token": None,
        "input_tokens": 10,
        "token_count": 3,
        "nested": [{"private_key": "pk"}, ("tuple", "values")],
    }
    out, count = Redactor().scrub_obj(obj)
    assert out == {
        "db_password": "[REDACTED:key]",
        "client-secret": "[REDACTED:key]",
        "x.api.key": "[REDACTED:key]",
        "Cookie": "[REDACTED:key]",
        "GITHUB_TOKEN": "[REDACTED:key]",
        "token": "",  # empty, boolean and null values reveal nothing: left, not counted
        "use_token": True,
        "refresh_token": None,
        "input_tokens": 10,
        "token_count": 3,
        "nested": [{"private_key": "[REDACTED:key]"}, ["tuple", "values"]],
    }
    assert count == 6


NOT_SECRETS = [
    "9fceb02d0ae598e95dc970b74767f19372d61af8",  # git SHA
    "commit 9fceb02 on feature/token-refresh",
    "f47ac10b-58cc-4372-a567-0e02b2c3d479",  # UUID
    "feature/token-refresh",
    "fix/password-reset-flow",
    "refs/heads/secret-santa",
    '{"branch_name": "feature/token-refresh", "repo_path": "/srv/repos/payments"}',
    '{"input_tokens": 15, "output_tokens": 20, "max_tokens": 512}',
    "the bearer of good news",
    "upgrade sk-learn-compat-branch",
    "ASIAN MARKETS REPORT",
    "high throughput; eyes on the keyboard",
    "https://github.com/org/repo.git",
    "ssh://git@github.com:22/org/repo.git",
    "https://host:8443/path?q=a@b",
    "Authorization required",
    "tokenizer=fast passed=true",
    "",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert Redactor().scrub_text(text) == (text, 0)


def test_disabled_redactor_changes_nothing() -> None:
    r = Redactor(enabled=False)
    text = f"password=x {GITHUB_CLASSIC}"
    assert r.scrub_text(text) == (text, 0)
    assert r.scrub_obj({"password": "x"}) == ({"password": "x"}, 0)
    assert r.scrub_json('{"password": "x"}') == ('{"password": "x"}', 0)
    assert not r.maybe_sensitive(text)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLTRAIL_REDACT", raising=False)
    assert Redactor.from_env().enabled
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("TOOLTRAIL_REDACT", off)
        assert not Redactor.from_env().enabled
    monkeypatch.setenv("TOOLTRAIL_REDACT", "1")
    assert Redactor.from_env().enabled


def test_extra_patterns_and_keys() -> None:
    r = Redactor(extra_patterns={"employee_id": r"\bEMP-\d{6}\b"}, extra_keys=["card-pin"])
    out, count = r.scrub_text("ticket for EMP-123456 and EMP-654321")
    assert out == "ticket for [REDACTED:employee_id] and [REDACTED:employee_id]"
    assert count == 2
    doc = json.dumps({"card_pin": "0000", "name": "x"})
    assert r.maybe_sensitive(doc)
    out, count = r.scrub_json(doc)
    assert json.loads(out) == {"card_pin": "[REDACTED:key]", "name": "x"}
    assert count == 1


def test_bad_extra_pattern_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'broken'"):
        Redactor(extra_patterns={"broken": "(unclosed"})


def test_precheck_never_misses_a_secret_or_key_name() -> None:
    # The exporter skips redaction when maybe_sensitive() is False; that must be sound.
    r = Redactor()
    for _, text, _ in CASES:
        assert r.maybe_sensitive(text)
    for key in SENSITIVE_KEY_SUFFIXES:
        assert r.maybe_sensitive(json.dumps({key.upper(): 1}))


def _full_regex() -> re.Pattern[str]:
    # Every kind at once, no pre-check: what the gated scrubber must agree with.
    return re.compile("|".join(f"(?P<{k}>{p})" for k, (p, _) in redact._KINDS.items()), re.ASCII)


_FILLER = st.text(alphabet=string.printable, max_size=40)
_SECRETS = st.sampled_from([text for _, text, _ in CASES] + NOT_SECRETS)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(_FILLER, _SECRETS), max_size=4), tail=_FILLER)
def test_gated_scrub_equals_ungated_regex(parts: list[tuple[str, str]], tail: str) -> None:
    text = "".join(a + b for a, b in parts) + tail
    assert Redactor().scrub_text(text) == redact._substitute(_full_regex(), text)


def test_every_kind_marker_passes_the_first_tier() -> None:
    # Text holding any kind's marker must get past the cheap first check.
    for kind, (_, markers) in redact._KINDS.items():
        for marker in markers:
            assert redact._may_hold_secret(marker), (kind, marker)


def test_a_value_a_policy_already_redacted_is_not_scrubbed_or_counted_again() -> None:
    # Enforcing, the policy redacts `token` before the span is made; the exporter's scrub
    # must leave its marker alone, so enforced and after-the-fact rows count the same.
    r = Redactor()
    for marker in ("[REDACTED]", "[REDACTED:github_token]"):
        obj = {"token": marker, "api_key": "sk-live-not-yet-redacted-value"}
        scrubbed, count = r.scrub_obj(obj)
        assert scrubbed["token"] == marker and count == 1
        assert r.secret_values(obj) == ["sk-live-not-yet-redacted-value"]
