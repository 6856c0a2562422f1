"""approvals / approve / deny / pause / resume / cancel through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tooltrail.cli import cli
from tooltrail.control import ApprovalRequest, ControlStore


def _file(tmp_path: Path, **kw: object) -> str:
    with ControlStore(tmp_path) as store:
        req = ApprovalRequest(
            tool_name="git_commit",
            arguments={"repo_path": "/r", "message": "m"},
            session_id="s1",
            agent_name="release-bot",
            policy_rule="commit-main",
            **kw,  # type: ignore[arg-type]
        )
        return store.file_request(req).approval_id


def _run(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args[:1], "--data", str(tmp_path), *args[1:]])
    # Standard output when it worked (the single-user notice goes to standard error, so
    # scripts parse what they did before); the error (on standard error) when it did not.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_list_approve_and_refuse_second_decision(tmp_path: Path) -> None:
    first, second = _file(tmp_path), _file(tmp_path)
    code, out = _run(tmp_path, "approvals", "--format", "json")
    assert code == 0
    assert [r["approval_id"] for r in json.loads(out)] == [first, second]
    code, out = _run(tmp_path, "approve", first, "--by", "alice", "--reason", "ok")
    assert code == 0 and f"{first} approved by alice" in out
    code, out = _run(tmp_path, "deny", second, "--by", "bob")
    assert code == 0 and "denied by bob" in out
    code, out = _run(tmp_path, "deny", first, "--by", "bob")
    assert code == 2 and "already approved by alice" in out
    code, out = _run(tmp_path, "approvals", "--format", "json")
    assert json.loads(out) == []
    code, out = _run(tmp_path, "approvals", "--status", "all", "--format", "csv")
    assert code == 0 and len(out.strip().splitlines()) == 3  # header + two rows
    with ControlStore(tmp_path) as store:
        assert store.get(first).decision_reason == "ok"


def test_unknown_id_and_not_an_approver_exit_2(tmp_path: Path) -> None:
    apr = _file(tmp_path, approvers=("alice",))
    code, out = _run(tmp_path, "approve", "apr-missing", "--by", "alice")
    assert code == 2 and "no approval request 'apr-missing'" in out
    code, out = _run(tmp_path, "approve", apr, "--by", "mallory")
    assert code == 2 and "'mallory' may not decide" in out
    code, out = _run(tmp_path, "approvals")
    assert code == 0 and apr in out  # still pending


def test_session_control_commands(tmp_path: Path) -> None:
    _file(tmp_path)  # a held call of session s1: the store knows the session
    assert _run(tmp_path, "pause", "s1", "--by", "ops")[1].strip() == "session s1 paused by ops"
    code, out = _run(tmp_path, "pause", "s1", "--by", "ops")
    assert code == 2 and "already paused" in out
    code, out = _run(tmp_path, "resume", "s1", "--by", "ops")
    assert code == 0 and out.strip() == "session s1 resumed by ops"
    code, out = _run(tmp_path, "cancel", "s1", "--by", "sec", "--reason", "runaway")
    assert code == 0 and out.strip() == "session s1 canceled by sec"
    code, out = _run(tmp_path, "resume", "s1", "--by", "ops")
    assert code == 2 and "is canceled; it cannot be resumed" in out
    code, out = _run(tmp_path, "cancel", "s1", "--by", "ops")
    assert code == 2 and "it cannot be canceled" in out
    with ControlStore(tmp_path) as store:
        assert [e.action for e in store.control_history("s1")] == ["pause", "resume", "cancel"]


def test_by_is_required(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "approve", "x")
    assert code == 2 and "--by" in out


def test_controlling_an_unknown_session_is_refused_unless_forced(tmp_path: Path) -> None:
    # A mistyped id must not read as a stopped agent while the real session runs on.
    for action in ("pause", "cancel", "resume"):
        code, out = _run(tmp_path, action, "3f2a9c6e", "--by", "ops")
        assert code == 2 and "no session '3f2a9c6e'" in out and "--force" in out
    # Refused, they left nothing behind: no store appears in a directory no agent uses.
    assert not (tmp_path / "control.sqlite").exists()
    code, out = _run(tmp_path, "pause", "not-started-yet", "--by", "ops", "--force")
    assert code == 0 and out.strip() == "session not-started-yet paused by ops"
    # Known from then on (its control row), so no --force to resume it.
    assert _run(tmp_path, "resume", "not-started-yet", "--by", "ops")[0] == 0


def test_a_session_known_only_from_landed_actions_can_be_paused(tmp_path: Path) -> None:
    from tooltrail.collector.writer import ParquetSpanWriter
    from tooltrail.schema import empty_row

    row = empty_row()
    row.update(
        trace_id="t1", span_id="a1", span_type="tool", tool_name="git_status", session_id="live"
    )
    ParquetSpanWriter(tmp_path).write([row])
    code, out = _run(tmp_path, "pause", "live", "--by", "ops", "--reason", "looping")
    assert code == 0 and out.strip() == "session live paused by ops"
    assert _run(tmp_path, "resume", "live", "--by", "dana")[0] == 0
    assert _run(tmp_path, "cancel", "live", "--by", "sec", "--reason", "runaway")[0] == 0
    # Who paused, resumed and canceled it, and why, is part of the session's record.
    code, out = _run(tmp_path, "show", "live", "--format", "json")
    assert code == 0, out
    events = json.loads(out)["control_events"]
    assert [(e["action"], e["changed_by"], e["reason"]) for e in events] == [
        ("pause", "ops", "looping"),
        ("resume", "dana", None),
        ("cancel", "sec", "runaway"),
    ]
    code, out = _run(tmp_path, "show", "live")
    assert code == 0 and "runaway" in out and "dana" in out
    code, out = _run(
        tmp_path, "query", "SELECT count(*) AS n FROM control_events", "--format", "json"
    )
    assert code == 0 and json.loads(out) == [{"n": 3}]


def test_commands_refuse_a_data_directory_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    for args in (
        ["approvals"],
        ["approve", "apr-1", "--by", "a"],
        ["pause", "s1", "--by", "a", "--force"],
        ["sessions"],
        ["show", "s1"],
        ["query", "SELECT 1"],
        ["compact"],
    ):
        code, out = _run(missing, *args)
        assert code == 2, (args, out)
        assert f"data directory {missing} does not exist" in out, args
    assert not missing.exists()  # nothing created: no control store an agent never reads


def test_reading_or_refusing_creates_no_control_store(tmp_path: Path) -> None:
    # --data pointed at the wrong (existing) directory, say a git checkout.
    assert _run(tmp_path, "approvals")[0] == 0
    for decide in ("approve", "deny"):
        code, out = _run(tmp_path, decide, "apr-typo", "--by", "alice")
        assert code == 2 and "no approval request 'apr-typo'" in out and "control store" in out
    assert list(tmp_path.iterdir()) == []
