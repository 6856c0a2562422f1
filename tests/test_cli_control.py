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
    return result.exit_code, result.output


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
    assert _run(tmp_path, "pause", "s1", "--by", "ops")[1].strip() == "session s1 paused by ops"
    code, out = _run(tmp_path, "pause", "s1", "--by", "ops")
    assert code == 2 and "already paused" in out
    assert _run(tmp_path, "resume", "s1", "--by", "ops")[0] == 0
    assert _run(tmp_path, "cancel", "s1", "--by", "sec", "--reason", "runaway")[0] == 0
    code, out = _run(tmp_path, "resume", "s1", "--by", "ops")
    assert code == 2 and "canceled" in out
    with ControlStore(tmp_path) as store:
        assert [e.action for e in store.control_history("s1")] == ["pause", "resume", "cancel"]


def test_by_is_required(tmp_path: Path) -> None:
    code, out = _run(tmp_path, "approve", "x")
    assert code == 2 and "--by" in out
