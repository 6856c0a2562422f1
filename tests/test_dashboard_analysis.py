"""Dashboard: the Blast radius, Policy and SQL pages over data landed through the real
exporter. Expected figures are computed independently from the Parquet files."""

from __future__ import annotations

import io
from typing import Any

import duckdb
import polars as pl
import pytest
from dashboard_support import (
    POLICY_YAML,
    RELEASE,
    Seeded,
    app_test,
    chart_data,
    goto,
    seed,
    table,
    table_with,
    texts,
)

from tooltrail.dashboard.page_sql import to_csv, to_parquet


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seed(tmp_path_factory.mktemp("dash") / "data")


def _landed(seeded: Seeded, sql: str) -> list[tuple[Any, ...]]:
    """Ask the Parquet files directly, without the dashboard or the analytics views."""
    con = duckdb.connect()
    try:
        files = con.read_parquet(
            str(seeded.root / "spans" / "date=*" / "*.parquet"), hive_partitioning=True
        )
        files.filter("span_type = 'tool'").create_view("actions")
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --- blast radius --------------------------------------------------------------------------


def test_blast_radius_totals_groups_and_critical_list(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "blast_radius")
    assert not at.exception
    counts = dict(_landed(shared, "SELECT blast_radius, count(*) FROM actions GROUP BY 1"))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Actions"] == str(sum(counts.values()))
    for radius in ("Low", "Medium", "High", "Critical"):
        assert metrics[radius] == f"{counts.get(radius, 0):,}"

    by_agent = table_with(at, "agent", "critical").set_index("agent")
    expected = _landed(
        shared, "SELECT agent_name, count(*) FROM actions GROUP BY 1 ORDER BY 2 DESC, 1"
    )
    assert list(by_agent["actions"].items()) == expected
    assert by_agent.loc["release-bot", "critical"] == 1
    chart = chart_data(at, 0).groupby("agent")["actions"].sum().to_dict()
    assert chart == dict(expected)

    critical = table(at, "critical_table").value
    assert list(critical["session_id"]) == [RELEASE]
    assert critical["tool_name"].iloc[0] == "git_add"

    at.segmented_control(key="blast_by").set_value("tool").run()
    by_tool = table_with(at, "tool", "critical").set_index("tool")
    assert (
        by_tool.loc["git_status", "actions"]
        == _landed(shared, "SELECT count(*) FROM actions WHERE tool_name = 'git_status'")[0][0]
    )

    at.segmented_control(key="blast_by").set_value("day").run()
    days = table_with(at, "day", "critical")
    assert list(days["day"]) == sorted(days["day"])  # a trend: days in order
    assert days["actions"].sum() == sum(counts.values())


# --- policy --------------------------------------------------------------------------------


def test_policy_rules_with_hit_counts_and_rules_that_never_fired(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "policy")
    assert not at.exception
    rules = table_with(at, "rule", "matched", "decided").set_index("rule")
    landed = dict(
        _landed(
            shared,
            "SELECT r, count(*) FROM (SELECT unnest(policy_matched) AS r FROM actions) GROUP BY r",
        )
    )
    assert landed  # the fixture matched rules
    for rule_id, row in rules.iterrows():
        assert row["matched"] == landed.get(rule_id, 0), rule_id
    assert rules.loc["release-repos-need-approval", "decided"] == 2
    assert list(rules.loc["no-secrets-staged", "decision"]) == ["DENY"]
    never = next(w for w in texts(at.warning) if "never fired" in w)
    for rule_id in (
        "no-reset",
        "no-ci-changes",
        "redact-tokens-in-commit-messages",
        "reads-are-fine",
    ):
        assert f"`{rule_id}`" in never
    assert "`cap-log-size`" not in never


def test_replaying_a_candidate_shows_what_would_change(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "policy")
    assert at.text_area(key="policy_candidate_text").value == POLICY_YAML  # the active file
    release = (
        '    when: {tool: [git_commit, git_create_branch, git_checkout], repo: ["/srv/release/*"]}'
    )
    stricter = POLICY_YAML.replace(
        f"{release}\n    decision: REQUIRE_APPROVAL", f"{release}\n    decision: DENY"
    )
    assert stricter != POLICY_YAML
    at.text_area(key="policy_candidate_text").input(stricter)
    at.button(key="policy_replay").click().run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decisions that would change"] == "2"  # the two release-repo commits
    transitions = table_with(at, "from", "to", "count", exact=True)
    assert [(list(f), list(t), n) for f, t, n in transitions.itertuples(index=False)][:1] == [
        (["REQUIRE_APPROVAL"], ["DENY"], 2)
    ]

    # The same policy replays with no change at all.
    at.text_area(key="policy_candidate_text").input(POLICY_YAML)
    at.button(key="policy_replay").click().run()
    assert {m.label: m.value for m in at.metric}["Decisions that would change"] == "0"
    assert any("exactly as it landed" in s for s in texts(at.success))


def test_an_uploaded_candidate_and_an_invalid_one(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "policy")
    lenient = POLICY_YAML.replace(
        "    decision: DENY\n    reason: Never stage",
        "    decision: ALLOW\n    reason: Never stage",
    )
    at.get("file_uploader")[0].upload("candidate.yaml", lenient.encode(), "application/yaml").run()
    at.button(key="policy_replay").click().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Decisions that would change"] == "1"  # the .env add

    at.get("file_uploader")[0].clear().run()
    broken = POLICY_YAML.replace(
        "decision: REWRITE\n    rewrite: {set: {max_count",
        "decision: MAYBE\n    rewrite: {set: {max_count",
    )
    at.text_area(key="policy_candidate_text").input(broken)
    at.button(key="policy_replay").click().run()
    assert any("not valid" in e for e in texts(at.error))
    problems = table_with(at, "line", "where", "problem")
    assert any("cap-log-size" in w for w in problems["where"])
    assert all(line > 0 for line in problems["line"])


def test_policy_page_without_an_active_policy(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, None, monkeypatch), "policy")
    assert not at.exception
    assert any("No active policy" in m for m in texts(at.markdown))
    assert not at.main.text_input  # the active policy is the server's to name, not a viewer's
    at = goto(app_test(shared.root, shared.root / "missing.yaml", monkeypatch), "policy")
    assert any("cannot be loaded" in e and "missing.yaml" in e for e in texts(at.error))
    assert at.button(key="policy_replay")  # a candidate can still be replayed


# --- SQL -----------------------------------------------------------------------------------


def test_sql_runs_read_only_queries_and_offers_downloads(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sql")
    at.text_area(key="sql_text").input(
        "SELECT decision, count(*) AS n FROM actions GROUP BY decision ORDER BY decision"
    )
    at.button(key="sql_run").click().run()
    assert not at.exception
    result = table_with(at, "decision", "n")
    assert list(result.itertuples(index=False, name=None)) == _landed(
        shared, "SELECT decision, count(*) FROM actions GROUP BY decision ORDER BY decision"
    )
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download CSV", "Download Parquet"]

    at.text_area(key="sql_text").input("DROP VIEW actions")
    at.button(key="sql_run").click().run()
    assert any("read-only" in e for e in texts(at.error))

    at.selectbox(key="sql_example").set_value("Latest sessions").run()
    assert at.text_area(key="sql_text").value.startswith("SELECT session_id")


def test_downloads_keep_nested_values() -> None:
    frame = pl.DataFrame({"id": ["a", "b"], "repos": [["/r/x", "/r/y"], []]})
    csv = to_csv(frame).decode()
    assert csv.splitlines() == ["id,repos", 'a,"[""/r/x"", ""/r/y""]"', "b,[]"]
    assert pl.read_parquet(io.BytesIO(to_parquet(frame))).equals(frame)


def test_views_and_columns_are_listed(shared: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sql")
    schema = next(m for m in texts(at.markdown) if m.startswith("**sessions**"))
    assert "`max_blast_radius` varchar" in schema
