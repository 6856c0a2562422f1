"""Replay over real landed Parquet: the producing policy reports zero changes, a flipped
rule reports exactly the affected actions (checked against a per-row brute force)."""

from __future__ import annotations

import datetime as dt
import json
import random
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.policy import Policy, apply_to_row, call_from_row, loads_policy
from tooltrail.policy.replay import ReplayReport, replay
from tooltrail.schema import Row, empty_row
from tooltrail.semconv import BLAST_RADII, TT_TOOL_ANNOTATIONS

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

PRODUCING = textwrap.dedent(
    """
    version: 1
    targets:
      - {tools: ["git_*"], repo: "{repo_path}", branch: "{branch_name|target}"}
      - {tools: [push], repo: "{owner}/{repo}", branch: "{branch}"}
    blast_radius:
      - {tools: [git_commit, git_checkout, push], radius: Medium}
      - {branch: [main], radius: High}
      - {destructiveHint: true, radius: High}
      - {tools: [git_reset], radius: Critical}
    rules:
      - id: no-reset
        when: {tool: git_reset}
        decision: DENY
      - id: own-branch
        when: {tool: git_checkout, args: {branch_name: main}}
        decision: REWRITE
        rewrite: {set: {branch_name: "agent/{session_id}"}}
      - id: no-env-files
        when: {tool: git_add, args: {files: "*.env"}}
        decision: DENY
      - id: big-logs
        when: {tool: git_log, args: {max_count: {gt: 100}}}
        decision: REQUIRE_APPROVAL
      - id: scrub-token
        when: {tool: push}
        decision: REWRITE
        rewrite: {redact: [token]}
      - id: push-main
        when: {tool: push, branch: main, agent: "a*"}
        decision: REQUIRE_APPROVAL
      - id: reads
        when: {readOnlyHint: true}
        decision: ALLOW
    """
)

TOOLS = ["git_status", "git_commit", "git_checkout", "git_reset", "git_add", "git_log", "push"]


def _arguments(rng: random.Random, tool: str) -> Any:
    roll = rng.random()
    if roll < 0.03:
        return "not json"  # landed garbage: decided as {}
    if roll < 0.05:
        return None
    args: dict[str, Any] = {"repo_path": rng.choice(["/src/app", "/src/lib"])}
    if tool == "git_checkout":
        args["branch_name"] = rng.choice(["main", "dev", "feature/x"])
    elif tool == "git_add":
        args["files"] = rng.sample(["a.py", "b.py", "prod.env", "README.md"], k=2)
    elif tool == "git_log":
        args["max_count"] = rng.choice([10, 50, 500])
    elif tool == "git_commit":
        args["message"] = f"change {rng.randrange(10_000)}"  # unique-ish: high cardinality
    elif tool == "push":
        args = {"owner": "acme", "repo": "api", "branch": rng.choice(["main", "dev"])}
        args["token"] = f"sk_{rng.randrange(10**9):09d}"
    return args


def tool_row(i: int, span_id: str, tool: str, args: Any, **fields: Any) -> Row:
    """Landed tool row ``i`` (trace ``t<i>``): ``args`` as its JSON arguments, in session
    ``s`` an hour before NOW unless ``fields`` (any other columns) say otherwise."""
    row = empty_row()
    row.update(
        trace_id=f"t{i}",
        span_id=span_id,
        span_type="tool",
        tool_name=tool,
        arguments=json.dumps(args),
        session_id="s",
        start_time=NOW - dt.timedelta(hours=1),
    )
    row.update(fields)
    return row


def decide_at_call_time(policy: Policy, row: Row) -> None:
    """Stamp ``row`` with ``policy``'s decision the way the instrumentation records one
    made at call time: the engine's redacted copy of the arguments, and their count."""
    d = policy.decide(call_from_row(row))
    row.update(
        decision=d.decision,
        policy_rule=d.policy_rule,
        policy_matched=list(d.policy_matched),
        policy_version=d.policy_version,
        blast_radius=d.blast_radius,
        target_repo=d.target_repo,
        target_branch=d.target_branch,
        enforced=True,
    )
    if d.redactions:
        row["arguments"] = json.dumps(d.arguments)
        row["redactions"] = d.redactions


def make_rows(policy: Policy, n: int = 400, seed: int = 7) -> list[Row]:
    """Tool rows as the producing policy decided them (after the fact via apply_to_row,
    or at call time like the instrumentation), plus spans replay must ignore."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        tool = rng.choice(TOOLS)
        args = _arguments(rng, tool)
        row = empty_row()
        row.update(
            trace_id=f"t{i}",
            span_id=f"span-{i:04d}",
            span_type="tool",
            tool_name=tool,
            arguments=args if isinstance(args, str) or args is None else json.dumps(args),
            # A few without a session: rewrites that need {session_id} fail closed there.
            session_id=f"s{rng.randrange(20)}" if rng.random() > 0.05 else None,
            agent_name=rng.choice(["a1", "a2", "bot", None]),
            # 40 of them are older than the default 30-day window.
            start_time=NOW - dt.timedelta(days=45 if i < 40 else rng.uniform(0, 20)),
        )
        if rng.random() < 0.3:
            hints = {"readOnlyHint": tool in ("git_status", "git_log")}
            row["attributes"] = json.dumps({TT_TOOL_ANNOTATIONS: json.dumps(hints)})
        if rng.random() < 0.3:
            decide_at_call_time(policy, row)
        else:
            apply_to_row(policy, row)
        rows.append(row)
    for i in range(30):
        llm = empty_row()
        llm.update(trace_id=f"l{i}", span_id=f"llm-{i}", span_type="llm", start_time=NOW)
        rows.append(llm)
    return rows


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Row]]:
    data = tmp_path_factory.mktemp("data")
    rows = make_rows(loads_policy(PRODUCING))
    # Several files and days, as many writers would land them.
    writer = ParquetSpanWriter(data)
    writer.write(rows[: len(rows) // 2])
    writer.write(rows[len(rows) // 2 :])
    return data, rows


def in_window(rows: list[Row], days: float | None) -> list[Row]:
    cutoff = None if days is None else NOW - dt.timedelta(days=days)
    return [
        r
        for r in rows
        if r["span_type"] == "tool" and (cutoff is None or r["start_time"] >= cutoff)
    ]


def brute_force(policy: Policy, rows: list[Row]) -> dict[str, Counter[Any]]:
    """Per row, what replay must report: decide each landed row on its own. A row redacted
    on landing that changes only because a rule that matched it then cannot see the
    redacted values now is not a change (``on_redacted``), and keeps that rule's hit."""
    out: dict[str, Counter[Any]] = {
        k: Counter() for k in ("transitions", "agents", "radius", "hits", "changed", "on_redacted")
    }
    for row in rows:
        d = policy.decide(call_from_row(row))
        hidden = []
        if row["redactions"]:
            hidden = [
                r
                for r in row["policy_matched"]
                if r in policy.rule_ids and r not in d.policy_matched
            ]
        out["hits"].update([*d.policy_matched, *hidden])
        old = (row["decision"], row["policy_rule"], row["blast_radius"])
        new = (d.decision, d.policy_rule, d.blast_radius)
        if new != old and hidden:
            new = with_hidden(policy, new, [*d.policy_matched, *hidden], hidden)
            if new == old:  # the redaction's doing, not the candidate's
                out["on_redacted"][row["span_id"]] += 1
                continue
        if new != old:
            out["changed"][row["span_id"]] += 1
        if new[0] != row["decision"]:
            out["transitions"][(row["decision"], new[0])] += 1
            out["agents"][(row["agent_name"], row["decision"], new[0])] += 1
        if new[2] != row["blast_radius"]:
            out["radius"][(row["blast_radius"], new[2])] += 1
    return out


def with_hidden(
    policy: Policy, outcome: tuple[str, str, str], matched: list[str], hidden: list[str]
) -> tuple[str, str, str]:
    """The outcome had the hidden rules matched too (the engine's rule: strongest wins,
    the earlier on a tie; the highest blast radius)."""
    rules = [r for r in policy.rules if r.id in matched]
    decision, verdict, radius = outcome
    if rules:
        best = max(r.rank for r in rules)
        winner = next(r for r in rules if r.rank == best)
        decision, verdict = winner.decision, winner.id
    ranks = [BLAST_RADII.index(radius), *(r.radius for r in policy.rules if r.id in hidden)]
    return decision, verdict, BLAST_RADII[max(ranks)]


def as_counter(items: list[dict[str, Any]], keys: tuple[str, ...]) -> Counter[Any]:
    return Counter({tuple(item[k] for k in keys): item["count"] for item in items})


def test_replay_of_the_producing_policy_reports_zero_changes(
    landed: tuple[Path, list[Row]],
) -> None:
    data, rows = landed
    policy = loads_policy(PRODUCING)
    report = replay(policy, data, since_s=30 * 86_400, now=NOW)
    window = in_window(rows, 30)
    assert report.actions == len(window) > 300
    assert report.changed == 0
    assert report.decision_changes == report.verdict_changes == report.blast_radius_changes == 0
    assert report.transitions == report.by_rule == report.by_agent == report.examples == []
    assert report.newly_unmatched == 0
    assert report.landed_versions == {policy.version: len(window)}
    # Pushes were redacted on landing, by a rule that reads the tool, not the secret:
    # replayed on their redacted text, they decide as they landed (nothing set apart).
    assert sum(1 for r in window if r["redactions"]) > 0
    assert report.kept_redacted == report.changed_on_redacted == 0
    # Everything else went through decide(), once per distinct input, not once per row.
    assert 0 < report.distinct_inputs < len(window)
    assert report.rule_hits == dict(brute_force(policy, window)["hits"])
    assert report.dead_rules == []


def test_replay_with_one_rule_flipped_reports_exactly_the_affected_actions(
    landed: tuple[Path, list[Row]],
) -> None:
    data, rows = landed
    flipped = loads_policy(
        PRODUCING.replace(
            "when: {tool: git_reset}\n    decision: DENY",
            "when: {tool: git_reset}\n    decision: ALLOW",
        )
    )
    report = replay(flipped, data, since_s=30 * 86_400, now=NOW, max_examples=3)
    window = in_window(rows, 30)
    affected = {r["span_id"] for r in window if r["policy_rule"] == "no-reset"}
    assert len(affected) > 10
    assert report.changed == report.decision_changes == len(affected)
    assert report.transitions == [{"from": "DENY", "to": "ALLOW", "count": len(affected)}]
    assert report.by_rule == [
        {"old_rule": "no-reset", "new_rule": "no-reset", "from": "DENY", "to": "ALLOW",
         "count": len(affected)}
    ]  # fmt: skip
    expected = brute_force(flipped, window)
    assert set(expected["changed"]) == affected
    assert as_counter(report.by_agent, ("agent", "from", "to")) == expected["agents"]
    # The examples are the earliest affected actions.
    earliest = sorted((r for r in window if r["span_id"] in affected),
                      key=lambda r: (r["start_time"], r["span_id"]))[:3]  # fmt: skip
    assert [e["span_id"] for e in report.examples] == [r["span_id"] for r in earliest]
    assert report.examples[0]["start_time"] == earliest[0]["start_time"].isoformat()
    assert all(e["tool"] == "git_reset" for e in report.examples)
    sessions = {r["span_id"]: r["session_id"] for r in window}
    assert [e["session_id"] for e in report.examples] == [
        sessions[e["span_id"]] for e in report.examples
    ]
    assert report.changed_on_redacted == report.kept_redacted == 0


def test_replay_reports_blast_radius_dead_rules_and_newly_unmatched(
    landed: tuple[Path, list[Row]],
) -> None:
    data, rows = landed
    big_logs_rule = (
        "  - id: big-logs\n"
        "    when: {tool: git_log, args: {max_count: {gt: 100}}}\n"
        "    decision: REQUIRE_APPROVAL\n"
    )
    assert big_logs_rule in PRODUCING
    candidate_text = (
        PRODUCING.replace("[git_reset], radius: Critical}", "[git_reset], radius: Low}").replace(
            big_logs_rule, ""
        )
        + "  - id: never\n    when: {tool: does_not_exist}\n    decision: DENY\n"
    )
    candidate = loads_policy(candidate_text)
    report = replay(candidate, data, since_s=None, now=NOW)
    window = in_window(rows, None)
    assert report.actions == len(window)
    expected = brute_force(candidate, window)
    # Rows redacted on landing are replayed on the redacted text (other version): included.
    assert as_counter(report.transitions, ("from", "to")) == expected["transitions"]
    assert as_counter(report.blast_radius, ("from", "to")) == expected["radius"]
    assert report.changed == len(expected["changed"])
    assert report.changed_on_redacted == len(expected["on_redacted"])
    assert report.dead_rules == ["never"]
    assert report.rule_hits == {**dict(expected["hits"]), "never": 0}
    big_logs = [r for r in window if r["policy_matched"] == ["big-logs"]]
    assert report.newly_unmatched == len(big_logs) > 0


def test_redacted_condition_values_are_kept_for_the_same_version_and_flagged_otherwise(
    tmp_path: Path,
) -> None:
    text = textwrap.dedent(
        """
        version: 1
        rules:
          - id: scrub
            when: {tool: commit, args: {message: {regex: "ghp_[a-z]+"}}}
            decision: REWRITE
            rewrite: {redact: [{regex: "ghp_[a-z]+"}]}
        """
    )
    producing = loads_policy(text)
    rows = []
    for i, message in enumerate(["fix ghp_secret", "plain", "ghp_other here"]):
        row = empty_row()
        row.update(trace_id="t", span_id=f"s{i}", span_type="tool", tool_name="commit",
                   session_id="x", start_time=NOW,
                   arguments=json.dumps({"message": message}))  # fmt: skip
        apply_to_row(producing, row)
        rows.append(row)
    assert [r["redactions"] for r in rows] == [1, None, 1]
    ParquetSpanWriter(tmp_path).write(rows)
    same = replay(producing, tmp_path, since_s=None)
    assert (same.changed, same.kept_redacted, same.rule_hits) == (0, 2, {"scrub": 2})
    # Another version re-judges the redacted text: the secret is gone, so the rule cannot
    # match. That is no change the candidate makes: counted apart, the rule keeps its hits.
    other = replay(loads_policy(text + "    reason: new\n"), tmp_path, since_s=None)
    assert (other.changed, other.changed_on_redacted, other.kept_redacted) == (0, 2, 0)
    assert (other.rule_hits, other.dead_rules, other.newly_unmatched) == ({"scrub": 2}, [], 0)


GIT_POLICY = Path(__file__).resolve().parent.parent / "examples" / "policy-git.yaml"
REDACTING_RULE = "redact-tokens-in-commit-messages"


def _git_rows(policy: Policy) -> list[Row]:
    """Actions decided at call time by examples/policy-git.yaml, recorded the way the
    instrumentation records them (the redacted ``Decision.arguments``, ``redactions``)."""
    token = "ghp_" + "a" * 36
    calls = [
        ("git_commit", {"repo_path": "/src/app", "message": f"add key {token}"}),
        ("git_commit", {"repo_path": "/src/app", "message": "key AKIAABCDEFGHIJKLMNOP"}),
        ("git_commit", {"repo_path": "/src/app", "message": "plain change"}),
        ("git_reset", {"repo_path": "/src/app"}),
        ("git_checkout", {"repo_path": "/src/app", "branch_name": "main"}),
        ("git_log", {"repo_path": "/src/app", "max_count": 5000}),
    ]
    rows: list[Row] = []
    for i in range(24):
        tool, args = calls[i % len(calls)]
        row = tool_row(
            i,
            f"sp{i:02d}",
            tool,
            args,
            session_id=f"s{i % 4}",
            agent_name="repo-janitor",
            start_time=NOW - dt.timedelta(hours=i),
        )
        decide_at_call_time(policy, row)
        rows.append(row)
    return rows


def test_a_text_only_edit_changes_nothing_on_actions_redacted_on_landing(tmp_path: Path) -> None:
    """The demo case: rows scrubbed at call time by the redacting rule are replayed on the
    redacted text, where the rule's own condition (the token) is gone. A candidate that
    only rewords a `reason:` must report no change, no dead rule, and pass
    --fail-on-change; the affected rows are counted in changed_on_redacted."""
    from click.testing import CliRunner

    from tooltrail.policy.cli import policy_cli

    text = GIT_POLICY.read_text(encoding="utf-8")
    producing = loads_policy(text)
    rows = _git_rows(producing)
    redacted = [r for r in rows if r["redactions"]]
    assert len(redacted) == 8 and {r["policy_rule"] for r in redacted} == {REDACTING_RULE}
    data = tmp_path / "data"
    ParquetSpanWriter(data).write(rows)
    edited = text.replace("Credentials never go into history", "No credentials in history")
    candidate = loads_policy(edited)
    assert edited != text and candidate.version != producing.version

    report = replay(candidate, data, since_s=None, now=NOW)
    assert report.actions == len(rows)
    assert (report.changed, report.decision_changes, report.newly_unmatched) == (0, 0, 0)
    assert report.transitions == report.by_rule == report.by_agent == report.examples == []
    assert (report.changed_on_redacted, report.kept_redacted) == (len(redacted), 0)
    assert report.rule_hits[REDACTING_RULE] == len(redacted)
    assert REDACTING_RULE not in report.dead_rules

    path = tmp_path / "candidate.yaml"
    path.write_text(edited, encoding="utf-8")
    result = CliRunner().invoke(
        policy_cli, ["replay", str(path), "--data", str(data), "--since", "all", "--fail-on-change"]
    )
    assert result.exit_code == 0, result.output
    assert f"note: {len(redacted)} actions landed with redacted arguments" in result.output
    dead = next(line for line in result.output.splitlines() if line.startswith("dead rules"))
    assert REDACTING_RULE not in dead


def test_a_real_change_on_redacted_actions_still_counts(landed: tuple[Path, list[Row]]) -> None:
    """Only changes a redaction may have caused are set apart: `scrub-token` tests the tool
    name, which redaction leaves alone, so denying it changes every scrubbed push."""
    data, rows = landed
    flipped = loads_policy(
        PRODUCING.replace(
            "when: {tool: push}\n    decision: REWRITE\n    rewrite: {redact: [token]}",
            "when: {tool: push}\n    decision: DENY",
        )
    )
    assert flipped.version != loads_policy(PRODUCING).version
    report = replay(flipped, data, since_s=None, now=NOW)
    window = in_window(rows, None)
    pushes = [r for r in window if r["tool_name"] == "push"]
    scrubbed = [r for r in pushes if r["redactions"]]
    assert len(scrubbed) > 10 and all(r["decision"] != "DENY" for r in pushes)
    # Every push, scrubbed or not, is now denied: all of them are changes.
    assert report.changed_on_redacted == 0
    assert report.changed == report.decision_changes == len(pushes)
    assert as_counter(report.transitions, ("from", "to")) == Counter(
        (r["decision"], "DENY") for r in pushes
    )
    assert report.changed == len(brute_force(flipped, window)["changed"])


def test_replay_of_an_empty_or_missing_data_dir(tmp_path: Path) -> None:
    policy = loads_policy(PRODUCING)
    for data in (tmp_path / "missing", tmp_path):
        report = replay(policy, data)
        assert isinstance(report, ReplayReport)
        assert (report.actions, report.changed) == (0, 0)
        assert report.dead_rules == list(policy.rule_ids)


def test_progress_is_reported_per_batch(landed: tuple[Path, list[Row]]) -> None:
    data, _ = landed
    calls: list[tuple[int, int]] = []
    replay(loads_policy(PRODUCING), data, since_s=None, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 0


def test_a_deleted_deny_is_a_change_even_on_redacted_actions(tmp_path: Path) -> None:
    # The rows were redacted by `hide-token` when they landed, and it cannot see the token
    # now; but the candidate's change is the deleted DENY, which the redaction does not
    # explain: --fail-on-change must fail (it passed over it: the gate failed open).
    producing = loads_policy(
        """
        version: 1
        rules:
          - {id: no-prod, when: {tool: deploy, args: {env: prod}}, decision: DENY}
          - id: hide-token
            when: {tool: deploy, args: {token: {regex: "^sk-"}}}
            decision: REWRITE
            rewrite: {redact: [token]}
        """
    )
    rows = []
    for i in range(3):
        row = tool_row(i, f"d{i}", "deploy", {"env": "prod", "token": f"sk-{i:08d}"})
        decide_at_call_time(producing, row)
        assert (row["decision"], row["redactions"]) == ("DENY", 1)
        rows.append(row)
    data = tmp_path / "data"
    ParquetSpanWriter(data).write(rows)
    candidate = loads_policy(
        """
        version: 1
        rules:
          - id: hide-token
            when: {tool: deploy, args: {token: {regex: "^sk-"}}}
            decision: REWRITE
            rewrite: {redact: [token]}
        """
    )
    report = replay(candidate, data, since_s=None, now=NOW)
    assert (report.changed, report.decision_changes, report.changed_on_redacted) == (3, 3, 0)
    assert as_counter(report.transitions, ("from", "to")) == Counter({("DENY", "REWRITE"): 3})
    assert report.changed == len(brute_force(candidate, rows)["changed"])


def test_a_set_through_a_non_object_replays_as_the_deny_it_landed_as(tmp_path: Path) -> None:
    # `set: {opts.level: 1}` fails closed (DENY) when `opts` is not an object: the decision
    # depends on `opts` although no condition reads it, so replay must extract it too.
    policy = loads_policy(
        """
        version: 1
        rules:
          - id: force-level
            when: {tool: run}
            decision: REWRITE
            rewrite: {set: {opts.level: 1}}
        """
    )
    assert {"opts"} <= policy.argument_keys()
    rows = []
    for i, args in enumerate([{"opts": "x"}, {"opts": {"a": 1}}, {"opts": {"a": 1}, "other": 2}]):
        row = tool_row(i, f"r{i}", "run", args)
        decide_at_call_time(policy, row)
        rows.append(row)
    assert [r["decision"] for r in rows] == ["DENY", "REWRITE", "REWRITE"]
    data = tmp_path / "data"
    ParquetSpanWriter(data).write(rows)
    report = replay(policy, data, since_s=None, now=NOW)
    assert (report.actions, report.changed, report.transitions) == (3, 0, [])


def test_claiming_redactions_does_not_exempt_a_row_from_the_check(tmp_path: Path) -> None:
    # Forged records: ALLOWs of a tool the policy denies, stamped with the policy's own
    # version and a redaction count (the exporter counts any scrubbed attribute), whose
    # arguments were never redacted; the second also names a real ALLOW rule as matched,
    # as if the redaction had hidden what it tests. Replay must re-decide both.
    policy = loads_policy(
        "version: 1\ndefault: DENY\nrules:\n"
        "  - {id: no-rm, when: {tool: rm}, decision: DENY}\n"
        "  - {id: allow-ls, when: {tool: ls}, decision: ALLOW}\n"
    )
    rows = []
    for i, matched in enumerate(([], ["allow-ls"])):
        forged = tool_row(
            i,
            f"f{i}",
            "rm",
            {"path": f"/etc/{i}"},
            decision="ALLOW",
            policy_rule=matched[0] if matched else "pass",
            policy_matched=matched,
            blast_radius="Low",
            enforced=True,
            redactions=1,
            policy_version=policy.version,
        )
        rows.append(forged)
    ParquetSpanWriter(tmp_path).write(rows)
    report = replay(policy, tmp_path, since_s=None, now=NOW)
    assert (report.changed, report.kept_redacted, report.changed_on_redacted) == (2, 0, 0)
    assert as_counter(report.transitions, ("from", "to")) == Counter({("ALLOW", "DENY"): 2})
