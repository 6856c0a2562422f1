"""Approvals and session control across real processes, on the real store.

An agent subprocess (tests/agents/approval_agent.py) calls the real mcp-server-git through
an instrumented ``ClientSession``, enforcing a policy that holds commits and some branches
for approval. People act through the real ``tooltrail`` command line, run as separate
processes, on the same ``control.sqlite``. Effects are checked in the git repository; the
record in the store, the landed spans and the ``approvals`` view.

Synchronisation is by polling for a condition with a deadline; the few short sleeps only
check that something does *not* happen while a call is held.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import approval_support as support
import pyarrow.parquet as pq
import pytest
from git_support import clean_env, git, init_repo

from tooltrail import analytics
from tooltrail.control import ApprovalRecord, ControlStore

pytestmark = pytest.mark.mcp

AGENT = Path(__file__).parent / "agents" / "approval_agent.py"
DEADLINE_S = 60.0
HOLD_CHECK_S = 0.5
POLICY = """
version: 1
default: ALLOW
targets:
  - tools: ["git_*"]
    repo: "{repo_path}"
    branch: "{branch_name}"
blast_radius:
  - {tools: ["git_commit"], radius: High}
rules:
  - id: quick-deny
    when: {tool: git_commit, args: {message: "quick-deny*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 1s, on_timeout: DENY}
  - id: quick-allow
    when: {tool: git_commit, args: {message: "quick-allow*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 1s, on_timeout: ALLOW}
  - id: short-lived
    when: {tool: git_commit, args: {message: "short-lived*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 3s}
  - id: commits-need-review
    when: {tool: git_commit}
    decision: REQUIRE_APPROVAL
    reason: Commits need a human
    approval: {timeout: 60s, on_timeout: DENY, approvers: ["alice", "bob"]}
  - id: held-branches
    when: {tool: git_create_branch, args: {branch_name: "held-*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 60s}
"""


def tooltrail(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a separate process: ``tooltrail CMD --data DATA ARGS``."""
    return support.run_cli(data, *args, timeout=DEADLINE_S)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    return support.wait_for(condition, what, timeout)


def pending(data: Path, n: int = 1) -> list[ApprovalRecord]:
    """Wait until ``n`` requests are pending; return them (oldest first)."""
    return support.pending(data, n, DEADLINE_S)


class Agent:
    """The agent subprocess: send it calls, read their results."""

    def __init__(self, data: Path, policy: Path, repo: Path, session_id: str, log: Path):
        self.session_id = session_id
        self.log = log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT), str(data), str(policy), str(repo), session_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=clean_env(),
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._results: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(DEADLINE_S)
        assert first == {"ready": True}, self.stderr()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))

    def _next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text()

    def call(self, call_id: str, tool: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": call_id, "tool": tool, "args": args}) + "\n")
        self.proc.stdin.flush()

    def result(self, call_id: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while call_id not in self._results:
            line = self._next(max(deadline - time.monotonic(), 0.0))
            if line is None:
                raise AssertionError(f"no result for {call_id} in {timeout}s:\n{self.stderr()}")
            self._results[line["id"]] = line
        return self._results[call_id]

    def finished(self, call_id: str, within: float) -> bool:
        """Whether ``call_id`` finishes within ``within`` seconds (False: still held)."""
        try:
            self.result(call_id, timeout=within)
        except AssertionError:
            return False
        return True

    def close(self) -> None:
        """End of input: the agent finishes its calls, flushes its spans and exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=DEADLINE_S) == 0, self.stderr()
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE_S)
        self._stderr.close()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def start_agent(tmp_path: Path, data: Path, repo: Path) -> Iterator[Callable[[str], Agent]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    agents: list[Agent] = []

    def start(session_id: str) -> Agent:
        agent = Agent(data, policy, repo, session_id, tmp_path / f"agent-{len(agents)}.log")
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.kill()


def stage(repo: Path, name: str) -> str:
    """Stage a new file for the next commit; returns HEAD before it."""
    (repo / name).write_text(f"{name}\n")
    git(repo, "add", name)
    return git(repo, "rev-parse", "HEAD")


def body(result: dict[str, Any]) -> dict[str, Any]:
    """The structured denial an agent receives (the text of an isError result)."""
    assert result["is_error"], result
    parsed: dict[str, Any] = json.loads(result["text"])
    return parsed


def tool_rows(data: Path) -> list[dict[str, Any]]:
    rows = pq.read_table(data / "spans").to_pylist()
    return sorted((r for r in rows if r["span_type"] == "tool"), key=lambda r: r["sequence"])


# --- approve / deny from another process --------------------------------------------------


def test_approve_from_the_cli_lets_the_held_commit_happen(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-approve")
    head = stage(repo, "feature.txt")
    agent.call("c1", "git_commit", repo_path=str(repo), message="add feature")
    (req,) = pending(data)
    assert (req.tool_name, req.session_id, req.agent_name, req.policy_rule) == (
        "git_commit",
        "s-approve",
        "approval-agent",
        "commits-need-review",
    )
    assert json.loads(req.arguments) == {"repo_path": str(repo), "message": "add feature"}
    assert req.arguments_intact() and req.blast_radius == "High"
    assert req.reason == "Commits need a human"
    assert req.expires_at - req.requested_at == pytest.approx(60.0)
    # Held: nothing committed, and the request is listed for people to act on.
    assert not agent.finished("c1", within=HOLD_CHECK_S)
    assert git(repo, "rev-parse", "HEAD") == head
    listed = tooltrail(data, "approvals", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [r["approval_id"] for r in json.loads(listed.stdout)] == [req.approval_id]
    # The approvals view shows it pending before its span has ended (or landed).
    view = analytics.approval_history(data)
    assert view["approval_id"].to_list() == [req.approval_id]
    assert view["outcome"].to_list() == ["pending"]

    out = tooltrail(data, "approve", req.approval_id, "--by", "alice", "--reason", "ship it")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{req.approval_id} approved by alice"
    result = agent.result("c1")
    assert not result["is_error"], result
    assert git(repo, "log", "-1", "--format=%s") == "add feature"
    agent.close()

    (row,) = tool_rows(data)
    assert (row["decision"], row["policy_rule"]) == ("REQUIRE_APPROVAL", "commits-need-review")
    assert (row["approval_id"], row["approval_status"], row["approval_decided_by"]) == (
        req.approval_id,
        "approved",
        "alice",
    )
    assert row["approval_wait_ms"] > 0
    assert (row["trace_id"], row["span_id"]) == (req.trace_id, req.span_id)
    view = analytics.approval_history(data)
    assert view.select("outcome", "decided_by", "reason").rows() == [
        ("approved", "alice", "ship it")
    ]


def test_deny_from_the_cli_means_no_commit_and_says_who_and_why(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-deny")
    head = stage(repo, "risky.txt")
    agent.call("c1", "git_commit", repo_path=str(repo), message="risky change")
    (req,) = pending(data)
    out = tooltrail(data, "deny", req.approval_id, "--by", "bob", "--reason", "code freeze")
    assert out.returncode == 0, out.stderr
    denial = body(agent.result("c1"))
    assert denial["error"] == "tool_call_denied"
    assert (denial["decision"], denial["rule"]) == ("REQUIRE_APPROVAL", "commits-need-review")
    assert denial["reason"] == "approval denied by bob: code freeze"
    assert denial["approval"] == {"status": "denied", "id": req.approval_id, "decided_by": "bob"}
    assert git(repo, "rev-parse", "HEAD") == head
    agent.close()
    (row,) = tool_rows(data)
    assert (row["approval_status"], row["approval_decided_by"], row["error_type"]) == (
        "denied",
        "bob",
        "tool_call_denied",
    )


@pytest.mark.parametrize(("on_timeout", "commits"), [("deny", False), ("allow", True)])
def test_a_one_second_timeout_applies_on_timeout(
    start_agent: Callable[[str], Agent], data: Path, repo: Path, on_timeout: str, commits: bool
) -> None:
    agent = start_agent(f"s-timeout-{on_timeout}")
    head = stage(repo, "late.txt")
    message = f"quick-{on_timeout}: nobody answers"
    agent.call("c1", "git_commit", repo_path=str(repo), message=message)
    result = agent.result("c1")
    with ControlStore(data) as store:
        (rec,) = store.list_approvals("all")
    assert (rec.status, rec.decided_by, rec.on_timeout) == ("expired", None, on_timeout.upper())
    assert rec.expires_at - rec.requested_at == pytest.approx(1.0)
    if commits:
        assert not result["is_error"], result
        assert git(repo, "log", "-1", "--format=%s") == message
    else:
        denial = body(result)
        assert denial["reason"] == "approval request expired without a decision (on_timeout: DENY)"
        assert denial["approval"]["status"] == "expired"
        assert git(repo, "rev-parse", "HEAD") == head


def test_arguments_changed_in_the_store_after_the_request_are_refused(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-tamper")
    head = stage(repo, "payload.txt")
    agent.call("c1", "git_commit", repo_path=str(repo), message="exfiltrate keys")
    (req,) = pending(data)
    # Someone with write access to the store makes the request look harmless, hash and all.
    shown = {"repo_path": str(repo), "message": "fix typo"}
    support.forge_request(data, req.approval_id, shown)
    listed = json.loads(tooltrail(data, "approvals", "--format", "json").stdout)
    assert [r["approval_id"] for r in listed] == [req.approval_id]
    # The view flags the edit, and the approver's command refuses to decide it...
    assert listed[0]["verified"] is False and "arguments" in listed[0]["tampered"]
    refused = tooltrail(data, "approve", req.approval_id, "--by", "alice")
    assert refused.returncode == 2 and "edited" in refused.stderr
    # ... and a forger who marks it approved as well gets nothing run.
    support.set_status(data, req.approval_id, "approved", by="alice")
    denial = body(agent.result("c1"))
    assert "changed in the control store after it was filed" in denial["reason"]
    assert denial["approval"]["status"] == "approved"
    assert git(repo, "rev-parse", "HEAD") == head


@pytest.mark.parametrize("first", ["held-a", "held-b"])
def test_two_pending_requests_of_one_session_decided_in_either_order(
    start_agent: Callable[[str], Agent], data: Path, repo: Path, first: str
) -> None:
    agent = start_agent("s-two")
    for branch in ("held-a", "held-b"):
        agent.call(branch, "git_create_branch", repo_path=str(repo), branch_name=branch)
    records = pending(data, 2)
    assert {r.session_id for r in records} == {"s-two"}
    by_branch = {json.loads(r.arguments)["branch_name"]: r.approval_id for r in records}
    second = "held-b" if first == "held-a" else "held-a"
    verdict = {"held-a": "approve", "held-b": "deny"}
    out = tooltrail(data, verdict[first], by_branch[first], "--by", "carol")
    assert out.returncode == 0, out.stderr
    # Deciding one releases exactly that one; the other is still held.
    agent.result(first)
    assert not agent.finished(second, within=HOLD_CHECK_S)
    out = tooltrail(data, verdict[second], by_branch[second], "--by", "dave")
    assert out.returncode == 0, out.stderr
    assert not agent.result("held-a")["is_error"]
    assert body(agent.result("held-b"))["approval"]["id"] == by_branch["held-b"]
    branches = set(git(repo, "branch", "--format=%(refname:short)").split())
    assert "held-a" in branches and "held-b" not in branches


def test_an_approver_not_in_the_list_and_a_second_decision_are_refused(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-approvers")
    head = stage(repo, "reviewed.txt")
    agent.call("c1", "git_commit", repo_path=str(repo), message="reviewed change")
    (req,) = pending(data)
    out = tooltrail(data, "approve", req.approval_id, "--by", "mallory")
    assert out.returncode == 2
    assert f"'mallory' may not decide approval {req.approval_id}" in out.stderr + out.stdout
    assert "alice, bob" in out.stderr + out.stdout
    # Still pending, and the agent still waits.
    with ControlStore(data) as store:
        assert store.get(req.approval_id).status == "pending"
    assert not agent.finished("c1", within=HOLD_CHECK_S)
    assert git(repo, "rev-parse", "HEAD") == head

    assert tooltrail(data, "approve", req.approval_id, "--by", "alice").returncode == 0
    assert not agent.result("c1")["is_error"]
    again = tooltrail(data, "deny", req.approval_id, "--by", "bob")
    assert again.returncode == 2
    assert "already approved by alice" in again.stderr + again.stdout
    with ControlStore(data) as store:
        rec = store.get(req.approval_id)
    assert (rec.status, rec.decided_by) == ("approved", "alice")
    assert git(repo, "log", "-1", "--format=%s") == "reviewed change"


def _refused_as_gone(data: Path, approval_id: str) -> str:
    """``tooltrail approve`` on a request nobody waits on: exit 2, saying why; the store
    keeps ``abandoned``."""
    out = tooltrail(data, "approve", approval_id, "--by", "alice")
    assert out.returncode == 2, out
    assert "abandoned" in out.stderr and "never ran" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    with ControlStore(data) as store:
        assert store.get(approval_id).status == "abandoned"
    return out.stderr


def test_a_request_whose_agent_died_is_abandoned_and_cannot_be_approved(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-dead")
    head = stage(repo, "orphan.txt")
    agent.call("c1", "git_commit", repo_path=str(repo), message="agent dies while held")
    (req,) = pending(data)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(timeout=DEADLINE_S)
    # Its process is gone (this host sees it at once; elsewhere its lease runs out).
    listed = json.loads(tooltrail(data, "approvals", "--format", "json").stdout)
    assert listed == []  # nothing left to decide
    stderr = _refused_as_gone(data, req.approval_id)
    assert "has exited" in stderr
    out = tooltrail(data, "approvals", "--status", "abandoned", "--format", "json")
    (row,) = json.loads(out.stdout)
    assert (row["approval_id"], row["status"], row["decided_by"]) == (
        req.approval_id,
        "abandoned",
        None,
    )
    assert "has exited" in row["decision_reason"]
    # The views tell the same story (the killed agent's span never landed).
    view = analytics.approval_history(data, "all")
    assert view.select("approval_id", "outcome").rows() == [(req.approval_id, "abandoned")]
    assert git(repo, "rev-parse", "HEAD") == head  # the commit never happened


def test_an_agent_that_gives_up_abandons_its_request_in_store_span_and_view(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-gives-up")
    head = stage(repo, "impatient.txt")
    agent.proc.stdin.write(  # type: ignore[union-attr]
        json.dumps(
            {
                "id": "c1",
                "tool": "git_commit",
                "args": {"repo_path": str(repo), "message": "cannot wait long"},
                "give_up_after": 1.5,
            }
        )
        + "\n"
    )
    agent.proc.stdin.flush()  # type: ignore[union-attr]
    (req,) = pending(data)
    assert agent.result("c1") == {"id": "c1", "gave_up": True}
    with ControlStore(data) as store:  # at once: the agent said it left
        record = store.get(req.approval_id)
    assert record.status == "abandoned" and "cancelled" in (record.decision_reason or "")
    _refused_as_gone(data, req.approval_id)
    agent.close()  # the agent lives on and lands its spans
    (span,) = [r for r in tool_rows(data) if r["approval_id"] == req.approval_id]
    assert span["approval_status"] == "abandoned"
    view = analytics.approval_history(data, "abandoned")
    assert view.select("approval_id", "outcome", "landed").rows() == [
        (req.approval_id, "abandoned", True)
    ]
    assert git(repo, "rev-parse", "HEAD") == head


# --- session control ----------------------------------------------------------------------


def branches(repo: Path) -> set[str]:
    return set(git(repo, "branch", "--format=%(refname:short)").split())


def test_pause_holds_the_next_call_until_resume(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-pause")
    agent.call("before", "git_create_branch", repo_path=str(repo), branch_name="before-pause")
    assert not agent.result("before")["is_error"]
    # An operator pauses a session they can see: its first action has landed (a session
    # nothing has reported yet needs --force, tested in test_cli_control).
    wait_for(lambda: analytics.session(data, "s-pause") is not None, "the session to land")
    out = tooltrail(data, "pause", "s-pause", "--by", "ops")
    assert out.returncode == 0 and out.stdout.strip() == "session s-pause paused by ops"
    agent.call("during", "git_create_branch", repo_path=str(repo), branch_name="during-pause")
    assert not agent.finished("during", within=HOLD_CHECK_S * 2)
    assert "during-pause" not in branches(repo)
    assert tooltrail(data, "resume", "s-pause", "--by", "ops").returncode == 0
    assert not agent.result("during")["is_error"]
    assert "during-pause" in branches(repo)
    agent.close()
    statuses = analytics.sessions(data).filter(session_id="s-pause")["status"].to_list()
    assert statuses == ["completed"]  # the agent left its session: it recorded the end
    with ControlStore(data) as store:
        assert [(e.action, e.actor) for e in store.control_history("s-pause")] == [
            ("pause", "ops"),
            ("resume", "ops"),
        ]


def test_cancel_denies_every_later_call_and_cannot_be_undone(
    start_agent: Callable[[str], Agent], data: Path, repo: Path
) -> None:
    agent = start_agent("s-cancel")
    # One call is held for approval when the session is canceled.
    agent.call("held", "git_create_branch", repo_path=str(repo), branch_name="held-x")
    (req,) = pending(data)
    out = tooltrail(data, "cancel", "s-cancel", "--by", "sec", "--reason", "runaway")
    assert out.returncode == 0, out.stderr
    held = body(agent.result("held"))
    assert held["reason"] == "approval denied by sec: session canceled: runaway"
    for i in range(2):
        agent.call(f"later{i}", "git_create_branch", repo_path=str(repo), branch_name=f"l{i}")
        denial = body(agent.result(f"later{i}"))
        assert (denial["rule"], denial["reason"]) == ("session-canceled", "session canceled")
    assert not {"held-x", "l0", "l1"} & branches(repo)
    refused = tooltrail(data, "resume", "s-cancel", "--by", "ops")
    assert refused.returncode == 2 and "canceled" in refused.stderr + refused.stdout
    agent.close()
    rows = tool_rows(data)
    assert [(r["decision"], r["policy_rule"]) for r in rows[1:]] == [
        ("DENY", "session-canceled"),
        ("DENY", "session-canceled"),
    ]
    (status,) = analytics.sessions(data).filter(session_id="s-cancel")["status"].to_list()
    assert status == "canceled"
    with ControlStore(data) as store:
        assert store.get(req.approval_id).decided_by == "sec"
