"""Issue 14 §3: a secret quoted inside free text is scrubbed as it would be in the value.

Free text reaches disk (a decider's reason, status and error messages, result previews,
logs), and it often quotes a tool call's arguments: as JSON (``saw {"argv": [...]}``) or as
a Python repr (``ran with {'argv': [...]}``). The list, pair and key rules that
``scrub_obj`` applies to a parsed value must hold there too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from secret_shapes import SHAPES, SecretShape

from tooltrail import redact
from tooltrail.redact import (
    FIRST_TIER,
    SENSITIVE_KEY_SUFFIXES,
    SENSITIVE_KEY_WORDS,
    Redactor,
    scrub_stable,
)

R = Redactor()
KEY = "[REDACTED:key]"


def _in_prose(shape: SecretShape) -> dict[str, str]:
    args = shape.arguments
    return {
        "json": f"approved, saw {json.dumps(args)} and let it run",
        "repr": f"ran with {args!r}",
        "json, pretty": f"saw:\n{json.dumps(args, indent=2)}\nend",
    }


@pytest.mark.parametrize("shape", [s.param() for s in SHAPES])
def test_every_shape_quoted_in_prose_is_scrubbed(shape: SecretShape) -> None:
    for how, text in _in_prose(shape).items():
        scrubbed, count = scrub_stable(R.scrub_text, text)
        for needle in shape.needles:
            assert needle not in scrubbed, (how, scrubbed)
        assert count >= 1, (how, scrubbed)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'approved, saw {"argv": ["mysql", "-u", "root", "--password", "Pz4-x"]}',
            'approved, saw {"argv": ["mysql", "-u", "root", "--password", "' + KEY + '"]}',
        ),
        (
            "ran with ['mysql', '--password', 'Pz4-x', '-h', 'db']",
            "ran with ['mysql', '--password', '" + KEY + "', '-h', 'db']",
        ),
        (
            'headers [["X-Api-Key", "pjblrdJYra"], ["Cookie", "session=abc"]] sent',
            f'headers [["X-Api-Key", "{KEY}"], ["Cookie", "{KEY}"]] sent',
        ),
        ("ran with [ 'X-Api-Key' ,  'v1' ]", f"ran with [ 'X-Api-Key' ,  '{KEY}' ]"),
        ("ran with {'host': 'db', 'pwd': 'mK7q'}", f"ran with {{'host': 'db', 'pwd': '{KEY}'}}"),
        (
            'saw {"secretAccessKey": "Lq5W", "passcode": "wZ3n"}',
            f'saw {{"secretAccessKey": "{KEY}", "passcode": "{KEY}"}}',
        ),
        # The value after a flag can itself be a flag name: both go, as in scrub_obj.
        (
            'saw ["x", "--password", "--token", "t0k"]',
            f'saw ["x", "--password", "{KEY}", "{KEY}"]',
        ),
        # A JSON-escaped quote inside the value stays inside it.
        ('saw {"pwd": "a\\"b, c"} ok', f'saw {{"pwd": "{KEY}"}} ok'),
    ],
)
def test_quoted_name_and_value_in_text(text: str, expected: str) -> None:
    scrubbed, count = R.scrub_text(text)
    assert scrubbed == expected
    assert count == expected.count(KEY)
    # Scrubbed once is scrubbed for good: nothing new found, nothing counted twice.
    assert R.scrub_text(scrubbed) == (scrubbed, 0)


@pytest.mark.parametrize(
    "text",
    [
        # Not a pair: the name is one of three elements, or not the first.
        'fields ["password", "username", "email"]',
        'fields ["email", "password"]',
        # Not a credential name (token counts, a word ending in "pass").
        'usage {"max_tokens": "512", "input_tokens": "9", "bypass": "yes"}',
        # Not a flag named like a credential.
        "ran with ['--verbose', 'x', '--token-count', '3']",
        # Empty and already redacted values reveal nothing.
        'saw ["--password", ""] and {"token": "[REDACTED]"}',
        "it's the 'password' field, 'really'",
    ],
)
def test_quoted_names_that_name_no_credential_value_stay(text: str) -> None:
    assert R.scrub_text(text) == (text, 0)


def test_extra_key_names_count_in_text() -> None:
    r = Redactor(extra_keys=["pin"])
    assert r.scrub_text("ran with {'card_pin': '4321'}") == (f"ran with {{'card_pin': '{KEY}'}}", 1)


def _spellings(name: str) -> set[str]:
    words = name.split("_")
    camel = words[0] + "".join(w.capitalize() for w in words[1:])
    return {name, name.upper(), name.replace("_", "-"), name.replace("_", "."), camel}


@pytest.mark.parametrize("name", SENSITIVE_KEY_SUFFIXES + SENSITIVE_KEY_WORDS)
def test_every_credential_name_passes_the_quoted_name_tier(name: str) -> None:
    """The quoted-name rule runs only on text holding an entry of ``_NAME_TIER``: every
    spelling of every credential name, quoted, holds one (and passes the first tier)."""
    assert set(FIRST_TIER) >= redact._NAME_TIER
    for spelling in _spellings(name):
        for quote in "\"'":
            low = f"{quote}{spelling}{quote}".lower()
            assert any(entry in low for entry in redact._NAME_TIER), (spelling, quote)
            assert redact._may_hold_secret(low), (spelling, quote)
            text = f"saw [{quote}{spelling}{quote}, {quote}v4lue{quote}]"
            assert "v4lue" not in R.scrub_text(text)[0], text


@pytest.mark.parametrize("tier", ["[1]", '["x", ""]', '"key"'])
def test_a_first_tier_that_is_not_strings_is_a_clear_error(tmp_path: Path, tier: str) -> None:
    """The first tier is searched for as substrings: only non-empty strings (an empty one
    would admit every text, a number would fail on every call)."""
    bad = tmp_path / "rules.toml"
    bad.write_text(
        f'first_tier = {tier}\n[[rule]]\nid = "ok"\nregex = "x"\nmarkers = ["x"]\nsample = ["x"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"rules\.toml: first_tier must be a list of non-empty"):
        redact._load_rules(bad)


def test_the_first_tier_is_not_generated_code() -> None:
    """The pre-check is code of redact.py itself, not source built from the rules file and
    exec'd (its code would come from "<string>")."""
    code = redact._may_hold_secret.__code__
    assert Path(code.co_filename) == Path(redact.__file__)
    assert redact._may_hold_secret("x-api-key") and not redact._may_hold_secret("hello")
