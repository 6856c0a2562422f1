"""The secret families are data (tooltrail/secret_rules.toml): every rule's sample passes
the fast pre-check AND is removed by the full scrubber, and the file installs with the
package.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from tooltrail import redact
from tooltrail.redact import FIRST_TIER, RULES, RULES_FILE, Redactor, Rule

ROOT = Path(__file__).resolve().parents[1]

# Families issue 14 names (from gitleaks' and detect-secrets' rule sets).
REQUIRED = {
    "github_token",
    "gitlab_token",
    "openai_key",
    "anthropic_key",
    "stripe_key",
    "aws_access_key",
    "aws_secret_key",
    "google_api_key",
    "huggingface_token",
    "npm_token",
    "pypi_token",
    "azure_storage_key",
    "sendgrid_key",
    "slack_token",
    "slack_webhook",
    "jwt",
    "private_key",
    "url_password",
    "signed_url",
}


def test_the_required_families_are_present() -> None:
    assert {r.id for r in RULES} >= REQUIRED


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_each_rule_sample_passes_the_precheck_and_is_scrubbed(rule: Rule) -> None:
    r = Redactor()
    assert rule.secret and rule.secret in rule.sample
    assert redact._may_hold_secret(rule.sample.lower())
    for text in (rule.sample, f"see: {rule.sample}\nnext line"):
        assert r.maybe_sensitive(text)
        out, count = r.scrub_text(text)
        assert rule.secret not in out, out
        assert f"[REDACTED:{rule.kind}]" in out
        assert count == 1
    # ... and inside a JSON document, as a value (JSON stays JSON)
    doc = json.dumps({"note": f"see: {rule.sample}"})
    out, count = r.scrub_json(doc)
    assert rule.secret not in json.loads(out)["note"] and count == 1


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_each_marker_passes_the_first_tier(rule: Rule) -> None:
    for marker in rule.markers:
        assert marker == marker.lower()
        assert redact._may_hold_secret(marker), marker
        assert any(entry in marker for entry in FIRST_TIER)


def test_every_credential_key_name_passes_the_precheck() -> None:
    r = Redactor()
    for key in (*redact.SENSITIVE_KEY_SUFFIXES, *redact.SENSITIVE_KEY_WORDS):
        assert r.maybe_sensitive(json.dumps({key.upper(): 1})), key


def test_rule_regexes_compile_and_keep_groups_are_named_per_rule() -> None:
    for rule in RULES:
        compiled = re.compile(rule.pattern, re.ASCII)
        assert set(compiled.groupindex) <= {f"{rule.id}_p"}


def test_rules_file_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = pyproject["tool"]["setuptools"]["package-data"]["tooltrail"]
    assert RULES_FILE.name in data
    assert RULES_FILE.parent == ROOT / "tooltrail"


def test_a_broken_rule_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(
        'first_tier = ["x"]\n[[rule]]\nid = "broken"\nregex = "(unclosed"\n'
        'markers = ["x"]\nsample = ["x"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"rules\.toml: rule 'broken': invalid regex"):
        redact._load_rules(bad)
