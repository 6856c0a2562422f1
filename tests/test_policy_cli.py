"""`tooltrail policy check | explain | replay` through click's CliRunner: output and exit
codes (0 ok, 1 found a problem, 2 bad input)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.policy import load_policy
from tooltrail.policy.cli import policy_cli
from tooltrail.schema import empty_row

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPLAIN_KEYS = [
    "decision",
    "policy_rule",
    "policy_matched",
    "blast_radius",
    "target_repo",
    "target_branch",
    "arguments",
    "arguments_rewritten",
    "reason",
]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(policy_cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize("name", ["policy-git.yaml", "policy-github.yaml"])
def test_check_passes_both_example_policies(name: str) -> None:
    result = run("check", str(EXAMPLES / name))
    assert result.exit_code == 0, result.output
    policy = load_policy(EXAMPLES / name)
    n = len(policy.tests)
    assert n >= 10
    assert result.output.startswith("OK ")
    assert f"{n} of {n} inline tests passed" in result.output
    # Together the inline tests expect every decision, so each is exercised by `check`.
    expected = {t.expect.get("decision") for t in policy.tests}
    assert {"ALLOW", "DENY", "REWRITE", "REQUIRE_APPROVAL"} <= expected


def test_check_failing_inline_test_prints_expected_vs_actual_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - id: no-reset\n"
        "    when: {tool: git_reset}\n"
        "    decision: DENY\n"
        "    tests:\n"
        "      - {call: {tool: git_reset}, expect: DENY}\n"
        "      - {call: {tool: git_reset}, expect: {decision: ALLOW, blast_radius: High}}\n"
        "  - id: count\n"
        "    when: {tool: t}\n"
        "    decision: REWRITE\n"
        "    rewrite: {set: {n: 1}}\n"
        "    tests:\n"  # JSON equality: true is not 1, 1.0 is
        "      - {call: {tool: t}, expect: {arguments_rewritten: {n: true}}}\n"
        "      - {call: {tool: t}, expect: {arguments_rewritten: {n: 1.0}}}\n",
        encoding="utf-8",
    )
    result = run("check", str(path))
    assert result.exit_code == 1
    assert f"FAIL {path}:8: rule 'no-reset' test #2: git_reset {{}}" in result.output
    assert 'decision: expected "ALLOW", got "DENY"' in result.output
    assert 'blast_radius: expected "High", got "Low"' in result.output
    assert 'arguments_rewritten: expected {"n": true}, got {"n": 1}' in result.output
    assert "test #2: t" not in result.output
    assert "2 of 4 inline tests passed" in result.output


def test_check_bad_policy_exits_2_naming_line_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: rw\n    when: {tool: x}\n    decision: REWRITE\n",
        encoding="utf-8",
    )
    result = run("check", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: rule 'rw'" in result.output
    assert "REWRITE needs a `rewrite:`" in result.output
    missing = run("check", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "cannot read the policy file" in missing.output


def test_explain_json_is_exactly_the_spec_object() -> None:
    result = run(
        "explain",
        str(EXAMPLES / "policy-git.yaml"),
        "--tool",
        "git_checkout",
        "--args",
        '{"repo_path": "/src/app", "branch_name": "main"}',
        "--session",
        "s-42",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    obj = json.loads(result.output)
    assert list(obj) == EXPLAIN_KEYS
    assert obj == {
        "decision": "REWRITE",
        "policy_rule": "checkout-default-branch",
        "policy_matched": ["checkout-default-branch"],
        "blast_radius": "High",
        "target_repo": "/src/app",
        "target_branch": "main",
        "arguments": {"repo_path": "/src/app", "branch_name": "main"},
        "arguments_rewritten": {"repo_path": "/src/app", "branch_name": "agent/s-42"},
        "reason": "Agents work on their own branch",
    }


def test_explain_table_says_why() -> None:
    result = run(
        "explain",
        str(EXAMPLES / "policy-github.yaml"),
        "--tool",
        "push_files",
        "--args",
        '{"owner": "acme", "repo": "api", "branch": "main", "files": [{"path": "a.py"}]}',
        "--agent",
        "coder",
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "decision      DENY" in out
    assert "verdict       no-writes-to-default-branch" in out
    assert "MATCH  no-writes-to-default-branch (DENY, line 33)" in out
    assert "no     agent-branches (ALLOW" in out and "fails 'branch matches 'agent/*''" in out
    assert "strictest matched rule wins" in out
    assert "blast radius from: blast_radius[0] (Medium), blast_radius[2] (Critical)" in out


def test_explain_preset_and_csv() -> None:
    args = ["explain", str(EXAMPLES / "policy-github.yaml"), "--tool", "create_issue"]
    table = run(*args, "--args", '{"owner": "acme", "repo": "api"}')
    assert "no rule matched: preset approve-reads, the call is not known to be read-only" in (
        table.output
    )
    annotated = run(*args, "--annotations", '{"readOnlyHint": true}', "--format", "csv")
    assert annotated.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(annotated.output)))
    assert list(rows[0]) == EXPLAIN_KEYS
    assert (rows[0]["decision"], rows[0]["policy_rule"]) == ("ALLOW", "preset:approve-reads")
    assert json.loads(rows[0]["policy_matched"]) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--args", "{not json"], "--args is not valid JSON"),
        (["--args", "[1, 2]"], "--args must be a JSON object"),
        # JSON has no NaN / Infinity: --format json must never print them.
        (["--args", '{"count": NaN}', "--format", "json"],
         "--args is not valid JSON: NaN is not a JSON value"),
        (["--args", '{"count": [-Infinity]}'], "--args is not valid JSON: -Infinity"),
        (["--args", '{"count": 1e999}'], "--args is not valid JSON: 1e999 is out of range"),
        (["--annotations", '{"x": NaN}'], "--annotations is not valid JSON: NaN"),
        (["--annotations", "true"], "--annotations must be a JSON object"),
        # MCP hints are booleans: "yes" must not silently read as not-read-only.
        (["--annotations", '{"readOnlyHint": "yes"}'],
         '--annotations: readOnlyHint must be true or false, got "yes"'),
        (["--annotations", '{"destructive_hint": 0}'],
         "--annotations: destructive_hint must be true or false, got 0"),
        (["--annotations", '{"title": "t", "openWorldHint": [true]}'],
         "--annotations: openWorldHint must be true or false, got [true]"),
    ],
)  # fmt: skip
def test_explain_bad_input_exits_2(options: list[str], message: str) -> None:
    result = run("explain", str(EXAMPLES / "policy-git.yaml"), "--tool", "git_log", *options)
    assert result.exit_code == 2
    assert message in result.output


def test_explain_annotations_accept_null_hints_and_other_keys() -> None:
    """null is the MCP default (the Python model's None); keys other than the hints
    (title, vendor extensions) are free."""
    args = ["explain", str(EXAMPLES / "policy-github.yaml"), "--tool", "create_issue"]
    for given, expected in [
        ('{"readOnlyHint": null, "title": "Create issue"}', "REQUIRE_APPROVAL"),
        ('{"readOnlyHint": true, "destructiveHint": null, "x-vendor": "yes"}', "ALLOW"),
    ]:
        result = run(*args, "--annotations", given, "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["decision"] == expected


NOOP_POLICY = """\
version: 1
targets:
  - {tools: [push], branch: "{branch}"}
rules:
  - {id: no-commit-main, when: {tool: git_commit, branch: main}, decision: DENY}
  - {id: no-release-repo, when: {repo: "/srv/release/*"}, decision: DENY}
  - {id: no-push-main, when: {tool: push, branch: main}, decision: DENY}
"""


def test_check_warns_about_target_conditions_no_target_can_feed(tmp_path: Path) -> None:
    path = tmp_path / "noop.yaml"
    path.write_text(NOOP_POLICY, encoding="utf-8")
    result = run("check", str(path))
    assert result.exit_code == 0, result.output  # legal, so not an error
    warnings = [line for line in result.output.splitlines() if line.startswith("WARNING ")]
    assert warnings == [
        f"WARNING {path}:5: rule 'no-commit-main' (rules[0].when.branch): condition `branch` "
        "can never hold: no `targets:` entry gives a branch for tool 'git_commit', so the "
        "rule never matches (see Targets in POLICY.md)",
        f"WARNING {path}:6: rule 'no-release-repo' (rules[1].when.repo): condition `repo` "
        "can never hold: no `targets:` entry gives a repo for any tool, so the rule never "
        "matches (see Targets in POLICY.md)",
    ]
    assert result.output.splitlines()[-1].endswith("; 2 warnings")


def test_explain_says_when_no_target_entry_gives_the_field(tmp_path: Path) -> None:
    path = tmp_path / "noop.yaml"
    path.write_text(NOOP_POLICY, encoding="utf-8")
    commit = run("explain", str(path), "--tool", "git_commit",
                 "--args", '{"repo_path": "/srv/release/x", "branch": "main"}')  # fmt: skip
    assert commit.exit_code == 0, commit.output
    assert (
        "fails 'branch matches 'main'' (no `targets:` entry gives a branch for this tool, "
        "so this never holds)" in commit.output
    )
    assert "fails 'repo matches '/srv/release/*'' (no `targets:` entry gives a repo" in (
        commit.output
    )
    # For push an entry exists; the call just lacks the argument it reads.
    push = run("explain", str(path), "--tool", "push", "--args", "{}")
    assert "fails 'branch matches 'main'' (no branch: the `targets:` entries for this tool " in (
        push.output
    )


def test_check_rejects_a_rule_named_like_a_verdict(tmp_path: Path) -> None:
    """A rule `pass` would make its DENY read as "no rule matched"."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: pass\n    when: {tool: git_log}\n    decision: DENY\n",
        encoding="utf-8",
    )
    result = run("check", str(path))
    assert result.exit_code == 2
    assert f"{path}:3: rule 'pass' (rules[0].id): rule id 'pass' is reserved" in result.output


def test_explain_without_tool_is_a_usage_error() -> None:
    assert run("explain", str(EXAMPLES / "policy-git.yaml")).exit_code == 2


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """Actions decided by examples/policy-git.yaml, landed as Parquet."""
    policy = load_policy(EXAMPLES / "policy-git.yaml")
    from tooltrail.policy import apply_to_row

    now = dt.datetime.now(dt.UTC)
    calls = [
        ("git_reset", {"repo_path": "/src/app"}),
        ("git_status", {"repo_path": "/src/app"}),
        ("git_checkout", {"repo_path": "/src/app", "branch_name": "main"}),
        ("git_log", {"repo_path": "/src/app", "max_count": 5000}),
    ]
    rows = []
    for i in range(40):
        tool, args = calls[i % len(calls)]
        row = empty_row()
        row.update(trace_id=f"t{i}", span_id=f"sp{i}", span_type="tool", tool_name=tool,
                   arguments=json.dumps(args), session_id=f"s{i % 5}", agent_name=f"agent{i % 2}",
                   start_time=now - dt.timedelta(hours=i))  # fmt: skip
        apply_to_row(policy, row)
        rows.append(row)
    data = tmp_path / "data"
    ParquetSpanWriter(data).write(rows)
    return data


def flipped_policy(tmp_path: Path) -> Path:
    text = (EXAMPLES / "policy-git.yaml").read_text(encoding="utf-8")
    flipped = text.replace(
        "when: {tool: git_reset}\n    decision: DENY",
        "when: {tool: git_reset}\n    decision: ALLOW",
    ).replace("expect: {decision: DENY, blast_radius: High}", "expect: {decision: ALLOW}")
    assert flipped != text
    path = tmp_path / "candidate.yaml"
    path.write_text(flipped, encoding="utf-8")
    return path


def test_replay_formats_and_exit_codes(data_dir: Path, tmp_path: Path) -> None:
    same = run(
        "replay", str(EXAMPLES / "policy-git.yaml"), "--data", str(data_dir), "--format", "json"
    )
    assert same.exit_code == 0, same.output
    report = json.loads(same.output)
    assert (report["actions"], report["changed"]) == (40, 0)

    candidate = str(flipped_policy(tmp_path))
    table = run("replay", candidate, "--data", str(data_dir))
    assert table.exit_code == 0, table.output
    assert "changed: 10 actions (10 decision" in table.output
    assert "DENY  ALLOW  10" in table.output
    assert "by agent:" in table.output and "examples:" in table.output

    as_csv = run("replay", candidate, "--data", str(data_dir), "--format", "csv", "--examples", "2")
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    decision_rows = [r for r in rows if r["section"] == "decision"]
    assert decision_rows == [
        {**decision_rows[0], "from": "DENY", "to": "ALLOW", "count": "10"}
    ]  # fmt: skip
    examples = [r for r in rows if r["section"] == "example"]
    assert len(examples) == 2 and all(r["session_id"].startswith("s") for r in examples)
    summary = {r["metric"]: int(r["count"]) for r in rows if r["section"] == "summary"}
    assert summary["changed"] == 10 and summary["actions"] == 40

    strict = run("replay", candidate, "--data", str(data_dir), "--fail-on-change")
    assert strict.exit_code == 1


def test_replay_since_window_and_env_data_dir(data_dir: Path, tmp_path: Path) -> None:
    candidate = str(flipped_policy(tmp_path))
    recent = run("replay", candidate, "--since", "10h", "--format", "json",
                 env={"TOOLTRAIL_DATA": str(data_dir)})  # fmt: skip
    assert recent.exit_code == 0, recent.output
    report = json.loads(recent.output)
    # Rows are 1h apart, newest now: 10 inside 10h (hours 0..9), 3 of them resets.
    assert (report["actions"], report["changed"], report["since"]) == (10, 3, "10h")
    everything = json.loads(run("replay", candidate, "--since", "all", "--format", "json",
                                "--data", str(data_dir)).output)  # fmt: skip
    assert everything["actions"] == 40 and everything["since"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--since", "soon"], "--since: 'soon' is not a duration"),
        (["--since", "0s"], "--since: '0s' is not a positive duration"),
        (["--since", "2"], "--since: '2' has no unit: write it with one, e.g. 2d (days)"),
        # Used to overflow datetime arithmetic: a traceback and exit 1.
        (
            ["--since", "999999999d"],
            "--since: '999999999d' is longer than the maximum 36500d (use 'all' for no limit)",
        ),
        (["--since", "9" * 400 + "m"], "is longer than the maximum 36500d"),
        (
            ["--data", "/nonexistent/tooltrail"],
            "data directory /nonexistent/tooltrail does not exist",
        ),
    ],
)
def test_replay_bad_input_exits_2(options: list[str], message: str, data_dir: Path) -> None:
    args = ["replay", str(EXAMPLES / "policy-git.yaml")]
    if "--data" not in options:
        args += ["--data", str(data_dir)]
    result = run(*args, *options)
    assert result.exit_code == 2
    assert message in result.output


def test_replay_bad_policy_exits_2(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    shutil.copy(EXAMPLES / "policy-git.yaml", bad)
    bad.write_text(bad.read_text(encoding="utf-8").replace("decision: DENY", "decision: NOPE", 1))
    result = run("replay", str(bad), "--data", str(data_dir))
    assert result.exit_code == 2
    assert "rule 'no-reset'" in result.output and "'NOPE' is not one of" in result.output


def test_help_texts_end_with_an_example() -> None:
    for command in ("check", "explain", "replay"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output and f"tooltrail policy {command}" in result.output


def test_long_replays_draw_a_progress_bar_on_stderr(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tooltrail.policy.cli as cli_module

    policy = str(EXAMPLES / "policy-git.yaml")
    quiet = CliRunner().invoke(policy_cli, ["replay", policy, "--data", str(data_dir)])
    assert "replaying" not in quiet.stderr  # short replays stay quiet
    monkeypatch.setattr(cli_module, "PROGRESS_MIN_GROUPS", 1)
    result = CliRunner().invoke(
        policy_cli, ["replay", policy, "--data", str(data_dir), "--format", "json"]
    )
    assert result.exit_code == 0
    assert "replaying" in result.stderr
    assert json.loads(result.stdout)["actions"] == 40  # stdout stays clean JSON


def test_replay_over_unreadable_landed_data_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "data" / "spans" / "date=2026-01-01" / "w-000001.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not parquet")
    result = run("replay", str(EXAMPLES / "policy-git.yaml"), "--data", str(tmp_path / "data"))
    assert result.exit_code == 2
    assert "cannot read the landed spans" in result.output
    assert "w-000001.parquet" in result.output
