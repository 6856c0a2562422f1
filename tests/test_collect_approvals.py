"""Approvals over HTTP: a remote agent's held call waits until a decision reaches the collector.

The agent process has its own data directory (it cannot reach the collector's
``control.sqlite``); its only way to the approvers is ``HttpApprovalBroker``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, request, wait_until
from loop_support import Ticker

from tooltrail.control import ControlStore, arguments_hash
from tooltrail.instrumentation.broker import ApprovalRequest
from tooltrail.instrumentation.http_broker import UNREACHABLE, HttpApprovalBroker
from tooltrail.policy.model import ApprovalSettings

TOKEN = "agent-token-0123456789"
DECIDER = "approver-token-0123456789"
AGENT_AUTH = {"Authorization": f"Bearer {TOKEN}"}
DECIDER_AUTH = {"Authorization": f"Bearer {DECIDER}"}

POLICY = """\
version: 1
default: ALLOW
rules:
  - id: commit-needs-approval
    when: {tool: git_commit}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 60s, on_timeout: DENY, approvers: ["alice"]}
"""

AGENT = """\
import json, sys
import tooltrail.instrumentation as tt
from tooltrail.instrumentation.http_broker import HttpApprovalBroker

url, token, data, policy = sys.argv[1:5]
tt.configure(data_dir=data, policy=policy, enforce=True, agent_name="remote-bot",
             broker=HttpApprovalBroker(url, token, poll_wait_s=2), session_control=False)

@tt.tool
def git_commit(repo_path: str, message: str) -> str:
    return f"committed {message!r} in {repo_path}"

try:
    print(json.dumps({"result": git_commit("/srv/app", "ship it")}))
except tt.ToolCallDenied as e:
    print(json.dumps({"denied": str(e)}))
"""


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    data = tmp_path_factory.mktemp("approvals") / "data"
    with CollectorProcess(data, "--token", TOKEN, "--decision-token", DECIDER) as proc:
        yield proc


def _json(
    url: str, method: str, path: str, body: Any = None, auth: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **(auth if auth is not None else AGENT_AUTH)}
    status, _, raw = request(url, method, path, data, headers)
    return status, json.loads(raw) if raw else None


def _pending(url: str) -> list[dict[str, Any]]:
    status, doc = _json(url, "GET", "/v1/approvals?status=pending")
    assert status == 200
    return list(doc["approvals"])


def _decide(
    url: str, approval_id: str, outcome: str, by: str, auth: dict[str, str] = DECIDER_AUTH
) -> tuple[int, Any]:
    return _json(
        url,
        "POST",
        f"/v1/approvals/{approval_id}/decision",
        {"outcome": outcome, "by": by, "reason": "checked"},
        auth,
    )


def _start_agent(tmp_path: Path, url: str) -> subprocess.Popen[str]:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "policy.yaml").write_text(POLICY)
    return subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "agent.py"),
            url,
            TOKEN,
            str(tmp_path / "agent-data"),
            str(tmp_path / "policy.yaml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_remote_agent_blocks_until_approved_over_http(
    tmp_path: Path, col: CollectorProcess
) -> None:
    agent = _start_agent(tmp_path, col.url)
    try:
        wait_until(
            lambda: any(p["tool_name"] == "git_commit" for p in _pending(col.url)),
            timeout=30,
            what="the held call filed",
        )
        (held,) = [p for p in _pending(col.url) if p["tool_name"] == "git_commit"]
        assert held["arguments"] == {"repo_path": "/srv/app", "message": "ship it"}
        assert held["arguments_hash"] == arguments_hash(held["arguments"])
        assert held["approvers"] == ["alice"] and held["agent_name"] == "remote-bot"
        time.sleep(1.0)
        assert agent.poll() is None, "the agent must wait for the decision"
        assert _decide(col.url, held["approval_id"], "approved", "mallory")[0] == 403
        assert agent.poll() is None
        status, record = _decide(col.url, held["approval_id"], "approved", "alice")
        assert status == 200 and record["status"] == "approved"
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert agent.returncode == 0, err
    assert json.loads(out) == {"result": "committed 'ship it' in /srv/app"}


def test_remote_agent_denied_over_http(tmp_path: Path, col: CollectorProcess) -> None:
    agent = _start_agent(tmp_path, col.url)
    try:
        wait_until(lambda: bool(_pending(col.url)), timeout=30, what="the held call filed")
        held = _pending(col.url)[0]
        assert _decide(col.url, held["approval_id"], "denied", "alice")[0] == 200
        out, _ = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert "denied" in json.loads(out)


def test_decision_rules_are_the_local_stores(col: CollectorProcess) -> None:
    args = {"repo_path": "/srv/app"}
    body = {
        "tool_name": "git_reset",
        "arguments": args,
        "arguments_hash": arguments_hash(args),
        "approvers": ["alice"],
        "timeout_s": 60,
    }
    status, record = _json(col.url, "POST", "/v1/approvals", body)
    assert status == 201 and record["status"] == "pending"
    aid = record["approval_id"]
    # The agent's token cannot decide: approvers hold their own token.
    assert _decide(col.url, aid, "approved", "alice", AGENT_AUTH)[0] == 401
    assert _decide(col.url, aid, "approved", "alice", {})[0] == 401
    assert _decide(col.url, aid, "maybe", "alice")[0] == 400
    assert _decide(col.url, aid, "approved", "bob")[0] == 403
    assert _decide(col.url, "apr-nope", "approved", "alice")[0] == 404
    assert _decide(col.url, aid, "approved", "alice")[0] == 200
    status, doc = _decide(col.url, aid, "denied", "alice")
    assert status == 409 and "never overwritten" in doc["message"]
    assert _json(col.url, "GET", f"/v1/approvals/{aid}")[1]["status"] == "approved"
    assert _json(col.url, "GET", "/v1/approvals/apr-nope")[0] == 404
    assert _json(col.url, "GET", f"/v1/approvals/{aid}", auth={})[0] == 401


def test_filing_checks_the_arguments_hash(col: CollectorProcess) -> None:
    body = {
        "tool_name": "git_push",
        "arguments": {"force": True},
        "arguments_hash": arguments_hash({"force": False}),
    }
    status, doc = _json(col.url, "POST", "/v1/approvals", body)
    assert status == 400 and "arguments_hash" in doc["message"]
    status, doc = _json(col.url, "POST", "/v1/approvals", {"arguments": {}})
    assert status == 400 and "tool_name" in doc["message"]


def _request(timeout_s: float, on_timeout: str = "DENY") -> ApprovalRequest:
    args = {"repo_path": "/srv/app", "branch_name": "main"}
    return ApprovalRequest(
        tool="git_checkout",
        arguments=args,
        shown_arguments=args,
        session_id="s-1",
        agent_name="bot",
        server="git",
        trace_id=None,
        span_id=None,
        rule="r1",
        reason="needs a human",
        blast_radius="High",
        approval=ApprovalSettings(timeout_s=timeout_s, on_timeout=on_timeout, approvers=("*",)),
    )


@pytest.mark.parametrize("on_timeout", ["DENY", "ALLOW"])
def test_timeout_applies_on_timeout(col: CollectorProcess, on_timeout: str) -> None:
    broker = HttpApprovalBroker(col.url, TOKEN, poll_wait_s=5)
    req = _request(0.5, on_timeout)
    outcome = broker.request(req)
    assert outcome.status == "expired"
    assert outcome.proceeds(req) is (on_timeout == "ALLOW")


def test_arequest_does_not_block_the_event_loop(col: CollectorProcess) -> None:
    broker = HttpApprovalBroker(col.url, TOKEN, poll_wait_s=5)

    def approve_soon() -> None:
        wait_until(lambda: any(p["policy_rule"] == "r1-async" for p in _pending(col.url)))
        (p,) = [p for p in _pending(col.url) if p["policy_rule"] == "r1-async"]
        time.sleep(0.5)
        _decide(col.url, p["approval_id"], "approved", "carol")

    async def main() -> tuple[Any, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        task = asyncio.create_task(ticker())
        req = dataclasses.replace(_request(30), rule="r1-async")
        outcome = await broker.arequest(req)
        task.cancel()
        return outcome, ticks

    decider = threading.Thread(target=approve_soon)
    decider.start()
    outcome, ticks = asyncio.run(main())
    decider.join()
    broker.close()
    assert outcome.status == "approved" and outcome.decided_by == "carol"
    assert outcome.wait_ms >= 400
    assert ticks >= 15, "the loop kept running while the call was held"


def test_unreachable_collector_fails_closed() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = HttpApprovalBroker(f"http://127.0.0.1:{port}", TOKEN).request(_request(30, "ALLOW"))
    assert outcome.status == "denied" and outcome.decided_by == UNREACHABLE


def test_decisions_need_a_token(tmp_path: Path) -> None:
    with CollectorProcess(tmp_path / "data") as open_col:
        status, record = _json(
            open_col.url,
            "POST",
            "/v1/approvals",
            {"tool_name": "git_reset", "arguments": {}},
            auth={},
        )
        assert status == 201
        status, doc = _decide(open_col.url, record["approval_id"], "approved", "x", {})
        assert status == 403 and "--token" in doc["message"]


def test_request_changed_on_the_collector_is_refused(col: CollectorProcess) -> None:
    """Approved, but not what was filed (the row was edited): the call must not run."""
    import sqlite3

    broker = HttpApprovalBroker(col.url, TOKEN, poll_wait_s=2)
    req = dataclasses.replace(_request(30), rule="r1-tampered")
    result: list[Any] = []
    waiter = threading.Thread(target=lambda: result.append(broker.request(req)))
    waiter.start()
    try:
        wait_until(lambda: any(p["policy_rule"] == "r1-tampered" for p in _pending(col.url)))
        (held,) = [p for p in _pending(col.url) if p["policy_rule"] == "r1-tampered"]
        assert held["run_hash"] == req.arguments_hash
        with sqlite3.connect(col.data_dir / "control.sqlite") as con:
            con.execute(
                "UPDATE approvals SET arguments = ? WHERE approval_id = ?",
                (
                    json.dumps({"repo_path": "/srv/other", "branch_name": "main"}),
                    held["approval_id"],
                ),
            )
        assert _decide(col.url, held["approval_id"], "approved", "dave")[0] == 200
    finally:
        waiter.join(timeout=30)
    (outcome,) = result
    assert outcome.status == "approved"
    assert outcome.refusal is not None and "changed on the collector" in outcome.refusal
    assert not outcome.proceeds(req)


# --- session control over HTTP ----------------------------------------------------------


def _control(
    url: str,
    session: str,
    action: str,
    auth: dict[str, str] = DECIDER_AUTH,
    **extra: Any,
) -> Any:
    body = {"action": action, "by": "ops", **extra}
    return _json(url, "POST", f"/v1/sessions/{session}/control", body, auth)


def test_session_control_over_http(col: CollectorProcess) -> None:
    """The store's transitions over HTTP; a long poll returns when a paused session resumes."""
    session = "remote-session-1"
    status, doc = _json(col.url, "GET", f"/v1/sessions/{session}/control")
    assert (status, doc["state"]) == (200, "running")
    # No agent has reported it yet: a typo must not be paused (or canceled for good) while
    # the real session runs on, unless the operator insists, as with the CLI's --force.
    for action in ("pause", "cancel"):
        status, doc = _control(col.url, session, action)
        assert status == 404 and f"no session {session!r}" in doc["message"]
    assert _control(col.url, session, "pause", force="yes")[0] == 400
    status, doc = _control(col.url, session, "pause", force=True)
    assert (status, doc["state"], doc["changed_by"]) == (200, "paused", "ops")
    assert _control(col.url, session, "pause")[0] == 409  # already paused

    answers: list[tuple[float, Any]] = []
    started = time.monotonic()

    def poll() -> None:
        answers.append(
            (time.monotonic(), _json(col.url, "GET", f"/v1/sessions/{session}/control?wait=20"))
        )

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.5)
    assert not answers  # held while paused
    assert _control(col.url, session, "resume")[1]["state"] == "running"
    waiter.join(timeout=10)
    ((at, (status, doc)),) = answers
    assert (status, doc["state"]) == (200, "running") and at - started < 10

    assert _control(col.url, session, "cancel")[1]["state"] == "canceled"
    status, doc = _control(col.url, session, "resume")
    assert status == 409 and "canceled" in doc["message"]
    with ControlStore(col.data_dir) as store:  # the collector's store holds the history
        assert [e.action for e in store.control_history(session)] == ["pause", "resume", "cancel"]


def test_session_control_needs_the_decision_token(col: CollectorProcess) -> None:
    status, _ = _control(col.url, "remote-session-2", "pause", auth=AGENT_AUTH)
    assert status == 401
    status, doc = _json(
        col.url,
        "POST",
        "/v1/sessions/remote-session-2/control",
        {"action": "stop", "by": "x"},
        DECIDER_AUTH,
    )
    assert status == 400 and "action" in doc["message"]
    status, _ = _json(col.url, "GET", "/v1/sessions/remote-session-2/control", auth={})
    assert status == 401


SESSION_AGENT = """\
import json, sys
import tooltrail.instrumentation as tt

data, policy = sys.argv[1:3]
# TOOLTRAIL_COLLECTOR_URL / _TOKEN come from the environment: the default wiring.
tt.configure(data_dir=data, policy=policy, enforce=True, agent_name="remote-bot")

@tt.tool
def git_status(repo_path: str) -> str:
    return "clean"

with tt.session("remote-controlled"):
    for line in sys.stdin:  # one call per line the test sends
        try:
            print(json.dumps({"result": git_status("/srv/app")}), flush=True)
        except tt.ToolCallDenied as e:
            print(json.dumps({"denied": e.rule}), flush=True)
"""


def test_remote_agent_obeys_pause_resume_and_cancel(tmp_path: Path, col: CollectorProcess) -> None:
    """An agent that knows only TOOLTRAIL_COLLECTOR_URL: a pause holds its next call until
    resume; after cancel its calls are denied (rule session-canceled)."""
    (tmp_path / "agent.py").write_text(SESSION_AGENT)
    (tmp_path / "p.yaml").write_text("version: 1\ndefault: ALLOW\nrules: []\n")
    env = {
        **os.environ,
        "TOOLTRAIL_COLLECTOR_URL": col.url,
        "TOOLTRAIL_COLLECTOR_TOKEN": TOKEN,
    }
    agent = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "agent.py"),
            str(tmp_path / "d"),
            str(tmp_path / "p.yaml"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert agent.stdin is not None and agent.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(agent.stdout.readline, "")))
    reader.start()

    def call() -> None:
        assert agent.stdin is not None
        agent.stdin.write("go\n")
        agent.stdin.flush()

    try:
        call()
        wait_until(lambda: len(lines) == 1, timeout=60, what="first call")
        assert json.loads(lines[0]) == {"result": "clean"}
        # (force: its first span may still be on its way to landing)
        assert _control(col.url, "remote-controlled", "pause", force=True)[0] == 200
        time.sleep(1.2)  # past the gate's 1 s trust in a "running" answer
        call()
        time.sleep(1.0)
        assert len(lines) == 1  # held while paused
        assert _control(col.url, "remote-controlled", "resume")[0] == 200
        wait_until(lambda: len(lines) == 2, timeout=20, what="call released by resume")
        assert json.loads(lines[1]) == {"result": "clean"}
        assert _control(col.url, "remote-controlled", "cancel")[0] == 200
        time.sleep(1.2)
        call()
        wait_until(lambda: len(lines) == 3, timeout=20, what="call after cancel")
        assert json.loads(lines[2]) == {"denied": "session-canceled"}
    finally:
        agent.stdin.close()
        try:
            agent.wait(timeout=20)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            reader.join(timeout=5)
    assert agent.returncode == 0, agent.stderr.read() if agent.stderr else ""


def test_unreachable_collector_denies_enforced_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Session control that cannot be read fails closed: the call does not run."""
    import socket

    import tooltrail.instrumentation as tt
    from tooltrail.instrumentation import _settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ran: list[str] = []

    @tt.tool
    def git_status(repo_path: str) -> str:
        ran.append(repo_path)
        return "clean"

    allow_all = {"version": 1, "default": "ALLOW", "rules": []}
    try:
        for url in (f"http://127.0.0.1:{port}", "ftp://nowhere"):  # unreachable; unusable
            monkeypatch.setenv("TOOLTRAIL_COLLECTOR_URL", url)
            _settings.install(enforce=True, policy=allow_all)
            with tt.session("s-unreachable"), pytest.raises(tt.ToolCallDenied) as denied:
                git_status("/srv/app")
            assert denied.value.rule == "session-control-error" and not ran
    finally:
        _settings.reset()


def test_async_wait_while_paused_does_not_block_the_loop(col: CollectorProcess) -> None:
    from tooltrail.instrumentation.http_broker import HttpSessionGate

    gate = HttpSessionGate(col.url, TOKEN, refresh_s=0, poll_wait_s=5)
    session = "remote-async"
    assert gate.state(session) == "running"
    assert _control(col.url, session, "pause", force=True)[0] == 200
    assert gate.state(session) == "paused"

    async def main() -> tuple[str, int]:
        threading.Timer(0.6, lambda: _control(col.url, session, "resume")).start()
        async with Ticker() as ticker:
            state = await gate.await_while_paused(session)
        return state, ticker.ticks

    try:
        state, ticks = asyncio.run(main())
        assert state == "running"
        assert ticks >= 10  # the loop ran while the wait was parked in a thread
    finally:
        gate.close()
