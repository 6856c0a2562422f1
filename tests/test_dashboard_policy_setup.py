"""Dashboard started without a policy: the Policy page says how to give it one (the
command for this data directory, the environment variable) and can open a policy file
from the viewer's machine to show its rules with hit counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_support import POLICY_YAML, Seeded, app_test, goto, seed, table_with, texts

from tooltrail.demo import demo_policy_path


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("dash-policy") / "data")


def test_without_a_policy_the_page_says_how_to_set_one(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, None, monkeypatch), "policy")
    assert not at.exception
    hint = next(m for m in texts(at.markdown) if "--policy" in m)
    assert f"tooltrail dashboard --data {seeded.root} --policy" in hint
    assert "TOOLTRAIL_POLICY=" in hint
    assert str(demo_policy_path()) in hint
    assert at.get("file_uploader")[0].label == "Open a policy file"


def test_an_opened_policy_file_shows_its_rules_with_hit_counts(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, None, monkeypatch), "policy")
    opener = next(u for u in at.get("file_uploader") if u.label == "Open a policy file")
    opener.upload("policy.yaml", POLICY_YAML.encode(), "application/yaml").run()
    assert not at.exception
    rules = table_with(at, "rule", "matched", "decided").set_index("rule")
    assert rules.loc["release-repos-need-approval", "decided"] == 2
    assert any("never fired" in w for w in texts(at.warning))

    opener = next(u for u in at.get("file_uploader") if u.label == "Open a policy file")
    opener.upload("broken.yaml", b"version: 1\nrules: [{id: x, decision: MAYBE}]\n", "text/yaml")
    at.run()
    assert any("broken.yaml" in e and "not a valid policy" in e for e in texts(at.error))


def test_the_server_policy_needs_no_file_picker(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "policy")
    labels = [u.label for u in at.get("file_uploader")]
    assert "Open a policy file" not in labels
    assert Path(seeded.policy_path).name in " ".join(texts(at.markdown))
