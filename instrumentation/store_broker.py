"""The embedded control plane as the agent sees it: ``<data>/control.sqlite``.

``ControlStoreBroker`` is the default approval broker when the data directory is known:

* **Filing.** The request is stored with the arguments a person is shown: the policy's
  redactions (``request.shown_arguments``) and then the built-in credential scrubber
  (``tooltrail.redact.Redactor``), so no secret reaches the store. Two hashes are filed
  with them: ``arguments_hash``, the SHA-256 of the stored arguments (anyone can check the
  row), and ``run_hash``, the agent's keyed digest of the arguments that will really run
  (``ApprovalRequest.arguments_hash``; it reveals nothing about redacted values).
* **Waiting.** ``request`` sleeps between polls of the request's row; ``arequest`` files in
  a worker thread (a write may wait for SQLite's lock) and polls on the event loop with
  ``asyncio.sleep``, so the loop never blocks on a held call.
* **Checking.** When the wait ends the row is read again and compared with what was
  filed: tool, stored arguments, both hashes. If anything differs (the row was edited after
  filing, so a person may have approved something other than what would run) the outcome
  carries a refusal and the call does not run. The instrumentation then checks that the
  arguments in memory still match ``run_hash`` (see ``_approvals``).
* **Liveness.** While it waits the agent renews a lease on its request every
  ``heartbeat_s`` (2 s; the lease runs ``lease_s``, 10 s), so everyone else can tell
  that someone still waits. A waiter cancelled (``asyncio.CancelledError``) or interrupted
  marks its request ``abandoned`` before it goes; one that dies stops renewing, and its
  request is abandoned when the lease runs out (at once, when the reader is on the same
  host and in the same PID namespace, and sees its process gone). A decision on an
  abandoned request is refused: the call it held never ran. A waiter leaving an event
  loop never waits for SQLite's write lock there: it marks its request at once if the
  lock is free, else a background thread does (and failing that, the lease lapses).
* **Failures.** A store that cannot be opened or read is a denial (fail closed), decided
  by ``tooltrail:store-error``, whose reason names the store.

``StoreSessionGate`` reads session control (pause / resume / cancel) from the same store
for the call path: one primary-key read per tool call.

SQLite connections are per thread here (``ThreadStores``): brokers and gates are shared
by every thread and task of the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Final

from tooltrail import config
from tooltrail.control import (
    ABANDONED,
    APPROVED,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_LEASE_S,
    DEFAULT_POLL_S,
    DEFAULT_TIMEOUT_S,
    DENIED,
    ApprovalRecord,
    ControlStore,
    new_approval_id,
)
from tooltrail.control import ApprovalRequest as StoredRequest
from tooltrail.control_verify import release_refusal
from tooltrail.errors import StoreError
from tooltrail.instrumentation.broker import (
    ApprovalOutcome,
    ApprovalRequest,
    ApprovalStatus,
    notify_filed,
)
from tooltrail.redact import Redactor, scrub_stable

__all__ = ["STORE_ERROR", "ControlStoreBroker", "StoreSessionGate", "ThreadStores"]

_log = logging.getLogger("tooltrail.instrumentation")

STORE_ERROR: Final = "tooltrail:store-error"


class ThreadStores:
    """One ``ControlStore`` per thread on one data directory, opened on first use."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / config.CONTROL_FILE
        self._local = threading.local()

    def get(self) -> ControlStore:
        """This thread's store. Raises ``StoreError`` naming the store when it cannot open."""
        store: ControlStore | None = getattr(self._local, "store", None)
        if store is None:
            store = ControlStore(self.data_dir)
            self._local.store = store
        return store

    def opened(self) -> ControlStore | None:
        """This thread's store if it is open already (opening one may wait for a lock)."""
        store: ControlStore | None = getattr(self._local, "store", None)
        return store


class _OnStore:
    """What the broker and the session gate share: per-thread stores on one data
    directory, polled every ``poll_s`` while waiting."""

    def __init__(self, data_dir: str | os.PathLike[str], poll_s: float) -> None:
        self.stores = ThreadStores(data_dir)
        self.poll_s = poll_s

    @property
    def path(self) -> Path:
        return self.stores.path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.stores.data_dir)!r})"


class ControlStoreBroker(_OnStore):
    """Held calls wait for a decision in ``<data_dir>/control.sqlite`` (module docstring)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        poll_s: float = DEFAULT_POLL_S,
        redactor: Redactor | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        super().__init__(data_dir, poll_s)
        if not 0 < heartbeat_s < lease_s:
            raise ValueError(
                f"heartbeat_s ({heartbeat_s}) must be above 0 and below lease_s ({lease_s})"
            )
        self._redactor = redactor if redactor is not None else Redactor.from_env()
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s

    def request(self, request: ApprovalRequest) -> ApprovalOutcome:
        started = time.perf_counter()
        # The id is told before filing: a call given up while its row is being written
        # still names its request, whose story (abandoned) the store then tells.
        approval_id = new_approval_id()
        notify_filed(request, approval_id)
        try:
            filed = self._file(request, approval_id)
        except StoreError as e:
            return self._failed(f"the approval request could not be filed: {e}", started)
        try:
            record = self.stores.get().wait(
                filed.approval_id,
                poll_s=self.poll_s,
                heartbeat_s=self.heartbeat_s,
                deadline=filed.expires_at,
            )
        except StoreError as e:
            return self._failed(self._lost(filed, e), started, filed.approval_id)
        except BaseException as e:  # interrupted (KeyboardInterrupt, SystemExit, ...)
            self._withdraw(filed, f"the agent stopped waiting ({type(e).__name__})")
            raise
        return self._outcome(filed, record, started)

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
        started = time.perf_counter()
        approval_id = new_approval_id()
        notify_filed(request, approval_id)  # before filing, as in request
        filing = _Filing(self)
        try:
            # A write can wait for SQLite's lock (busy timeout): not on the event loop.
            filed = await asyncio.to_thread(filing.file, request, approval_id)
        except StoreError as e:
            return self._failed(f"the approval request could not be filed: {e}", started)
        except asyncio.CancelledError:
            filing.cancel(_CANCELLED)  # on the loop: withdraws without waiting
            raise
        try:
            # Reads in WAL mode never wait for writers: polling on the loop is cheap (the
            # lease renewal is one short write every heartbeat_s).
            record = await self.stores.get().await_decision(
                filed.approval_id,
                poll_s=self.poll_s,
                heartbeat_s=self.heartbeat_s,
                deadline=filed.expires_at,
            )
        except StoreError as e:
            return self._failed(self._lost(filed, e), started, filed.approval_id)
        except asyncio.CancelledError:
            self._withdraw_from_loop(filed, _CANCELLED)
            raise
        except BaseException as e:
            self._withdraw_from_loop(filed, f"the agent stopped waiting ({type(e).__name__})")
            raise
        return self._outcome(filed, record, started)

    def _withdraw(self, filed: ApprovalRecord, reason: str) -> None:
        """Mark the request abandoned as its waiter leaves, so nobody approves a call that
        will never run. Best effort: if the store cannot be written now, the lease lapses
        and the request is abandoned all the same."""
        try:
            self.stores.get().abandon(filed.approval_id, reason)
        except Exception:
            _log.warning(
                "tooltrail: could not mark approval %s abandoned; its lease will lapse",
                filed.approval_id,
                exc_info=True,
            )

    def _withdraw_from_loop(self, filed: ApprovalRecord, reason: str) -> None:
        """``_withdraw`` for a waiter on an event loop, which must not block there (SQLite's
        busy handler waits up to 30 s) and, being cancelled, cannot await: one attempt that
        does not wait for the write lock, and when the lock is busy (or this thread has no
        store open yet) the waiting write in a background thread, not awaited."""
        store = self.stores.opened()
        try:
            if store is not None and store.try_abandon(filed.approval_id, reason) is not None:
                return
        except Exception:  # as in _withdraw: the store's trouble never reaches the caller
            _log.warning(
                "tooltrail: could not mark approval %s abandoned; its lease will lapse",
                filed.approval_id,
                exc_info=True,
            )
            return
        threading.Thread(
            target=self._withdraw,
            args=(filed, reason),
            name=f"tooltrail-withdraw-{filed.approval_id}",
            daemon=True,  # never holds up the agent's exit: the lease covers a lost write
        ).start()

    # -- filing --------------------------------------------------------------------------

    def stored_request(
        self, request: ApprovalRequest, approval_id: str | None = None
    ) -> StoredRequest:
        """The store's form of ``request``: scrubbed arguments, rule settings, both hashes."""
        # To a fixed point: the store's own scrub then changes nothing (see _altered).
        shown, _ = scrub_stable(self._redactor.scrub_obj, dict(request.shown_arguments))
        approval = request.approval
        return StoredRequest(
            tool_name=request.tool,
            arguments=shown,
            timeout_s=float(approval.timeout_s) if approval is not None else DEFAULT_TIMEOUT_S,
            on_timeout=str(approval.on_timeout).upper() if approval is not None else "DENY",
            approvers=tuple(approval.approvers) if approval is not None else ("*",),
            session_id=request.session_id,
            trace_id=request.trace_id,
            span_id=request.span_id,
            agent_name=request.agent_name,
            mcp_server=request.server,
            policy_rule=request.rule,
            reason=request.reason,
            blast_radius=request.blast_radius,
            run_hash=request.arguments_hash,
            policy_version=request.policy_version,
            lease_s=self.lease_s,
            approval_id=approval_id,
        )

    def _file(self, request: ApprovalRequest, approval_id: str) -> ApprovalRecord:
        # Expiry counts from when the call was held, as ApprovalRequest.expires_at says.
        return self.stores.get().file_request(
            self.stored_request(request, approval_id), now=request.requested_at
        )

    # -- outcomes ------------------------------------------------------------------------

    def _outcome(
        self, filed: ApprovalRecord, record: ApprovalRecord, started: float
    ) -> ApprovalOutcome:
        status: ApprovalStatus = "expired"
        if record.status == APPROVED:
            status = "approved"
        elif record.status == DENIED:
            status = "denied"
        elif record.status == ABANDONED:  # our lease lapsed while we still waited
            status = "abandoned"
        return ApprovalOutcome(
            status=status,
            approval_id=record.approval_id,
            decided_by=record.decided_by,
            reason=record.decision_reason,
            wait_ms=(time.perf_counter() - started) * 1000.0,
            refusal=_altered(filed, record) or self._unverified(filed, record),
        )

    def _unverified(self, filed: ApprovalRecord, record: ApprovalRecord) -> str | None:
        """Why the decision does not verify against the ledger and the trust root (an
        approval nobody with a key gave, an edited request, an early expiry), or None."""
        try:
            refusal = release_refusal(self.stores.get(), filed, record)
        except Exception as e:  # a check that cannot run is a refusal, never a pass
            refusal = f"approval {filed.approval_id} could not be verified: {e}"
        if refusal is not None:
            _log.error("tooltrail: %s", refusal)
        return refusal

    def _failed(
        self, reason: str, started: float, approval_id: str | None = None
    ) -> ApprovalOutcome:
        _log.error("tooltrail: control store %s: %s; denying the held call", self.path, reason)
        return ApprovalOutcome(
            status="denied",
            approval_id=approval_id,
            decided_by=STORE_ERROR,
            reason=reason,
            wait_ms=(time.perf_counter() - started) * 1000.0,
        )

    @staticmethod
    def _lost(filed: ApprovalRecord, error: StoreError) -> str:
        return (
            f"the decision on approval {filed.approval_id} could not be read: {error}"
            " (with no lease renewed, the request is abandoned)"
        )


_CANCELLED: Final = "the agent stopped waiting (its call was cancelled)"


class _Filing:
    """Filing in a worker thread that the waiter may stop awaiting (its call cancelled)
    while the row is being written: exactly one side withdraws the request then, whichever
    learns second that it was both filed and given up."""

    def __init__(self, broker: ControlStoreBroker) -> None:
        self._broker = broker
        self._lock = threading.Lock()
        self._filed: ApprovalRecord | None = None
        self._gave_up: str | None = None

    def file(self, request: ApprovalRequest, approval_id: str) -> ApprovalRecord:
        filed = self._broker._file(request, approval_id)
        with self._lock:
            self._filed = filed
            gave_up = self._gave_up
        if gave_up is not None:
            self._broker._withdraw(filed, gave_up)
        return filed

    def cancel(self, reason: str) -> None:
        """Called on the event loop (the waiter's call was cancelled): never blocks."""
        with self._lock:
            self._gave_up = reason
            filed = self._filed
        if filed is not None:
            self._broker._withdraw_from_loop(filed, reason)


def _altered(filed: ApprovalRecord, record: ApprovalRecord) -> str | None:
    """Why the stored request no longer is the one filed, or None when it still is."""
    changed = [
        name
        for name, before, after in (
            ("tool", filed.tool_name, record.tool_name),
            ("arguments", filed.arguments, record.arguments),
            ("arguments_hash", filed.arguments_hash, record.arguments_hash),
            ("run_hash", filed.run_hash, record.run_hash),
        )
        if before != after
    ]
    if not changed and record.arguments_intact():
        return None
    what = ", ".join(changed) or "arguments (they no longer match their hash)"
    return (
        f"approval {record.approval_id} was changed in the control store after it was filed"
        f" ({what}); what was {record.status} is not what would run, so it does not run"
    )


class StoreSessionGate(_OnStore):
    """Session control for the call path: the state of a session, and waiting while paused."""

    def __init__(self, data_dir: str | os.PathLike[str], *, poll_s: float = DEFAULT_POLL_S):
        super().__init__(data_dir, poll_s)

    def state(self, session_id: str) -> str:
        return self.stores.get().session_state(session_id)

    def wait_while_paused(self, session_id: str) -> str:
        return self.stores.get().wait_while_paused(session_id, poll_s=self.poll_s)

    async def await_while_paused(self, session_id: str) -> str:
        return await self.stores.get().await_while_paused(session_id, poll_s=self.poll_s)
