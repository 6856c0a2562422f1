"""Dashboard Policy page, candidate replay (issue 14): the headline counts decision changes
only (a new deciding rule or blast radius under the same decision is shown apart, named as
such), and a YAML alias bomb pasted in the candidate box is refused by the one loader."""

from __future__ import annotations

import time

import pytest
from dashboard_support import POLICY_YAML, Seeded, app_test, goto, seed, texts

from tooltrail.policy import loads_policy
from tooltrail.policy.replay import replay


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("dash") / "data")


RELEASE_RULE = (
    '    when: {tool: [git_commit, git_create_branch, git_checkout], repo: ["/srv/release/*"]}'
)


def _candidate() -> str:
    """Two decisions change (the release-repo commits: REQUIRE_APPROVAL -> DENY); other
    actions only change their deciding rule (cap-log-size renamed) or blast radius
    (git_diff Low -> High) under the same decision."""
    text = (
        POLICY_YAML.replace(
            f"{RELEASE_RULE}\n    decision: REQUIRE_APPROVAL", f"{RELEASE_RULE}\n    decision: DENY"
        )
        .replace("  - id: cap-log-size\n", "  - id: cap-log-size-v2\n")
        .replace(
            "{tools: [git_reset], radius: High}", "{tools: [git_reset, git_diff], radius: High}"
        )
    )
    assert text.count("cap-log-size-v2") == 1 and "git_reset, git_diff]" in text
    return text


def test_headline_is_decision_changes_and_other_changes_are_named(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    candidate = _candidate()
    expected = replay(loads_policy(candidate), seeded.root, since_s=30 * 86_400.0)
    # The case the issue saw ("Would change 91" for 32 decision changes): they differ.
    assert expected.decision_changes == 2
    assert expected.changed > expected.decision_changes
    assert expected.verdict_changes > 0 and expected.blast_radius_changes > 0

    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "policy")
    at.text_area(key="policy_candidate_text").input(candidate)
    at.button(key="policy_replay").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert "Would change" not in metrics
    assert next(iter(metrics)) == "Decisions that would change"  # the headline
    assert metrics["Decisions that would change"] == "2"
    assert metrics["Rule changes (same decision)"] == str(expected.verdict_changes)
    assert metrics["Blast-radius changes"] == str(expected.blast_radius_changes)
    other = expected.changed - expected.decision_changes
    assert any(
        f"Besides the decision changes, {other} actions keep their decision but change "
        "their deciding rule or blast radius" in c
        for c in texts(at.caption)
    )


ALIAS_BOMB = (
    "version: 1\n"
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
)


def test_an_alias_bomb_in_the_candidate_box_is_refused(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "policy")
    at.text_area(key="policy_candidate_text").input(ALIAS_BOMB)
    started = time.monotonic()
    at.button(key="policy_replay").click().run(timeout=30)
    assert time.monotonic() - started < 30
    assert not at.exception
    assert any("not valid" in e for e in texts(at.error))
    problems = at.dataframe[-1].value
    assert list(problems["line"]) == [6]
    assert "alias *d takes the aliases past 10,000 nodes" in problems["problem"][0]
