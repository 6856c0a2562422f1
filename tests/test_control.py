"""The control store: approvals decided once, approvers, expiry, session control, concurrency."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tooltrail.control import (
    AlreadyDecidedError,
    ApprovalRequest,
    ControlStore,
    InvalidTransitionError,
    NotAnApproverError,
    UnknownIdError,
    arguments_hash,
)
from tooltrail.errors import StoreError


def _req(**kw: object) -> ApprovalRequest:
    base: dict[str, object] = {
        "tool_name": "git_commit",
        "arguments": {"repo_path": "/r", "message": "ship it"},
        "session_id": "s1",
        "agent_name": "release-bot",
        "policy_rule": "commit-to-default-branch",
        "reason": "commits to main need a human",
        "blast_radius": "High",
        "timeout_s": 60.0,
    }
    base.update(kw)
    return ApprovalRequest(**base)  # type: ignore[arg-type]


def test_file_and_approve(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())
        assert rec.status == "pending" and rec.arguments_intact()
        assert rec.arguments_hash == arguments_hash({"message": "ship it", "repo_path": "/r"})
        decided = store.decide(rec.approval_id, "approved", by="alice", reason="looks fine")
        assert (decided.status, decided.decided_by, decided.decision_reason) == (
            "approved",
            "alice",
            "looks fine",
        )
        assert decided.wait_ms is not None and decided.wait_ms >= 0
        assert store.list_approvals("pending") == []
        assert [r.approval_id for r in store.list_approvals("all")] == [rec.approval_id]


def test_decided_once_never_overwritten(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())
        store.decide(rec.approval_id, "denied", by="bob", reason="no")
        with pytest.raises(AlreadyDecidedError, match="already denied by bob"):
            store.decide(rec.approval_id, "approved", by="alice")
        assert store.get(rec.approval_id).status == "denied"


def _while_write_locked(root: Path, change: Callable[[], object]) -> None:
    """Run ``change`` in a thread while another writer holds the store's write lock for
    0.6 s (past a 0.3 s deadline): asked for in time, it can only be made too late."""
    blocker = sqlite3.connect(root / "control.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    thread = threading.Thread(target=change)
    thread.start()
    time.sleep(0.6)
    blocker.execute("COMMIT")
    blocker.close()
    thread.join(timeout=30)


def test_a_decision_that_reaches_the_store_after_the_deadline_loses(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(timeout_s=0.3))
        outcome: list[object] = []

        def approve() -> None:
            try:
                outcome.append(store.decide(rec.approval_id, "approved", by="alice"))
            except AlreadyDecidedError as e:
                outcome.append(e)

        _while_write_locked(tmp_path, approve)
        assert len(outcome) == 1 and isinstance(outcome[0], AlreadyDecidedError), outcome
        assert "already expired" in str(outcome[0])
        [after] = store.list_approvals("all")  # as the next reader sees it
        assert (after.status, after.decided_by) == ("expired", None)


def test_a_cancel_that_reaches_the_store_after_a_deadline_does_not_relabel_it(
    tmp_path: Path,
) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(timeout_s=0.3, on_timeout="ALLOW"))
        # the cancel waits past the request's deadline
        _while_write_locked(
            tmp_path, lambda: store.set_session_state("s1", "cancel", by="sec", reason="runaway")
        )
        after = store.get(rec.approval_id)
        # It expired (its on_timeout applies), it was not denied by the cancel.
        assert (after.status, after.decided_by) == ("expired", None)
        assert after.decided_at == after.expires_at
        assert store.session_state("s1") == "canceled"


def test_approver_list_enforced_and_request_stays_pending(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(approvers=("alice", "carol")))
        with pytest.raises(NotAnApproverError, match="'mallory' may not decide"):
            store.decide(rec.approval_id, "approved", by="mallory")
        assert store.get(rec.approval_id).status == "pending"
        assert store.decide(rec.approval_id, "approved", by="carol").status == "approved"


def test_unknown_id_and_missing_actor(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        with pytest.raises(UnknownIdError, match="apr-nope"):
            store.decide("apr-nope", "approved", by="alice")
        rec = store.file_request(_req())
        with pytest.raises(Exception, match="--by"):
            store.decide(rec.approval_id, "approved", by=" ")


def test_expiry_applies_even_when_the_agent_is_gone(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(timeout_s=0.05))
    time.sleep(0.1)
    with ControlStore(tmp_path) as other:  # another process's view: the CLI or dashboard
        assert other.list_approvals("pending") == []
        expired = other.get(rec.approval_id)
        assert expired.status == "expired" and expired.decided_by is None
        with pytest.raises(AlreadyDecidedError):
            other.decide(rec.approval_id, "approved", by="alice")


def test_tampered_arguments_detected(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())
    con = sqlite3.connect(tmp_path / "control.sqlite")
    con.execute(
        "UPDATE approvals SET arguments = ? WHERE approval_id = ?",
        (json.dumps({"repo_path": "/r", "message": "rm -rf"}), rec.approval_id),
    )
    con.commit()
    con.close()
    with ControlStore(tmp_path) as store:
        assert not store.get(rec.approval_id).arguments_intact()


def test_wait_returns_when_another_thread_decides(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req())

    def approve_later() -> None:
        time.sleep(0.1)
        with ControlStore(tmp_path) as s:
            s.decide(rec.approval_id, "approved", by="alice")

    t = threading.Thread(target=approve_later)
    t.start()
    with ControlStore(tmp_path) as store:
        assert store.wait(rec.approval_id).status == "approved"
    t.join()


def test_await_decision_does_not_block_the_loop(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        rec = store.file_request(_req(timeout_s=0.3))

    async def main() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        with ControlStore(tmp_path) as s:
            record = await s.await_decision(rec.approval_id)
        task.cancel()
        return record.status, ticks

    status, ticks = asyncio.run(main())
    assert status == "expired"
    assert ticks >= 10  # the loop kept running while we waited


def test_session_control_transitions_and_history(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        assert store.session_state("s1") == "running"
        store.set_session_state("s1", "pause", by="ops")
        with pytest.raises(InvalidTransitionError):
            store.set_session_state("s1", "pause", by="ops")
        store.set_session_state("s1", "resume", by="ops")
        with pytest.raises(InvalidTransitionError, match="not paused"):
            store.set_session_state("s1", "resume", by="ops")
        store.set_session_state("s1", "cancel", by="sec", reason="runaway")
        with pytest.raises(InvalidTransitionError, match="canceled"):
            store.set_session_state("s1", "resume", by="ops")
        history = store.control_history("s1")
        assert [(e.action, e.actor) for e in history] == [
            ("pause", "ops"),
            ("resume", "ops"),
            ("cancel", "sec"),
        ]
        assert store.session_control("s1").reason == "runaway"


def test_wait_while_paused_until_resume(tmp_path: Path) -> None:
    with ControlStore(tmp_path) as store:
        store.set_session_state("s1", "pause", by="ops")

    def resume_later() -> None:
        time.sleep(0.15)
        with ControlStore(tmp_path) as s:
            s.set_session_state("s1", "resume", by="ops")

    t = threading.Thread(target=resume_later)
    start = time.monotonic()
    t.start()
    with ControlStore(tmp_path) as store:
        assert store.wait_while_paused("s1") == "running"
    assert time.monotonic() - start >= 0.14
    t.join()


def test_unopenable_store_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the control store"):
        ControlStore(blocker)


def _file_many(data: str, tag: str, n: int) -> None:
    with ControlStore(data) as store:
        for i in range(n):
            store.file_request(_req(session_id=f"{tag}-{i % 5}", approval_id=f"{tag}-{i}"))


def _decide_all(data: str, expected: int) -> None:
    decided: set[str] = set()
    deadline = time.monotonic() + 60
    with ControlStore(data) as store:
        while len(decided) < expected and time.monotonic() < deadline:
            for rec in store.list_approvals("pending"):
                store.decide(rec.approval_id, "approved", by="ops")
                decided.add(rec.approval_id)
            time.sleep(0.01)


def test_concurrent_agents_and_deciders_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    per, agents = 100, 3
    ControlStore(tmp_path).close()
    decider = ctx.Process(target=_decide_all, args=(str(tmp_path), per * agents))
    filers = [
        ctx.Process(target=_file_many, args=(str(tmp_path), f"a{i}", per)) for i in range(agents)
    ]
    decider.start()
    for p in filers:
        p.start()
    for p in [*filers, decider]:
        p.join(timeout=120)
        assert p.exitcode == 0
    with ControlStore(tmp_path) as store:
        records = store.list_approvals("all")
    assert len(records) == per * agents
    assert {r.status for r in records} == {"approved"}
