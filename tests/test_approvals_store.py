"""What issue 5 added to the control store: the run hash, cheap waiting, cancel releasing
held requests, and opening a store made by an earlier version."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tooltrail.control import (
    ApprovalRequest,
    ControlStore,
    InvalidTransitionError,
    arguments_hash,
)


def _req(**kw: object) -> ApprovalRequest:
    base: dict[str, object] = {
        "tool_name": "git_commit",
        "arguments": {"repo_path": "/r", "message": "ship it"},
        "session_id": "s1",
        "timeout_s": 60.0,
        "run_hash": "digest-of-what-runs",
    }
    base.update(kw)
    return ApprovalRequest(**base)  # type: ignore[arg-type]


def test_run_hash_is_filed_beside_the_public_hash(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())
    assert rec.run_hash == "digest-of-what-runs"
    assert json.loads(rec.arguments) == {"repo_path": "/r", "message": "ship it"}
    assert rec.arguments_hash == arguments_hash({"message": "ship it", "repo_path": "/r"})
    assert rec.to_dict()["run_hash"] == "digest-of-what-runs"


def test_a_store_from_before_run_hash_is_upgraded_in_place(tmp_path: Path) -> None:
    # The first schema, as an earlier release created it, with one request in it.
    con = sqlite3.connect(tmp_path / "control.sqlite")
    con.executescript(
        """
        CREATE TABLE approvals (
            approval_id TEXT PRIMARY KEY, session_id TEXT, trace_id TEXT, span_id TEXT,
            agent_name TEXT, tool_name TEXT NOT NULL, mcp_server TEXT, arguments TEXT NOT NULL,
            arguments_hash TEXT NOT NULL, policy_rule TEXT, reason TEXT, blast_radius TEXT,
            approvers TEXT NOT NULL, on_timeout TEXT NOT NULL DEFAULT 'DENY',
            requested_at REAL NOT NULL, expires_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending', decided_by TEXT, decided_at REAL,
            decision_reason TEXT, agent_host TEXT, agent_pid INTEGER);
        INSERT INTO approvals (approval_id, tool_name, arguments, arguments_hash, approvers,
            requested_at, expires_at) VALUES ('apr-old', 't', '{}', 'h', '["*"]', 1, 9e9);
        """
    )
    con.commit()
    con.close()
    with ControlStore(tmp_path) as store:
        assert store.get("apr-old").run_hash is None
        assert store.file_request(_req()).run_hash == "digest-of-what-runs"
    with ControlStore(tmp_path) as again:  # opening twice does not add it twice
        assert len(again.list_approvals("all")) == 2


def test_waiting_sees_a_decision_made_on_its_own_connection(tmp_path: Path) -> None:
    """Waits skip re-reading until something changed; a change made through the same
    connection (another task on the same thread) must count as one too."""
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())

        async def main() -> str:
            waiter = asyncio.create_task(store.await_decision(rec.approval_id, poll_s=0.01))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            store.decide(rec.approval_id, "denied", by="alice")
            decided = await asyncio.wait_for(waiter, timeout=10)
            return decided.status

        assert asyncio.run(main()) == "denied"


def test_waiting_sees_a_decision_from_another_connection(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())
    seen: list[str] = []

    def wait() -> None:
        with ControlStore(tmp_path) as mine:
            seen.append(mine.wait(rec.approval_id, poll_s=0.01).status)

    t = threading.Thread(target=wait)
    t.start()
    with ControlStore(tmp_path) as other:
        other.decide(rec.approval_id, "approved", by="bob")
    t.join(10)
    assert seen == ["approved"]


def test_waiting_ends_at_the_deadline_without_a_decision(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(timeout_s=0.2))
        start = time.monotonic()
        assert store.wait(rec.approval_id, poll_s=0.05).status == "expired"
    assert time.monotonic() - start < 5


def test_cancel_denies_the_sessions_pending_requests_only(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        held = store.file_request(_req(session_id="s1"))
        done = store.file_request(_req(session_id="s1"))
        store.decide(done.approval_id, "approved", by="alice")
        overdue = store.file_request(_req(session_id="s1", timeout_s=0.0))
        elsewhere = store.file_request(_req(session_id="s2"))
        store.set_session_state("s1", "cancel", by="sec", reason="runaway")
        got = {
            r.approval_id: (r.status, r.decided_by, r.decision_reason)
            for r in store.list_approvals("all")
        }
        with pytest.raises(InvalidTransitionError):
            store.set_session_state("s1", "resume", by="ops")
    assert got[held.approval_id] == ("denied", "sec", "session canceled: runaway")
    assert got[done.approval_id] == ("approved", "alice", None)  # decided: untouched
    assert got[overdue.approval_id][0] == "expired"  # overdue: expired, not relabelled
    assert got[elsewhere.approval_id] == ("pending", None, None)


def test_session_state_reads_the_current_state(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        assert store.session_state("never-seen") == "running"
        store.set_session_state("s1", "pause", by="ops")
        assert store.session_state("s1") == "paused"
        store.set_session_state("s1", "cancel", by="ops")
        assert store.session_state("s1") == "canceled"


def _churn(data: str, rounds: int, keep: bool, errors: list[BaseException]) -> None:
    opened: list[ControlStore] = []
    try:
        for _ in range(rounds):
            store = ControlStore(data)
            store.session_state("s")
            store.list_approvals("pending")
            if keep:
                opened.append(store)
            else:
                store.close()
    except BaseException as e:
        errors.append(e)
    finally:
        for store in opened:
            store.close()


def test_connections_opening_and_closing_a_new_store_at_once_all_succeed(
    tmp_path: Path,
) -> None:
    """Agents' threads, the CLI and the dashboard open and close the store whenever they
    like; the first ones create it (WAL mode, schema) while others open or close. SQLite
    then answers some of them "database is locked" without waiting: they must retry."""
    for round_ in range(20):
        data = str(tmp_path / f"round-{round_}")
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_churn, args=(data, 20, keep, errors))
            for keep in (False, False, True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], errors[0]
