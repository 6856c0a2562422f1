"""Approvals and session control through a ``tooltrail collect`` server, for agents that
cannot reach its disk.

``HttpApprovalBroker(base_url, token)`` files each held call with ``POST /v1/approvals``
and long-polls ``GET /v1/approvals/{id}?wait=S`` until a person approves or denies it
(``tooltrail approve``, the dashboard, or ``POST /v1/approvals/{id}/decision``) or it
expires. Standard library only (``http.client``): this runs inside agent processes.

Same semantics as the local ``ControlStoreBroker``: the arguments filed are the ones a
person is shown (the policy's redactions, then the credential scrubber), with their
SHA-256 ``arguments_hash`` (the collector refuses a request whose hash does not match) and
``run_hash``, the agent's keyed digest of the arguments that will really run. When the
wait ends, the decided request is compared with what was filed (tool, arguments, both
hashes); if anything changed, the outcome carries a refusal and the call does not run.

Its long-polls are its heartbeat: while one is parked the collector renews the request's
lease (``lease_s``, filed with the request), so an agent that stops polling (killed) leaves
a request the store marks ``abandoned``, which nobody can approve. An agent that gives up
(its call cancelled, interrupted, or waiting long past the deadline) says so at once:
``POST /v1/approvals/{id}/withdraw``.

``HttpSessionGate(base_url, token)`` reads a session's control state with
``GET /v1/sessions/{id}/control`` before each call (a *running* answer is trusted for
``refresh_s``, so a busy agent asks about a running session at most once a second) and,
while the session is paused, long-polls the same endpoint until it is resumed or
canceled. Async callers never wait on the network in the event loop.

Fail closed, always: a collector that cannot be reached or answers with an error yields
a *denied* outcome naming the cause; an outcome is never invented as approved.
``arequest`` waits in a small dedicated thread pool, one long-poll at a time, so the event
loop never blocks and the default executor is never exhausted by parked approvals. A
cancelled waiter leaves its request pending (visible to operators) until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote, urlsplit

from tooltrail.config import ENV_TRUST_ROOT
from tooltrail.control import DEFAULT_LEASE_S, arguments_hash
from tooltrail.instrumentation.broker import (
    APPROVAL_STATUSES,
    ApprovalOutcome,
    ApprovalRequest,
    ApprovalStatus,
    notify_filed,
)
from tooltrail.redact import Redactor, scrub_stable
from tooltrail.signing import jsonable

_log = logging.getLogger(__name__)

APPROVALS_PATH: Final = "/v1/approvals"
DEFAULT_TIMEOUT_S: Final = 600.0
UNREACHABLE: Final = "tooltrail:collector-unreachable"
REFUSED: Final = "tooltrail:collector-refused"
TAMPERED: Final = "tooltrail:arguments-mismatch"
GAVE_UP: Final = "tooltrail:broker-timeout"
_PENDING: Final = "pending"
# Waiting past the request's own deadline by more than this means the collector is not
# expiring it (clock skew, a broken server): stop and refuse.
_GRACE_S: Final = 120.0
_FILE_ATTEMPTS: Final = 4
_WITHDRAW_TIMEOUT_S: Final = 3.0  # an interrupted agent should not hang on its way out
_BACKOFF_S: Final = (0.2, 0.5, 1.0, 2.0, 5.0)


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class _Filed:
    approval_id: str
    record: Mapping[str, Any]


def _backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
    return _BACKOFF_S[min(failures - 1, len(_BACKOFF_S) - 1)]


class _CollectorPeer:
    """What the approval broker and the session gate share: a client of one collector,
    their long-poll timings, and the threads their long-polls park in (async waits never
    block the event loop, and parked waits never exhaust the loop's default executor;
    started on first use)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        poll_wait_s: float,
        http_timeout_s: float,
        max_waiting: int,
        pool_name: str,
    ) -> None:
        self._client = _Client(base_url, token)
        self.base_url = self._client.base_url
        self.poll_wait_s = poll_wait_s
        self.http_timeout_s = http_timeout_s
        self._max_waiting = max_waiting
        self._pool_name = pool_name
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._max_waiting, thread_name_prefix=self._pool_name
                )
            return self._executor

    def close(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None


class HttpApprovalBroker(_CollectorPeer):
    """An ``ApprovalBroker`` backed by a collector's approval endpoints.

    Args:
        base_url: the collector, e.g. ``http://127.0.0.1:4318`` (``TOOLTRAIL_COLLECTOR_URL``).
        token: its bearer token (``TOOLTRAIL_COLLECTOR_TOKEN``), if it has one.
        poll_wait_s: seconds per long-poll (the server caps it at 60).
        http_timeout_s: socket timeout beyond a long-poll's own wait.
        max_waiting: held calls ``arequest`` can wait on at once (threads).
        lease_s: how long after a long-poll ends without the next one the request counts
            as abandoned (retries back off at most 5 s, so keep it above that).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        poll_wait_s: float = 30.0,
        http_timeout_s: float = 10.0,
        max_waiting: int = 64,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        super().__init__(
            base_url,
            token,
            poll_wait_s=poll_wait_s,
            http_timeout_s=http_timeout_s,
            max_waiting=max_waiting,
            pool_name="tooltrail-approval",
        )
        self._redactor = Redactor.from_env()
        self.lease_s = lease_s

    # -- steps -----------------------------------------------------------------------------

    def _body(self, req: ApprovalRequest) -> dict[str, Any]:
        # To a fixed point: the store scrubs again, and must store exactly what was sent.
        scrubbed, _ = scrub_stable(self._redactor.scrub_obj, dict(req.shown_arguments))
        # What the server will parse back (plain JSON every language reads alike, as the
        # store keeps it): hash exactly that, so the check is meaningful.
        shown = jsonable(scrubbed)
        approval = req.approval
        return {
            "tool_name": req.tool,
            "arguments": shown,
            "arguments_hash": arguments_hash(shown),
            "timeout_s": float(approval.timeout_s) if approval else DEFAULT_TIMEOUT_S,
            "on_timeout": str(approval.on_timeout).upper() if approval else "DENY",
            "approvers": list(approval.approvers) if approval else ["*"],
            "session_id": req.session_id,
            "trace_id": req.trace_id,
            "span_id": req.span_id,
            "agent_name": req.agent_name,
            "mcp_server": req.server,
            "policy_rule": req.rule,
            "reason": req.reason,
            "blast_radius": req.blast_radius,
            "run_hash": req.arguments_hash,
            "lease_s": self.lease_s,
            "policy_version": req.policy_version,
        }

    def _file(self, req: ApprovalRequest) -> _Filed | ApprovalOutcome:
        body = self._body(req)
        last: Exception | None = None
        for attempt in range(_FILE_ATTEMPTS):
            try:
                record = self._client.call("POST", APPROVALS_PATH, body, self.http_timeout_s)
            except _HttpError as e:
                if e.status < 500:  # the collector refuses this request: retrying won't help
                    return _refused(REFUSED, f"collector refused the approval request: {e}")
                last = e
            except (OSError, http.client.HTTPException) as e:
                last = e
            else:
                if _filed_fields(record) != _filed_fields(body):
                    return _refused(TAMPERED, "the collector stored a different request")
                approval_id = record.get("approval_id")
                if not isinstance(approval_id, str):
                    return _refused(REFUSED, "collector answered without an approval id")
                return _Filed(approval_id, record)
            if attempt + 1 < _FILE_ATTEMPTS:
                time.sleep(_backoff(attempt + 1))
        return _refused(UNREACHABLE, f"cannot file the approval request: {last}")

    def _poll(self, approval_id: str, wait_s: float) -> dict[str, Any]:
        path = f"{APPROVALS_PATH}/{quote(approval_id, safe='')}?wait={wait_s:g}"
        return self._client.call("GET", path, None, wait_s + self.http_timeout_s)

    def _poll_step(self, filed: _Filed, state: _WaitState) -> ApprovalOutcome | None:
        """One long-poll; an outcome when the wait is over, None to poll again."""
        if time.monotonic() > state.give_up_at:
            self._withdraw(filed)
            return _refused(GAVE_UP, "approval still pending long past its deadline")
        try:
            record = self._poll(filed.approval_id, self.poll_wait_s)
        except (_HttpError, OSError, http.client.HTTPException) as e:
            if isinstance(e, _HttpError) and e.status < 500 and e.status != 429:
                return _refused(REFUSED, f"collector refused the approval poll: {e}", filed)
            state.failures += 1
            _log.warning("tooltrail: approval %s poll failed: %s", filed.approval_id, e)
            time.sleep(_backoff(state.failures))
            return None
        state.failures = 0
        return _outcome(filed, record, state.started)

    # -- ApprovalBroker --------------------------------------------------------------------

    def request(self, request: ApprovalRequest) -> ApprovalOutcome:
        filed = self._file(request)
        if isinstance(filed, ApprovalOutcome):
            return filed
        notify_filed(request, filed.approval_id)
        state = _WaitState.for_request(request)
        try:
            while True:
                outcome = self._poll_step(filed, state)
                if outcome is not None:
                    return outcome
        except BaseException:  # interrupted: nobody will run the call any more
            self._withdraw(filed)
            raise

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
        loop = asyncio.get_running_loop()
        pool = self._pool()
        filed = await loop.run_in_executor(pool, self._file, request)
        if isinstance(filed, ApprovalOutcome):
            return filed
        notify_filed(request, filed.approval_id)
        state = _WaitState.for_request(request)
        try:
            while True:
                outcome = await loop.run_in_executor(pool, self._poll_step, filed, state)
                if outcome is not None:
                    return outcome
        except BaseException:  # cancelled (the caller gave up): say so without waiting
            with contextlib.suppress(RuntimeError):  # the pool is shut down: the lease lapses
                pool.submit(self._withdraw, filed)
            raise

    def _withdraw(self, filed: _Filed) -> None:
        """Tell the collector this agent stopped waiting (the request becomes abandoned).
        Best effort: if it cannot be told, the request's lease lapses all the same."""
        path = f"{APPROVALS_PATH}/{quote(filed.approval_id, safe='')}/withdraw"
        # The secret the filing answer gave: the collector takes a withdrawal from the filer only.
        body = {"withdraw_secret": filed.record.get("withdraw_secret")}
        try:
            self._client.call("POST", path, body, min(self.http_timeout_s, _WITHDRAW_TIMEOUT_S))
        except Exception as e:
            _log.warning(
                "tooltrail: could not withdraw approval %s (%s); its lease will lapse",
                filed.approval_id,
                e,
            )


class _Client:
    """JSON over HTTP to the collector (one connection per call: long-polls park them)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"collector URL must be http(s)://host[:port], not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._token = token

    def call(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, default=str).encode()
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": raw[:200].decode(errors="replace")}
        if resp.status >= 300:
            message = doc.get("message") if isinstance(doc, dict) else None
            raise _HttpError(resp.status, str(message or resp.reason))
        if not isinstance(doc, dict):
            raise _HttpError(resp.status, "collector answered with a non-object")
        return doc


# --- session control ----------------------------------------------------------------------

SESSIONS_PATH: Final = "/v1/sessions"
_SESSION_STATES: Final = ("running", "paused", "canceled")
_PAUSED: Final = "paused"
# Consecutive failed polls tolerated while a paused session waits (with backoff) before
# the wait ends in an error, which denies the call when enforcing.
_MAX_POLL_FAILURES: Final = 5


class CollectorSessionError(ConnectionError):
    """The collector could not tell a session's control state (the call is then denied
    when enforcing: fail closed). ``status`` is the HTTP status, when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_NOT_FOUND: Final = 404
_BUSY: Final = (429, 503)
_MAX_CACHED_SESSIONS: Final = 10_000


class HttpSessionGate(_CollectorPeer):
    """Session control (pause / resume / cancel) read from a collector.

    Args:
        base_url: the collector (``TOOLTRAIL_COLLECTOR_URL``).
        token: its bearer token (``TOOLTRAIL_COLLECTOR_TOKEN``).
        refresh_s: how long a session's *running* state is trusted before asking again;
            a pause or cancel reaches a busy agent within this long. 0 asks every call.
        check_timeout_s: socket timeout of the check before a call (short: a collector
            that does not answer must not stall the agent long; the call is then denied
            when enforcing).
        poll_wait_s: seconds per long-poll while paused (the server caps it at 60).
        http_timeout_s: socket timeout beyond a long-poll's own wait.

    The collector answers any session id, one it has never seen too, with 200 and a state
    ("running" for a new session). Anything else fails closed: a 404 (a proxy, a wrong
    URL, a collector without session control) is a :class:`CollectorSessionError`, which
    denies the call when enforcing, as any other failure to read the state does. A busy
    collector (503) while a session is paused is polled again with backoff; the call
    keeps waiting.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        refresh_s: float = 1.0,
        check_timeout_s: float = 3.0,
        poll_wait_s: float = 30.0,
        http_timeout_s: float = 10.0,
        max_waiting: int = 64,
    ) -> None:
        super().__init__(
            base_url,
            token,
            poll_wait_s=poll_wait_s,
            http_timeout_s=http_timeout_s,
            max_waiting=max_waiting,
            pool_name="tooltrail-session",
        )
        self.refresh_s = refresh_s
        self.check_timeout_s = check_timeout_s
        # session id -> (monotonic time the answer was *asked*, state). A cached "running"
        # serves calls for refresh_s; an answer never replaces one asked for later.
        self._seen: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpSessionGate({self.base_url!r})"

    def _fetch(self, session_id: str, wait_s: float, timeout: float) -> str:
        asked = time.monotonic()
        path = f"{SESSIONS_PATH}/{quote(session_id, safe='')}/control"
        if wait_s > 0:
            path += f"?wait={wait_s:g}"
        try:
            doc = self._client.call("GET", path, None, timeout)
        except _HttpError as e:
            if e.status == _NOT_FOUND:
                # Fail closed: the collector answers every session id, a new one too, with
                # 200 and its state (running). A 404 is a proxy, a wrong URL or path prefix,
                # or a collector too old to pause or cancel: reading it as "running" would
                # silently turn pause and cancel off.
                raise CollectorSessionError(
                    f"cannot read session {session_id!r} from {self.base_url}: the session"
                    " control endpoint is not there (HTTP 404: a wrong URL or proxy, or a"
                    " collector without session control); calls are refused until it"
                    f" answers: {e}",
                    e.status,
                ) from e
            raise CollectorSessionError(
                f"cannot read session {session_id!r} from {self.base_url}: {e}", e.status
            ) from e
        except (OSError, http.client.HTTPException) as e:
            raise CollectorSessionError(
                f"cannot read session {session_id!r} from {self.base_url}: {e!r}"
            ) from e
        state = doc.get("state")
        if state not in _SESSION_STATES:
            raise CollectorSessionError(f"collector answered an unknown state {state!r}")
        self._remember(session_id, asked, str(state))
        return str(state)

    def _remember(self, session_id: str, asked: float, state: str) -> None:
        with self._lock:
            previous = self._seen.get(session_id)
            if previous is not None and previous[0] > asked:
                return  # a later question was answered already: it wins
            if len(self._seen) >= _MAX_CACHED_SESSIONS:
                self._seen.clear()
            self._seen[session_id] = (asked, state)

    def _cached(self, session_id: str) -> bool:
        with self._lock:
            seen = self._seen.get(session_id)
        return (
            seen is not None
            and seen[1] == "running"
            and time.monotonic() - seen[0] < self.refresh_s
        )

    def state(self, session_id: str) -> str:
        if self._cached(session_id):
            return "running"
        return self._fetch(session_id, 0.0, self.check_timeout_s)

    async def astate(self, session_id: str) -> str:
        """``state`` without blocking the event loop when the collector must be asked."""
        if self._cached(session_id):
            return "running"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self.state, session_id)

    def wait_while_paused(self, session_id: str) -> str:
        failures = 0
        busy = 0
        while True:
            try:
                state = self._fetch(
                    session_id, self.poll_wait_s, self.poll_wait_s + self.http_timeout_s
                )
            except CollectorSessionError as e:
                if e.status in _BUSY:  # the collector is alive, only busy: keep waiting
                    busy += 1
                    time.sleep(_backoff(busy))
                    continue
                failures += 1
                if failures >= _MAX_POLL_FAILURES:
                    raise
                _log.warning("tooltrail: session %s poll failed: %s", session_id, e)
                time.sleep(_backoff(failures))
                continue
            if state != _PAUSED:
                return state
            failures = busy = 0

    async def await_while_paused(self, session_id: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self.wait_while_paused, session_id)


@dataclass(slots=True)
class _WaitState:
    started: float
    give_up_at: float
    failures: int = 0

    @classmethod
    def for_request(cls, req: ApprovalRequest) -> _WaitState:
        timeout = float(req.approval.timeout_s) if req.approval else DEFAULT_TIMEOUT_S
        now = time.monotonic()
        return cls(started=time.perf_counter(), give_up_at=now + timeout + _GRACE_S)


def _refused(by: str, reason: str, filed: _Filed | None = None) -> ApprovalOutcome:
    _log.error("tooltrail: approval refused (%s): %s", by, reason)
    return ApprovalOutcome(
        status="denied",
        approval_id=filed.approval_id if filed else None,
        decided_by=by,
        reason=reason,
    )


_FILED_FIELDS: Final = ("tool_name", "arguments", "arguments_hash", "run_hash")


def _filed_fields(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(doc.get(name) for name in _FILED_FIELDS)


def _altered(filed: _Filed, record: Mapping[str, Any]) -> str | None:
    """Why the decided request is not the one filed, or None when it still is."""
    changed = [
        name
        for name, before, after in zip(
            _FILED_FIELDS, _filed_fields(filed.record), _filed_fields(record), strict=True
        )
        if before != after
    ]
    arguments = record.get("arguments")
    intact = isinstance(arguments, dict) and arguments_hash(arguments) == record.get(
        "arguments_hash"
    )
    if not changed and intact:
        return None
    what = ", ".join(changed) or "arguments (they no longer match their hash)"
    return (
        f"approval {filed.approval_id} was changed on the collector after it was filed"
        f" ({what}); what was {record.get('status')} is not what would run, so it does not run"
    )


def _outcome(filed: _Filed, record: Mapping[str, Any], started: float) -> ApprovalOutcome | None:
    status = record.get("status")
    if status == _PENDING:
        return None
    if status not in APPROVAL_STATUSES:
        return _refused(REFUSED, f"collector answered an unknown status {status!r}", filed)
    return ApprovalOutcome(
        status=cast(ApprovalStatus, status),
        approval_id=filed.approval_id,
        decided_by=_str_or_none(record.get("decided_by")),
        reason=_str_or_none(record.get("decision_reason")),
        wait_ms=(time.perf_counter() - started) * 1000.0,
        refusal=_altered(filed, record) or _unverified(filed, record),
    )


def _unverified(filed: _Filed, record: Mapping[str, Any]) -> str | None:
    """With a pinned trust root (``$TOOLTRAIL_TRUST_ROOT``), why an approval the collector
    reports does not verify on this side (None: it does, or no root is pinned, in which
    case the collector's answer over its authenticated channel is what is trusted)."""
    pinned = os.environ.get(ENV_TRUST_ROOT, "").strip()
    if not pinned:
        return None
    if record.get("status") == "expired":
        # Expiry is not signed: the waiter checks it against the deadline it was given when
        # it filed (an early "expired" would run an on_timeout ALLOW call). A second of
        # slack for the two machines' clocks.
        deadline = filed.record.get("expires_at")
        if isinstance(deadline, (int, float)) and time.time() + 1.0 < deadline:
            return f"it is marked expired before its deadline ({deadline:.3f})"
        return None
    if record.get("status") != "approved":
        return None
    from tooltrail import ledger
    from tooltrail.control_verify import approval_problem, record_from_json
    from tooltrail.errors import StoreError
    from tooltrail.signing import read_trust_file

    try:
        trust = read_trust_file(Path(pinned))
        evidence = record.get("decision")
        if not isinstance(evidence, dict) or not isinstance(evidence.get("body"), str):
            problem: str | None = "the collector sent no signed decision"
        else:
            entry = ledger.Entry(
                0,
                "decision",
                filed.approval_id,
                evidence["body"],
                "",
                _str_or_none(evidence.get("key_id")),
                _str_or_none(evidence.get("signature")),
            )
            problem = approval_problem(entry, record_from_json(filed.record), trust)
    except (StoreError, ValueError, TypeError) as e:
        problem = f"it cannot be checked ({e})"
    if problem is None:
        return None
    return (
        f"approval {filed.approval_id} does not verify against the trust root {pinned}:"
        f" {problem}; the held call does not run"
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["CollectorSessionError", "HttpApprovalBroker", "HttpSessionGate"]
