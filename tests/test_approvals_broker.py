"""The embedded broker and session control inside one agent process, on the real store.

Calls go through ``@tool`` with enforcement on and ``ControlStoreBroker`` on a
``control.sqlite`` in tmp_path; decisions and session changes come from other threads with
their own ``ControlStore`` (their own SQLite connections, as another process would have).
Spans are read from the SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import sqlite3
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import approval_support as support
import pytest
from instrumentation_support import attrs, instrument, instrumented
from loop_support import Ticker
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tooltrail.instrumentation as tt
from tooltrail.control import (
    LEASE_LAPSED,
    ApprovalRecord,
    ControlStore,
    RequesterGoneError,
    arguments_hash,
)
from tooltrail.errors import TamperedError
from tooltrail.instrumentation import _approvals, _settings
from tooltrail.instrumentation.broker import FailClosedBroker, default_broker
from tooltrail.instrumentation.store_broker import ControlStoreBroker, StoreSessionGate
from tooltrail.semconv import (
    ERROR_TYPE,
    TT_APPROVAL_DECIDED_BY,
    TT_APPROVAL_ID,
    TT_APPROVAL_STATUS,
    TT_APPROVAL_WAIT_MS,
    TT_DECISION,
    TT_POLICY_RULE,
)

POLICY = """
version: 1
default: ALLOW
rules:
  - id: deploys-need-a-human
    when: {tool: deploy}
    decision: REQUIRE_APPROVAL
    reason: deploys change production
    approval: {timeout: 30s, on_timeout: DENY, approvers: ["alice", "bob"]}
  - id: quick
    when: {tool: quick}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 1s, on_timeout: DENY}
"""

DEADLINE_S = 20.0
ran: list[tuple[str, Any]] = []


@tt.tool
def deploy(target: str, token: str = "", files: list[str] | None = None) -> str:
    ran.append(("deploy", (target, token, list(files or []))))
    return f"deployed {target}"


@tt.tool(name="deploy")
async def adeploy(target: str, files: list[str] | None = None) -> str:
    ran.append(("adeploy", (target, list(files or []))))
    return f"deployed {target}"


@tt.tool
def status(target: str) -> str:
    ran.append(("status", target))
    return "ok"


@tt.tool(name="status")
async def astatus(target: str) -> str:
    ran.append(("astatus", target))
    return "ok"


@tt.tool(name="quick")
async def aquick(target: str) -> str:
    ran.append(("quick", target))
    return "ok"


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def spans(tmp_path: Path, data: Path) -> Iterator[InMemorySpanExporter]:
    """Enforcing, with the default broker and session control on the store in ``data``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with instrumented(enforce=True, policy=policy, data_dir=data) as exporter:
        yield exporter


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
    return support.wait_for(condition, what, timeout)


def pending(data: Path, n: int = 1) -> list[ApprovalRecord]:
    """Wait until ``n`` requests are pending; return them (oldest first)."""
    return support.pending(data, n, DEADLINE_S)


def decide(data: Path, approval_id: str, outcome: str, by: str, reason: str | None = None) -> None:
    with ControlStore(data) as store:
        store.decide(approval_id, outcome, by=by, reason=reason)  # type: ignore[arg-type]


def control(data: Path, session_id: str, action: str, by: str = "ops") -> None:
    with ControlStore(data) as store:
        store.set_session_state(session_id, action, by=by)  # type: ignore[arg-type]


class InThread:
    """Run a blocking call in a thread (in the caller's context, so in its tooltrail
    session); keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        ctx = contextvars.copy_context()
        self.thread = threading.Thread(target=ctx.run, args=(self._run, fn), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as e:
            self.error = e

    def join(self) -> Any:
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.result


def tool_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The tool spans (a session left records its end too: tooltrail.session.end)."""
    return [s for s in exporter.get_finished_spans() if s.name != "tooltrail.session.end"]


# --- approvals ------------------------------------------------------------------------------


def test_sync_call_waits_for_an_approval_made_elsewhere(
    spans: InMemorySpanExporter, data: Path
) -> None:
    with tt.session(session_id="s-sync", agent_name="deployer"):
        call = InThread(lambda: deploy("prod", files=["a.py"]))
        (req,) = pending(data)
        assert ran == []  # held
        assert (req.tool_name, req.session_id, req.agent_name, req.policy_rule) == (
            "deploy",
            "s-sync",
            "deployer",
            "deploys-need-a-human",
        )
        assert req.approvers == ("alice", "bob")
        assert req.expires_at - req.requested_at == pytest.approx(30.0)
        assert req.reason == "deploys change production"
        decide(data, req.approval_id, "approved", by="alice", reason="release window")
        assert call.join() == "deployed prod"
    assert ran == [("deploy", ("prod", "", ["a.py"]))]
    (span,) = tool_spans(spans)
    a = attrs(span)
    assert (a[TT_APPROVAL_ID], a[TT_APPROVAL_STATUS], a[TT_APPROVAL_DECIDED_BY]) == (
        req.approval_id,
        "approved",
        "alice",
    )
    assert float(a[TT_APPROVAL_WAIT_MS]) > 0
    assert req.span_id == format(span.context.span_id, "016x")
    assert req.trace_id == format(span.context.trace_id, "032x")


def test_async_wait_leaves_the_event_loop_free(spans: InMemorySpanExporter, data: Path) -> None:
    async def main() -> tuple[str, int]:
        async with Ticker(interval_s=0.005) as ticker:
            call = asyncio.create_task(adeploy("staging"))
            (req,) = await asyncio.to_thread(pending, data)
            seen = ticker.ticks
            await asyncio.to_thread(decide, data, req.approval_id, "denied", "bob", "not today")
            with pytest.raises(tt.ToolCallDenied) as info:
                await call
        assert ticker.ticks > seen  # the loop kept running while the call was held
        return info.value.reason, ticker.ticks

    reason, _ = asyncio.run(main())
    assert reason == "approval denied by bob: not today"
    assert ran == []
    a = attrs(tool_spans(spans)[0])
    assert (a[TT_APPROVAL_STATUS], a[TT_APPROVAL_DECIDED_BY]) == ("denied", "bob")
    assert a[ERROR_TYPE] == "tool_call_denied"


def test_shown_arguments_are_redacted_and_the_tool_gets_the_real_ones(
    spans: InMemorySpanExporter, data: Path
) -> None:
    secret = "ghp_" + "A1b2C3d4" * 5
    call = InThread(lambda: deploy("prod", token=secret))
    (req,) = pending(data)
    shown = req.arguments
    assert secret not in shown and "[REDACTED" in shown
    # The stored hashes say nothing about the secret: neither is the plain hash of the
    # arguments that will run, and the run hash is keyed by the agent process.
    real = {"target": "prod", "token": secret, "files": None}
    assert req.arguments_hash == arguments_hash(json.loads(shown))
    assert req.run_hash is not None and req.run_hash != arguments_hash(real)
    decide(data, req.approval_id, "approved", by="bob")
    assert call.join() == "deployed prod"
    assert ran == [("deploy", ("prod", secret, []))]
    for f in data.iterdir():  # the store, its WAL and shared memory
        assert secret.encode() not in f.read_bytes(), f


def test_arguments_changed_while_held_are_refused(spans: InMemorySpanExporter, data: Path) -> None:
    files = ["README.md"]

    async def main() -> None:
        call = asyncio.create_task(adeploy("prod", files=files))
        (req,) = await asyncio.to_thread(pending, data)
        files.append("../../etc/shadow")  # the caller's list changes after the request
        await asyncio.to_thread(decide, data, req.approval_id, "approved", "alice")
        with pytest.raises(tt.ToolCallDenied) as info:
            await call
        assert info.value.reason == _approvals.ARGUMENTS_CHANGED_REASON
        assert info.value.approval_status == "approved"

    asyncio.run(main())
    assert ran == []
    a = attrs(tool_spans(spans)[0])
    assert a[ERROR_TYPE] == "tool_call_denied"
    assert (a[TT_APPROVAL_STATUS], a[TT_APPROVAL_DECIDED_BY]) == ("approved", "alice")


def test_request_edited_in_the_store_is_refused(spans: InMemorySpanExporter, data: Path) -> None:
    call = InThread(lambda: deploy("prod", files=["rm -rf /"]))
    (req,) = pending(data)
    # A careful forger rewrites what the approver sees and recomputes the public hash.
    benign = {"files": ["README.md"], "target": "prod", "token": ""}
    support.forge_request(data, req.approval_id, benign)
    # The store refuses to decide a request edited since it was filed (its ledger entry)...
    with pytest.raises(TamperedError, match=r"edited .* since it was filed"):
        decide(data, req.approval_id, "approved", by="alice")
    # ... and a forger who marks it approved as well gets nothing run.
    support.set_status(data, req.approval_id, "approved", by="alice")
    with pytest.raises(tt.ToolCallDenied) as info:
        call.join()
    assert "changed in the control store after it was filed" in info.value.reason
    assert "arguments" in info.value.reason
    assert ran == []


def test_a_cancelled_waiter_abandons_its_request_and_nobody_can_approve_it(
    spans: InMemorySpanExporter, data: Path
) -> None:
    async def main() -> str:
        call = asyncio.create_task(aquick("x"))
        (req,) = await asyncio.to_thread(pending, data)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return req.approval_id

    approval_id = asyncio.run(main())
    with ControlStore(data) as store:
        record = store.get(approval_id)
        assert record.status == "abandoned"  # the call that was held will never run
        assert "cancelled" in (record.decision_reason or "")
        with pytest.raises(RequesterGoneError, match="abandoned"):
            store.decide(approval_id, "approved", by="alice")
        assert store.get(approval_id).status == "abandoned"
    assert ran == []
    span = attrs(tool_spans(spans)[0])
    assert span[ERROR_TYPE] == "CancelledError"
    # The span tells the store's story: the request it names was abandoned.
    assert (span[TT_APPROVAL_ID], span[TT_APPROVAL_STATUS]) == (approval_id, "abandoned")


class WriteLockHolder:
    """Another process writing: holds the store's write lock (its own connection, in its
    own thread) until told to let go, or for ``hold_s`` at most."""

    def __init__(self, path: Path, hold_s: float) -> None:
        self.locked = threading.Event()
        self.release = threading.Event()
        self.released = threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(path, hold_s), daemon=True)
        self._thread.start()
        assert self.locked.wait(DEADLINE_S), "could not take the write lock"

    def _hold(self, path: Path, hold_s: float) -> None:
        con = sqlite3.connect(path, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            self.locked.set()
            self.release.wait(hold_s)
            con.execute("ROLLBACK")
        finally:
            con.close()
            self.released.set()

    def let_go(self) -> None:
        self.release.set()
        self._thread.join(DEADLINE_S)


def test_a_cancelled_waiter_never_waits_for_the_stores_write_lock_on_the_loop(
    spans: InMemorySpanExporter, data: Path
) -> None:
    """Another process holds the write lock as the held call is cancelled: the cancelled
    task ends without waiting for it (the loop is never parked in SQLite's busy handler,
    up to 30 s), and the request is marked abandoned all the same once the lock is free."""

    async def main() -> tuple[str, bool]:
        call = asyncio.create_task(adeploy("prod"))
        (req,) = await asyncio.to_thread(pending, data)
        holder = WriteLockHolder(data / "control.sqlite", hold_s=5.0)
        try:
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # Held until we say so (or 5 s): the task ended while the lock was still taken.
            lock_freed_first = holder.released.is_set()
        finally:
            holder.let_go()
        return req.approval_id, lock_freed_first

    approval_id, lock_freed_first = asyncio.run(main())
    assert not lock_freed_first, "the cancelled waiter waited on the loop for the write lock"

    def abandoned() -> ApprovalRecord | None:
        with ControlStore(data) as store:
            record = store.get(approval_id)
        return record if record.status == "abandoned" else None

    record = wait_for(abandoned, "the request marked abandoned once the lock is free")
    assert "cancelled" in (record.decision_reason or "")
    assert ran == []
    span = attrs(tool_spans(spans)[0])
    assert (span[TT_APPROVAL_ID], span[TT_APPROVAL_STATUS]) == (approval_id, "abandoned")


def test_a_waiter_told_its_request_was_abandoned_does_not_run_the_call(
    spans: InMemorySpanExporter, data: Path
) -> None:
    """The store gave the request up (e.g. the waiter was frozen past its lease and a
    reader settled it): the waiter, back, refuses the call and says why."""
    call = InThread(lambda: deploy("prod"))
    (req,) = pending(data)
    with ControlStore(data) as store:
        store.abandon(req.approval_id, LEASE_LAPSED)
    with pytest.raises(tt.ToolCallDenied) as info:
        call.join()
    assert info.value.reason == f"approval request abandoned before a decision ({LEASE_LAPSED})"
    assert ran == []
    span = attrs(tool_spans(spans)[0])
    assert (span[TT_APPROVAL_ID], span[TT_APPROVAL_STATUS]) == (req.approval_id, "abandoned")


def test_timeout_applies_on_timeout_deny(spans: InMemorySpanExporter, data: Path) -> None:
    with pytest.raises(tt.ToolCallDenied) as info:
        asyncio.run(aquick("x"))
    assert "expired" in info.value.reason and "DENY" in info.value.reason
    assert info.value.approval_status == "expired"
    assert ran == []
    with ControlStore(data) as store:
        (rec,) = store.list_approvals("all")
    assert rec.status == "expired" and rec.decided_by is None


def test_many_threads_share_one_broker(spans: InMemorySpanExporter, data: Path) -> None:
    n = 12
    calls = [InThread(lambda i=i: deploy(f"t{i}")) for i in range(n)]  # type: ignore[misc]
    for rec in pending(data, n):
        decide(data, rec.approval_id, "approved", by="bob")
    assert sorted(c.join() for c in calls) == sorted(f"deployed t{i}" for i in range(n))
    assert len(ran) == n
    ids = {attrs(s)[TT_APPROVAL_ID] for s in tool_spans(spans)}
    assert len(ids) == n


def test_unopenable_store_fails_closed_naming_the_store(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    # Session control on: the check before the call already fails, closed.
    with instrumented(enforce=True, policy=policy, data_dir=blocker) as exporter:
        with pytest.raises(tt.ToolCallDenied) as info:
            status("x")
        assert info.value.rule == "session-control-error"
        assert str(blocker / "control.sqlite") in info.value.reason
        # Session control off: the broker cannot file the request, closed too.
        instrument(exporter, enforce=True, policy=policy, data_dir=blocker, session_control=False)
        assert status("x") == "ok"
        with pytest.raises(tt.ToolCallDenied) as info:
            deploy("prod")
        assert str(blocker / "control.sqlite") in info.value.reason
        assert "could not be filed" in info.value.reason
        assert attrs(exporter.get_finished_spans()[-1])[TT_APPROVAL_DECIDED_BY] == (
            "tooltrail:store-error"
        )
    assert ran == [("status", "x")]


# --- which broker ----------------------------------------------------------------------------


def test_default_broker_follows_the_data_directory_and_collector_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOOLTRAIL_DATA", raising=False)
    monkeypatch.delenv("TOOLTRAIL_COLLECTOR_URL", raising=False)
    assert isinstance(default_broker(), FailClosedBroker)
    local = default_broker(tmp_path)
    assert isinstance(local, ControlStoreBroker) and local.path == tmp_path / "control.sqlite"
    monkeypatch.setenv("TOOLTRAIL_DATA", str(tmp_path / "env"))
    from_env = default_broker()
    assert isinstance(from_env, ControlStoreBroker)
    assert from_env.path == tmp_path / "env" / "control.sqlite"

    made: list[tuple[str, str | None]] = []

    class HttpApprovalBroker(FailClosedBroker):
        def __init__(self, base_url: str, token: str | None = None) -> None:
            super().__init__()
            made.append((base_url, token))

    fake = types.ModuleType("tooltrail.instrumentation.http_broker")
    fake.HttpApprovalBroker = HttpApprovalBroker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tooltrail.instrumentation.http_broker", fake)
    monkeypatch.setenv("TOOLTRAIL_COLLECTOR_URL", "http://collector:4318")
    monkeypatch.setenv("TOOLTRAIL_COLLECTOR_TOKEN", "t0k")
    assert isinstance(default_broker(tmp_path), HttpApprovalBroker)  # the URL wins
    assert made == [("http://collector:4318", "t0k")]
    # Remote agents read session control from the collector, with the same token.
    monkeypatch.delitem(sys.modules, "tooltrail.instrumentation.http_broker")
    from tooltrail.instrumentation.http_broker import HttpSessionGate

    gate = _settings.install(enforce=False, data_dir=tmp_path, session_control=True).session_gate
    assert isinstance(gate, HttpSessionGate) and gate.base_url == "http://collector:4318"
    assert gate._client._token == "t0k"
    _settings.reset()


def test_missing_http_broker_fails_closed_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tooltrail.instrumentation.http_broker", None)
    monkeypatch.setenv("TOOLTRAIL_COLLECTOR_URL", "http://collector:4318")
    broker = default_broker()
    assert isinstance(broker, FailClosedBroker)
    assert "TOOLTRAIL_COLLECTOR_URL=http://collector:4318" in broker.reason
    assert "unavailable" in caplog.text
    assert broker.decided_by == "tooltrail:broker-error"


def test_session_control_needs_a_data_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOOLTRAIL_DATA", raising=False)
    monkeypatch.delenv("TOOLTRAIL_COLLECTOR_URL", raising=False)
    try:
        assert _settings.install(enforce=True, policy={"version": 1}).session_gate is None
        st = _settings.install(enforce=True, policy={"version": 1}, data_dir="somewhere")
        assert isinstance(st.session_gate, StoreSessionGate)
        assert _settings.install(enforce=False, data_dir="somewhere").session_gate is None
    finally:
        _settings.reset()


# --- session control -----------------------------------------------------------------------


def test_pause_holds_new_calls_until_resume(spans: InMemorySpanExporter, data: Path) -> None:
    control(data, "s-pause", "pause")
    with tt.session(session_id="s-pause"):
        call = InThread(lambda: status("a"))
    with tt.session(session_id="other"):
        assert status("b") == "ok"  # other sessions are not held
    # Held: the call has not started, not even its span.
    time.sleep(0.3)
    assert ran == [("status", "b")] and len(tool_spans(spans)) == 1
    control(data, "s-pause", "resume")
    assert call.join() == "ok"
    assert ran == [("status", "b"), ("status", "a")]


def test_async_pause_leaves_the_loop_free(spans: InMemorySpanExporter, data: Path) -> None:
    control(data, "s-apause", "pause")

    async def main() -> int:
        async with Ticker(interval_s=0.005) as ticker:
            with tt.session(session_id="s-apause"):
                call = asyncio.create_task(astatus("a"))
            await asyncio.sleep(0.2)
            assert not call.done() and ran == []
            await asyncio.to_thread(control, data, "s-apause", "resume")
            assert await call == "ok"
        return ticker.ticks

    assert asyncio.run(main()) >= 10


def test_call_in_flight_finishes_when_the_session_is_paused(
    spans: InMemorySpanExporter, data: Path
) -> None:
    started, release = threading.Event(), threading.Event()

    @tt.tool
    def long_job(x: str) -> str:
        started.set()
        release.wait(DEADLINE_S)
        return f"done {x}"

    with tt.session(session_id="s-flight"):
        first = InThread(lambda: long_job("1"))
        assert started.wait(DEADLINE_S)
        control(data, "s-flight", "pause")
        release.set()
        assert first.join() == "done 1"  # in flight: finishes
        started.clear()
        second = InThread(lambda: long_job("2"))
    time.sleep(0.3)
    assert not started.is_set()  # the next one waits
    control(data, "s-flight", "resume")
    assert second.join() == "done 2"


def test_cancel_denies_every_later_call(spans: InMemorySpanExporter, data: Path) -> None:
    control(data, "s-cancel", "cancel", by="sec")
    with tt.session(session_id="s-cancel"):
        for _ in range(2):
            with pytest.raises(tt.ToolCallDenied) as info:
                status("a")
            assert (info.value.rule, info.value.reason) == ("session-canceled", "session canceled")
    with tt.session(session_id="other"):
        assert status("b") == "ok"
    assert ran == [("status", "b")]
    denied = [attrs(s) for s in tool_spans(spans)][:2]
    assert all((a[TT_DECISION], a[TT_POLICY_RULE]) == ("DENY", "session-canceled") for a in denied)


def test_cancel_releases_calls_held_for_approval(spans: InMemorySpanExporter, data: Path) -> None:
    with tt.session(session_id="s-held"):
        call = InThread(lambda: deploy("prod"))
        (req,) = pending(data)
        with ControlStore(data) as store:
            store.set_session_state("s-held", "cancel", by="sec", reason="runaway")
        with pytest.raises(tt.ToolCallDenied) as info:
            call.join()
    assert info.value.reason == "approval denied by sec: session canceled: runaway"
    with ControlStore(data) as store:
        rec = store.get(req.approval_id)
    assert (rec.status, rec.decided_by) == ("denied", "sec")
    assert ran == []


def test_pause_while_held_holds_the_approved_call_until_resume(
    spans: InMemorySpanExporter, data: Path
) -> None:
    with tt.session(session_id="s-both"):
        call = InThread(lambda: deploy("prod"))
        (req,) = pending(data)
    control(data, "s-both", "pause")
    decide(data, req.approval_id, "approved", by="alice")
    time.sleep(0.3)
    assert ran == []  # approved, but the session is paused
    control(data, "s-both", "resume")
    assert call.join() == "deployed prod"


def test_store_errors_fail_closed_only_when_enforcing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with instrumented(enforce=False, data_dir=blocker, session_control=True):
        assert status("x") == "ok"  # observing only: the agent is never broken
    assert ran == [("status", "x")]
