"""An approval request whose agent stopped waiting: the store knows (a lease the waiter
renews, or its own word as it leaves), nobody can approve it, and it says so over HTTP too.

The agent-process cases over the local store are in test_approvals_process.py; the
dashboard's card in test_dashboard_approvals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, request, wait_until

from tooltrail.collector.approvals_http import WITHDRAWN
from tooltrail.control import (
    LEASE_LAPSED,
    ApprovalRecord,
    ApprovalRequest,
    ControlStore,
    RequesterGoneError,
)

TOKEN = "agent-token-0123456789"
DECIDER = "approver-token-0123456789"


def _req(**kw: Any) -> ApprovalRequest:
    base: dict[str, Any] = {
        "tool_name": "git_commit",
        "arguments": {"repo_path": "/r", "message": "ship it"},
        "session_id": "s1",
        "timeout_s": 60.0,
    }
    base.update(kw)
    return ApprovalRequest(**base)


# --- the store -----------------------------------------------------------------------------


def test_a_lapsed_lease_abandons_the_request_and_a_decision_is_refused(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        # Filed for a waiter elsewhere (no pid to look at): only its lease tells.
        rec = store.file_request(_req(lease_s=5.0), now=1000.0, waiter_here=False)
        assert rec.lease_until == 1005.0
        assert store.heartbeat(rec.approval_id, 5.0, now=1003.0)  # renewed: until 1008
        assert store.expire_due(now=1007.0) == 0
        assert store.get(rec.approval_id).status == "pending"
        with pytest.raises(RequesterGoneError, match=r"abandoned.*never ran"):
            store.decide(rec.approval_id, "approved", by="alice", now=1009.0)
        gone = store.get(rec.approval_id)
    assert (gone.status, gone.decided_by, gone.decision_reason) == (
        "abandoned",
        None,
        LEASE_LAPSED,
    )
    assert gone.decided_at == 1008.0  # known gone from the end of its lease
    assert not store_heartbeat_revives(tmp_path, gone)


def store_heartbeat_revives(root: Path, gone: ApprovalRecord) -> bool:
    """A late heartbeat must not bring an abandoned request back."""
    with ControlStore(root) as store:
        renewed = store.heartbeat(gone.approval_id, 60.0)
        return renewed or store.get(gone.approval_id).status != "abandoned"


def test_a_deadline_before_the_lease_ends_is_an_expiry(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=50.0, timeout_s=10.0), now=1000.0, waiter_here=False)
        store.expire_due(now=2000.0)
        assert store.get(rec.approval_id).status == "expired"
        # No lease at all (an older agent): only the deadline ends it.
        old = store.file_request(_req(), now=1000.0, waiter_here=False)
        store.expire_due(now=1059.0)
        assert store.get(old.approval_id).status == "pending"


def test_a_waiter_that_renews_its_lease_keeps_its_request_decidable(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=0.5))
    got: list[str] = []

    def wait() -> None:
        with ControlStore(tmp_path) as mine:
            got.append(mine.wait(rec.approval_id, poll_s=0.02, heartbeat_s=0.1).status)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(1.5)  # three leases long: only renewals keep it pending
        with ControlStore(tmp_path) as store:
            assert [r.approval_id for r in store.list_approvals("pending")] == [rec.approval_id]
            store.decide(rec.approval_id, "approved", by="alice")
    finally:
        waiter.join(10)
    assert got == ["approved"]


def test_a_renewal_never_waits_for_the_write_lock(tmp_path: Path) -> None:
    """Waiters renew from their polling loop (an agent's event loop): a busy store skips
    a beat instead of blocking in SQLite's busy handler for its 30 s."""
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=10.0))
        holder = sqlite3.connect(tmp_path / "control.sqlite", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process is writing
        try:
            started = time.monotonic()
            assert store.try_heartbeat(rec.approval_id, 10.0) is None
            assert time.monotonic() - started < 1.0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.try_heartbeat(rec.approval_id, 10.0) is True
        store.decide(rec.approval_id, "denied", by="alice")  # the lock waits as before
        assert store.try_heartbeat(rec.approval_id, 10.0) is False  # nothing to renew


def test_a_store_from_before_abandoned_is_rebuilt_in_place(tmp_path: Path) -> None:
    # The approvals table as the previous release created it: its status check has no
    # 'abandoned', and there are no lease columns.
    con = sqlite3.connect(tmp_path / "control.sqlite")
    con.executescript(
        """
        CREATE TABLE approvals (
            approval_id TEXT PRIMARY KEY, session_id TEXT, trace_id TEXT, span_id TEXT,
            agent_name TEXT, tool_name TEXT NOT NULL, mcp_server TEXT, arguments TEXT NOT NULL,
            arguments_hash TEXT NOT NULL, policy_rule TEXT, reason TEXT, blast_radius TEXT,
            approvers TEXT NOT NULL, on_timeout TEXT NOT NULL DEFAULT 'DENY',
            requested_at REAL NOT NULL, expires_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
            decided_by TEXT, decided_at REAL, decision_reason TEXT, agent_host TEXT,
            agent_pid INTEGER, run_hash TEXT);
        CREATE INDEX approvals_status ON approvals (status, requested_at);
        CREATE INDEX approvals_session ON approvals (session_id);
        INSERT INTO approvals (approval_id, session_id, tool_name, arguments, arguments_hash,
            approvers, requested_at, expires_at, status, decided_by, run_hash)
        VALUES ('apr-old', 's0', 't', '{}', 'h', '["*"]', 1, 9e9, 'approved', 'bob', 'rh'),
               ('apr-held', 's0', 't', '{}', 'h', '["*"]', 1, 9e9, 'pending', NULL, NULL);
        """
    )
    con.commit()
    con.close()
    with ControlStore(tmp_path) as store:
        old = store.get("apr-old")
        assert (old.status, old.decided_by, old.run_hash, old.lease_s) == (
            "approved",
            "bob",
            "rh",
            None,
        )
        assert store.abandon("apr-held", "gave up").status == "abandoned"
        indexes = {r[0] for r in store._query("SELECT name FROM sqlite_master")}
    assert {"approvals_status", "approvals_session"} <= indexes
    with ControlStore(tmp_path) as again:  # opening again changes nothing
        assert [r.status for r in again.list_approvals("all")] == ["approved", "abandoned"]


# --- whose pid: the same host name is not the same pid space ------------------------------


def _dead_pid() -> int:
    """A pid no process has any more (one that ran and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _set_waiter(root: Path, approval_id: str, **columns: object) -> None:
    """Write the waiter columns of a row as another process would have filed them."""
    con = sqlite3.connect(root / "control.sqlite")
    try:
        assignments = ", ".join(f"{name} = ?" for name in columns)
        con.execute(
            f"UPDATE approvals SET {assignments} WHERE approval_id = ?",
            (*columns.values(), approval_id),
        )
        con.commit()
    finally:
        con.close()


def _waiter_columns(root: Path, approval_id: str) -> tuple[Any, ...]:
    con = sqlite3.connect(root / "control.sqlite")
    try:
        row = con.execute(
            "SELECT agent_host, agent_pid, agent_pidns, agent_started FROM approvals"
            " WHERE approval_id = ?",
            (approval_id,),
        ).fetchone()
    finally:
        con.close()
    return tuple(row)


def _proc_start(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PID namespaces and /proc are Linux's"
)


@linux_only
def test_a_request_filed_keeps_the_waiters_pid_namespace_and_start_time(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=10.0))
        remote = store.file_request(_req(lease_s=10.0), waiter_here=False)
    host, pid, pidns, started = _waiter_columns(tmp_path, rec.approval_id)
    assert pid == os.getpid()
    assert pidns == Path("/proc/self/ns/pid").stat().st_ino
    assert started == _proc_start(os.getpid())
    assert _waiter_columns(tmp_path, remote.approval_id) == (None, None, None, None)
    assert host


@linux_only
def test_a_waiter_in_another_pid_namespace_is_judged_by_its_lease_alone(tmp_path: Path) -> None:
    """A container on ``--network host`` has the host's name but its own pids: its pid
    means nothing here, so a pid that looks dead must not abandon its live request."""
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=30.0), now=time.time())
    ours = Path("/proc/self/ns/pid").stat().st_ino
    _set_waiter(tmp_path, rec.approval_id, agent_pid=_dead_pid(), agent_pidns=ours + 1)
    with ControlStore(tmp_path) as store:
        assert store.expire_due() == 0
        assert [r.approval_id for r in store.list_approvals("pending")] == [rec.approval_id]
        lease_until = store.get(rec.approval_id).lease_until
        assert lease_until is not None
        assert store.expire_due(now=lease_until + 1.0) == 1  # the lease still tells
        gone = store.get(rec.approval_id)
    assert (gone.status, gone.decision_reason) == ("abandoned", LEASE_LAPSED)


def _in_new_pid_namespace(*argv: str) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` in a new PID namespace with its own /proc (as in a container on the
    host's network: same host name, other pids); None where that cannot be done here."""
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    try:
        probe = subprocess.run([*unshare, "true"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        return None
    return subprocess.run(
        [*unshare, *argv], capture_output=True, text=True, timeout=60, check=False
    )


READ_IN_CONTAINER = """\
import json, sys
from tooltrail.control import ControlStore
with ControlStore(sys.argv[1]) as store:
    settled = store.expire_due()
    print(json.dumps([settled, store.get(sys.argv[2]).status]))
"""


@linux_only
def test_a_reader_in_a_container_on_the_host_network_leaves_a_live_request_pending(
    tmp_path: Path,
) -> None:
    """The real thing: a reader in another PID namespace (same host name) cannot see the
    waiter's pid; it must not take the live waiter for dead."""
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=30.0))  # this process waits on it, alive
    done = _in_new_pid_namespace(
        sys.executable, "-c", READ_IN_CONTAINER, str(tmp_path), rec.approval_id
    )
    if done is None:
        pytest.skip("cannot make a PID namespace here (unshare needs CAP_SYS_ADMIN)")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, "pending"]
    with ControlStore(tmp_path) as store:
        assert store.get(rec.approval_id).status == "pending"


@linux_only
def test_a_dead_waiter_in_this_pid_namespace_is_seen_at_once(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(lease_s=30.0))
    _set_waiter(tmp_path, rec.approval_id, agent_pid=_dead_pid())
    with ControlStore(tmp_path) as store:
        assert store.expire_due() == 1
        gone = store.get(rec.approval_id)
    assert gone.status == "abandoned" and "has exited" in (gone.decision_reason or "")


@linux_only
def test_a_pid_reused_by_another_process_counts_as_gone(tmp_path: Path) -> None:
    """The pid is alive, but the process behind it started at another time: not the waiter."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ControlStore(tmp_path) as store:
            same = store.file_request(_req(lease_s=30.0))
            reused = store.file_request(_req(lease_s=30.0))
        start = _proc_start(sleeper.pid)
        _set_waiter(tmp_path, same.approval_id, agent_pid=sleeper.pid, agent_started=start)
        _set_waiter(tmp_path, reused.approval_id, agent_pid=sleeper.pid, agent_started=start - 1)
        with ControlStore(tmp_path) as store:
            assert store.expire_due() == 1
            assert store.get(same.approval_id).status == "pending"  # the very process
            gone = store.get(reused.approval_id)
        assert gone.status == "abandoned" and "has exited" in (gone.decision_reason or "")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_store_from_before_pid_namespaces_is_upgraded_and_trusts_only_leases(
    tmp_path: Path,
) -> None:
    """A row filed before namespaces were kept cannot say which pid space its pid is in."""
    con = sqlite3.connect(tmp_path / "control.sqlite")
    con.executescript(
        """
        CREATE TABLE approvals (
            approval_id TEXT PRIMARY KEY, session_id TEXT, trace_id TEXT, span_id TEXT,
            agent_name TEXT, tool_name TEXT NOT NULL, mcp_server TEXT, arguments TEXT NOT NULL,
            arguments_hash TEXT NOT NULL, policy_rule TEXT, reason TEXT, blast_radius TEXT,
            approvers TEXT NOT NULL, on_timeout TEXT NOT NULL DEFAULT 'DENY',
            requested_at REAL NOT NULL, expires_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'abandoned')),
            decided_by TEXT, decided_at REAL, decision_reason TEXT, agent_host TEXT,
            agent_pid INTEGER, run_hash TEXT, lease_s REAL, lease_until REAL);
        CREATE INDEX approvals_status ON approvals (status, requested_at);
        CREATE INDEX approvals_session ON approvals (session_id);
        """
    )
    con.execute(
        "INSERT INTO approvals (approval_id, tool_name, arguments, arguments_hash, approvers,"
        " requested_at, expires_at, agent_host, agent_pid, lease_s, lease_until)"
        " VALUES ('apr-old', 't', '{}', 'h', '[\"*\"]', ?, 9e9, ?, ?, 30, ?)",
        (time.time(), socket.gethostname(), _dead_pid(), time.time() + 30.0),
    )
    con.commit()
    con.close()
    with ControlStore(tmp_path) as store:
        assert store.expire_due() == 0
        assert store.get("apr-old").status == "pending"
        assert store.expire_due(now=time.time() + 60.0) == 1
        assert store.get("apr-old").decision_reason == LEASE_LAPSED
        filed = store.file_request(_req(lease_s=30.0))  # the new columns are there
    assert _waiter_columns(tmp_path, filed.approval_id)[1] == os.getpid()


# --- over HTTP: the long-poll is the heartbeat ----------------------------------------------

AGENT = """\
import json, sys
from tooltrail.instrumentation.broker import ApprovalRequest
from tooltrail.instrumentation.http_broker import HttpApprovalBroker
from tooltrail.policy.model import ApprovalSettings

url, token = sys.argv[1:3]
broker = HttpApprovalBroker(url, token, poll_wait_s=30, lease_s=5)
req = ApprovalRequest(
    tool="git_push", arguments={"force": True}, shown_arguments={"force": True},
    session_id="remote-s", agent_name="remote-bot", server=None, trace_id=None, span_id=None,
    rule="pushes", reason=None, blast_radius="High",
    approval=ApprovalSettings(timeout_s=120, on_timeout="DENY", approvers=("*",)),
)
print(json.dumps({"status": broker.request(req).status}), flush=True)
"""


@pytest.fixture
def col(tmp_path: Path) -> Iterator[CollectorProcess]:
    with CollectorProcess(tmp_path / "data", "--token", TOKEN, "--decision-token", DECIDER) as c:
        yield c


def _json(url: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = request(url, method, path, data, headers)
    return status, json.loads(raw) if raw else None


def _listed(url: str, status: str) -> list[dict[str, Any]]:
    code, doc = _json(url, "GET", f"/v1/approvals?status={status}", TOKEN)
    assert code == 200, doc
    return list(doc["approvals"])


def test_a_remote_agent_that_dies_leaves_its_request_abandoned_over_http(
    tmp_path: Path, col: CollectorProcess
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agent = subprocess.Popen(
        [sys.executable, str(script), col.url, TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: bool(_listed(col.url, "pending")), timeout=30, what="the request")
        (held,) = _listed(col.url, "pending")
        # A parked long-poll (30 s) renews the 5 s lease: pending well past one lease.
        time.sleep(7.0)
        assert [r["approval_id"] for r in _listed(col.url, "pending")] == [held["approval_id"]]
        agent.kill()
        agent.communicate(timeout=30)
        killed = time.monotonic()
        # The collector sees the connection close and stops renewing: gone one lease
        # later, not at the end of the 30 s long-poll.
        wait_until(
            lambda: bool(_listed(col.url, "abandoned")), timeout=20, what="the lease to lapse"
        )
        assert time.monotonic() - killed < 20
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    (gone,) = _listed(col.url, "abandoned")
    assert gone["approval_id"] == held["approval_id"]
    assert gone["decision_reason"] == LEASE_LAPSED
    decision = {"outcome": "approved", "by": "alice"}
    path = f"/v1/approvals/{held['approval_id']}/decision"
    status, doc = _json(col.url, "POST", path, DECIDER, decision)
    assert status == 409 and "abandoned" in doc["message"], doc
    with ControlStore(col.data_dir) as store:
        record = store.get(held["approval_id"])
    assert record.status == "abandoned"
    assert record.agent_pid is None  # the collector filed it; its pid is not the agent's


def test_a_remote_agent_that_gives_up_withdraws_its_request_at_once(
    col: CollectorProcess,
) -> None:
    from tooltrail.instrumentation.broker import ApprovalRequest as HeldCall
    from tooltrail.instrumentation.http_broker import HttpApprovalBroker
    from tooltrail.policy.model import ApprovalSettings

    broker = HttpApprovalBroker(col.url, TOKEN, poll_wait_s=30, lease_s=600)
    call = HeldCall(
        tool="git_push",
        arguments={"force": True},
        shown_arguments={"force": True},
        session_id="remote-s",
        agent_name="remote-bot",
        server=None,
        trace_id=None,
        span_id=None,
        rule="pushes",
        reason=None,
        blast_radius="High",
        approval=ApprovalSettings(timeout_s=120, on_timeout="DENY", approvers=("*",)),
    )

    async def give_up() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.arequest(call), timeout=1.5)

    try:
        asyncio.run(give_up())
        # Withdrawn at once: neither the 30 s long-poll nor the 600 s lease is waited for.
        wait_until(lambda: bool(_listed(col.url, "abandoned")), timeout=10, what="withdrawal")
    finally:
        broker.close()
    (gone,) = _listed(col.url, "abandoned")
    assert gone["decision_reason"] == WITHDRAWN
    path = f"/v1/approvals/{gone['approval_id']}"
    decision = {"outcome": "approved", "by": "alice"}
    status, doc = _json(col.url, "POST", path + "/decision", DECIDER, decision)
    assert status == 409 and "abandoned" in doc["message"], doc
    # Withdrawing takes the agents' token, and then the filer's secret (next test).
    assert _json(col.url, "POST", path + "/withdraw", "wrong-token", {})[0] == 401
    assert _json(col.url, "POST", path + "/withdraw", TOKEN, {})[0] == 403


FILED = {"tool_name": "git_push", "arguments": {"force": True}, "session_id": "s", "timeout_s": 120}


def _file(url: str) -> dict[str, Any]:
    status, doc = _json(url, "POST", "/v1/approvals", TOKEN, FILED)
    assert status == 201, doc
    return dict(doc)


@pytest.mark.parametrize("token", [True, False], ids=["agents-token", "no-token"])
def test_only_the_agent_that_filed_a_request_can_withdraw_it(tmp_path: Path, token: bool) -> None:
    """Withdrawing needs the secret the filing answer gave: another agent (with the same
    agents' token), or anyone when the collector has no token, could abandon someone
    else's pending request and so keep it from ever being approved."""
    args = ("--token", TOKEN, "--decision-token", DECIDER) if token else ()
    with CollectorProcess(tmp_path / "data", *args) as col:
        mine, other = _file(col.url), _file(col.url)
        secret = mine["withdraw_secret"]
        assert isinstance(secret, str) and len(secret) >= 32
        assert secret != other["withdraw_secret"]
        path = f"/v1/approvals/{mine['approval_id']}/withdraw"
        for body in ({}, {"withdraw_secret": other["withdraw_secret"]}, {"withdraw_secret": 1}):
            status, doc = _json(col.url, "POST", path, TOKEN, body)
            assert status == 403 and "withdraw_secret" in doc["message"], doc
        # No oracle: an unknown id without its secret is refused the same way.
        assert _json(col.url, "POST", "/v1/approvals/apr-nope/withdraw", TOKEN, {})[0] == 403
        status, doc = _json(col.url, "GET", f"/v1/approvals/{mine['approval_id']}", TOKEN)
        assert status == 200 and doc["status"] == "pending" and "withdraw_secret" not in doc
        status, doc = _json(col.url, "POST", path, TOKEN, {"withdraw_secret": secret})
        assert status == 200 and doc["status"] == "abandoned", doc
        status, again = _json(col.url, "POST", path, TOKEN, {"withdraw_secret": secret})
        assert status == 200 and again["status"] == "abandoned"  # the same story, once
