"""``tooltrail collect``: an OTLP/HTTP receiver that lands spans like the in-process exporter.

Remote agents (other machines, other languages, any OTel SDK, OpenLLMetry, OpenInference)
send ``POST /v1/traces``; the collector runs the same normalizer, the same policy hook
(:func:`~tooltrail.collector.pipeline.policy_row_hook`) and the same Parquet writer as
:class:`~tooltrail.collector.exporter.TooltrailSpanExporter`, so a span lands as the
same row whichever way it arrives.

Server: the standard library's ``ThreadingHTTPServer`` (HTTP/1.1, keep-alive). The load is
a few dozen requests per second of 512-span batches, so per-request HTTP cost is
negligible next to decoding and landing; approval long-polls park a thread each, bounded
by ``max_waiters``. No new dependency (starlette/uvicorn come only with the ``mcp`` extra).
Hardened for the clients it may face (docs/COLLECTOR.md, "HTTP details"): connections are
capped (``max_connections``: more get 503 and close, without a thread), request headers and
bodies have overall deadlines (``header_timeout_s``), ambiguous framing is refused, and an
answer sent with body bytes unread closes the connection.

Durability (``durability``):

* ``spool`` (default): each accepted request is appended to a write-ahead segment and
  fdatasync'd before the 200; a lander thread turns segments into Parquet (see
  :mod:`tooltrail.collector.spool`). Back-pressure: when the unlanded backlog passes
  ``max_backlog_bytes`` the collector answers 503 with Retry-After.
* ``direct``: each request is normalized and landed as its own atomic Parquet file before
  the 200. Back-pressure: at most ``max_inflight`` requests land at once; more get 503.

bench/ingest.py measures both; docs/COLLECTOR.md has the figures and the choice.

One file past 600 lines: it holds the collector's config, metrics, instance lock, the
``Collector`` (ingest, spool landing, views) and the connection core every route shares:
``BaseHTTPRequestHandler`` serves a connection with one handler class, whose framing,
deadline, credential and answer helpers and dispatch (``_Handler``) are here. The routes
are mixins of it, each in its own module: ``http_traces`` (OTLP), ``http_approvals``
(approvals, decisions, withdrawals, the long-poll), ``http_sessions`` (session control),
``http_events`` (SSE); what they may use of the core is the ``HandlerCore`` Protocol in
``http_core``. What the routes do to the store lives below them (pipeline.py, landing.py,
approvals_http.py, ``tooltrail.events``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hmac
import io
import json
import logging
import os
import re
import resource
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest

from tooltrail import access
from tooltrail import semconv as sc
from tooltrail._net import is_loopback
from tooltrail.access import Principal
from tooltrail.collector import approvals_http as apr
from tooltrail.collector.access_http import AccessGate
from tooltrail.collector.http_approvals import ApprovalRoutes
from tooltrail.collector.http_events import EventRoutes
from tooltrail.collector.http_sessions import SessionRoutes
from tooltrail.collector.http_traces import TraceRoutes
from tooltrail.collector.landing import Lander, RequestPipeline, wait_for_old_workers
from tooltrail.collector.receiver import (
    CT_JSON,
    Limits,
    RequestRejected,
    media_type,
    read_request,
    stamp_sender,
    status_body,
    success_body,
)
from tooltrail.collector.spool import (
    DEFAULT_QUARANTINE_RETENTION_S,
    DEFAULT_SEGMENT_BYTES,
    Landed,
    Spool,
    quarantine,
    quarantine_dir,
    sweep_quarantine,
)
from tooltrail.errors import BadInputError, NotAuthenticatedError, StoreError, TooltrailError
from tooltrail.webhooks import Deliverer

if TYPE_CHECKING:
    from socketserver import _RequestType

    from _typeshed import WriteableBuffer

    from tooltrail.collector.retention import RetentionLoop
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

Durability = Literal["spool", "direct"]
DURABILITY_MODES: Final = ("spool", "direct")
DEFAULT_PORT: Final = 4318
LOCK_FILE: Final = "collector.lock"
TRACES_PATH: Final = "/v1/traces"
APPROVALS_PATH: Final = "/v1/approvals"
DECISION_SUFFIX: Final = "/decision"
WITHDRAW_SUFFIX: Final = "/withdraw"
SESSIONS_PATH: Final = "/v1/sessions"
EVENTS_PATH: Final = "/v1/events"
CONTROL_SUFFIX: Final = "/control"
METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
CT_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_APPROVAL_BODY: Final = 1024 * 1024
# A body the answer does not need is read and discarded (up to these sizes) so that the
# client sees the answer: closing on unread data makes the kernel reset the connection,
# which can destroy the answer before the client reads it. Over the cap (or chunked, or
# held back for ``100 Continue``) the body is left unread and the connection closed.
_DRAIN_CAP: Final = 256 * 1024 * 1024  # over --max-body, from an authenticated sender
_UNAUTH_DRAIN_CAP: Final = 1024 * 1024  # 401 / 404 / 405: whoever sent it
_GET_BODY_CAP: Final = 64 * 1024  # a GET's body means nothing: dropped
_SOCKET_TIMEOUT_S: Final = 60.0
# A body must arrive at this rate at least (plus the header allowance): a sender that
# trickles bytes cannot hold a connection thread for ever.
_MIN_BODY_RATE: Final = 64 * 1024
_CONTENT_LENGTH_RE: Final = re.compile(r"[0-9]{1,18}")
_RETRY_AFTER_S: Final = 1
_LANDER_RETRY_S: Final = 1.0
# A segment with no append for a tenth of the flush interval (100 ms by default) is sealed
# at once: the burst that filled it is over, so its spans become queryable without waiting
# out the interval (yet a steady sender's batches, tens of ms apart, still share a segment,
# hence a Parquet file).
_IDLE_FRACTION: Final = 0.1
_MIN_IDLE_SEAL_S: Final = 0.05
_NO_FILES_PAUSE_S: Final = 0.05
# A header line: a token, a colon right after it, a value with no line break (RFC 9112 §5).
_HEADER_LINE_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*")
# Files the collector needs besides its connections (listener, spool, store, pipes, logs).
_FILES_RESERVED: Final = 64


def default_workers() -> int:
    """Landing processes: one per core (the receiver itself needs little: it decodes,
    validates and fsyncs; normalizing and writing Parquet is the work)."""
    return max(1, os.cpu_count() or 1)


class InstanceLockedError(StoreError):
    """Another collector already serves this data directory."""


@dataclass(frozen=True)
class CollectorConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    policy: str | os.PathLike[str] | Policy | None = None
    token: str | None = None
    # Decisions need this token when set (recommended: agents must not approve themselves);
    # otherwise they need ``token``; with neither, decisions over HTTP are refused.
    decision_token: str | None = None
    durability: Durability = "spool"
    limits: Limits = field(default_factory=Limits)
    max_backlog_bytes: int = 256 * 1024 * 1024
    flush_interval_s: float = 1.0
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    max_inflight: int = 4
    max_waiters: int = 256
    # Connections served at once (each holds a thread); more are answered 503 and closed.
    # Also bounded by half the open-file limit, so the refusal itself still finds a file.
    max_connections: int = 512
    # Seconds a connection has for a request line and headers, from when it is ready for
    # one (an idle keep-alive connection is closed after this long; senders reconnect).
    header_timeout_s: float = 15.0
    redact: bool | None = None
    # Seconds notes of set-aside spans are kept in spool/quarantine (they hold ids and
    # reasons only; the retention bounds the directory, and ends raw segments an older
    # release quarantined).
    quarantine_retention_s: float = DEFAULT_QUARANTINE_RETENTION_S
    # Processes that normalize and write Parquet (0: in the collector process itself).
    workers: int = field(default_factory=default_workers)
    # Event streams (GET /v1/events) open at once; each holds a connection thread for as
    # long as its client reads (see stream_cap). More are answered 503.
    max_streams: int = 32
    # Seconds of silence after which a stream sends a keep-alive comment.
    events_heartbeat_s: float = 15.0
    # Deliver webhooks (tooltrail webhooks add) from this process.
    webhooks: bool = True
    # Apply retention (an age: 90d) on start and every retention_every_s seconds, in a
    # thread of its own (collector/retention.py, RetentionLoop); None: never.
    retention: str | None = None
    retention_every_s: float = 3600.0

    def check(self) -> None:
        """Refuse unsafe or impossible settings with a message naming the option."""
        if self.durability not in DURABILITY_MODES:
            raise BadInputError(f"--durability must be one of {', '.join(DURABILITY_MODES)}")
        if not is_loopback(self.host) and not self.token and not access.enabled(self.data_dir):
            raise BadInputError(
                f"refusing to listen on non-loopback address {self.host!r} without --token"
                " or access control (tooltrail users add): anyone who can reach it could"
                " write spans and file approvals"
            )
        if self.workers < 0:
            raise BadInputError("--workers must be 0 or more")
        if self.max_streams < 1:
            raise BadInputError("max_streams must be 1 or more")
        if not self.events_heartbeat_s > 0:
            raise BadInputError("events_heartbeat_s must be more than 0 seconds")
        if self.max_connections < 2:
            raise BadInputError("max_connections must be 2 or more")
        if not self.header_timeout_s > 0:
            raise BadInputError("header_timeout_s must be more than 0 seconds")
        if not self.quarantine_retention_s > 0:
            raise BadInputError("quarantine_retention_s must be more than 0 seconds")
        if self.retention is not None:
            from tooltrail.collector.retention import retention_seconds

            if not self.retention.strip():
                raise BadInputError("--retention is empty: give an age (90d) or leave it out")
            retention_seconds(self.retention, option="--retention")
        if not self.retention_every_s > 0:
            raise BadInputError("--retention-every must be a positive duration")
        for name in ("token", "decision_token"):
            value = getattr(self, name)
            if value is not None and len(value) < 16:
                raise BadInputError(f"--{name.replace('_', '-')} must be at least 16 characters")

    def connection_cap(self) -> int:
        """``max_connections``, bounded by half of the open-file limit less a reserve (the
        rest serves the waiters' control-store files, the spool, the workers' pipes, and
        accepting a connection to refuse it)."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(2, min(self.max_connections, (soft - _FILES_RESERVED) // 2))

    def stream_cap(self) -> int:
        """Event streams open at once: at most a quarter of the connections (as waiters),
        so that streams never hold the threads senders and approvers need."""
        return max(1, min(self.max_streams, self.connection_cap() // 4))

    def waiter_cap(self) -> int:
        """Long-polls parked at once: at most a quarter of the connections, so they never
        hold the connection threads the senders need, nor the files: a waiter keeps its
        control-store connection open (the database, its WAL and shared-memory files:
        three more descriptors), so the cap's connections with their waiters stay within
        seven eighths of the open-file limit."""
        return max(1, min(self.max_waiters, self.connection_cap() // 4))


# --- metrics -----------------------------------------------------------------------------

_COUNTERS: Final = {
    "requests_total": "HTTP requests answered, by path kind and status code.",
    "spans_received_total": "Spans in decoded trace requests.",
    "spans_accepted_total": "Spans acknowledged (durable) to senders.",
    "spans_rejected_total": "Invalid spans dropped from accepted requests (partial success).",
    "spans_landed_total": "Rows landed in Parquet.",
    "spans_duplicate_skipped_total": (
        "Rows found already landed (a segment landed again, a batch sent again)."
    ),
    "spans_set_aside_total": (
        "Spans that could not be normalized or decided, set aside alone (ids and reason "
        "noted in spool/quarantine); the rest of their batch landed."
    ),
    "spans_foreign_session_total": (
        "Spans an agent's credential sent into a session another agent holds: landed "
        "claimed (verified false, source agent:<sender>/session-of:<holder>)."
    ),
    "requests_shed_total": "Trace requests answered 503 to shed load.",
    "landing_errors_total": "Failed attempts to land a spool segment (retried).",
    "segments_quarantined_total": (
        "Spool segments that could not be landed at all (their span ids noted in "
        "spool/quarantine, the raw segment deleted)."
    ),
    "spool_records_forged_total": (
        "Spool records whose MAC did not verify (planted or edited in the data directory, "
        "or written under another chain key): not landed, their span ids noted in "
        "spool/quarantine (their spans count in spans_set_aside_total too)."
    ),
    "spool_records_unauthenticated_total": (
        "Records of TTSPOOL1 spool segments (no MAC: written before records were "
        "authenticated, or planted): landed claimed (verified false, source "
        "spool-unauthenticated:<stamp>)."
    ),
    "approvals_filed_total": "Approval requests filed over HTTP.",
    "session_controls_total": "Session pause / resume / cancel changes made over HTTP.",
    "approval_decisions_total": "Approval decisions made over HTTP.",
    "approvals_withdrawn_total": "Approval requests withdrawn over HTTP by their agent.",
    "connections_refused_total": "Connections answered 503 and closed: too many were open.",
    "event_streams_total": "Event streams (GET /v1/events) opened.",
    "events_sent_total": "Events written to event streams.",
    "retention_runs_total": "Retention passes completed (--retention).",
    "retention_sessions_deleted_total": "Terminal sessions deleted by retention.",
    "retention_rows_deleted_total": "Rows deleted by retention.",
    "retention_failures_total": "Retention passes that failed (logged; retried next pass).",
}
_LABELS: Final = {"requests_total": ("kind", "code")}
METRIC_PREFIX: Final = "tooltrail_collector_"


class Metrics:
    """``GET /metrics``: prometheus-client metrics in a registry of this collector's own
    (never the process-global one: two collectors in one process, as in tests, must not
    share or clash), with the process collector (CPU, memory, open and maximum file
    descriptors). Values print in full precision and label values are escaped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self._counters: dict[str, Counter] = {
            name: Counter(
                METRIC_PREFIX + name,
                help_text,
                labelnames=_LABELS.get(name, ()),
                registry=self.registry,
            )
            for name, help_text in _COUNTERS.items()
        }
        ProcessCollector(registry=self.registry)

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        counter = self._counters[name]
        if labels:
            counter.labels(**labels).inc(value)
        else:
            counter.inc(value)

    def get(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(METRIC_PREFIX + name, labels)
        return 0.0 if value is None else value

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A gauge read when ``/metrics`` is scraped."""
        Gauge(METRIC_PREFIX + name, help_text, registry=self.registry).set_function(read)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


# --- instance lock -----------------------------------------------------------------------


class InstanceLock:
    """``<data>/collector.lock`` held with flock for the collector's lifetime.

    A second collector on the same data directory is refused: two spools landing into
    one directory would be safe for the Parquet files but not for crash recovery (each
    would land the other's live segments).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, describe: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InstanceLockedError(
                f"another tooltrail collect already serves {self.path.parent} ({holder}); "
                "stop it first, or give this one its own --data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, describe.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- the collector -------------------------------------------------------------------------


class Collector:
    """Ingest, landing, approvals and metrics; the HTTP handler only translates."""

    def __init__(self, cfg: CollectorConfig) -> None:
        cfg.check()
        self.cfg = cfg
        self.data_dir = cfg.data_dir
        self.metrics = Metrics()
        # Derives each approval request's withdraw secret (apr.withdraw_secret); random per
        # process: after a restart an agent's withdrawal is refused and its lease lapses.
        self.withdraw_key = secrets.token_bytes(32)
        self.access = AccessGate(cfg.data_dir)
        self.lander = Lander(cfg.data_dir, cfg.policy, cfg.redact, cfg.workers)
        self.stop = threading.Event()
        self._lock = InstanceLock(cfg.data_dir)
        self._spool: Spool | None = None
        self._landing: dict[Path, Future[Landed]] = {}
        self._swept = 0.0  # monotonic time of the last quarantine sweep
        self._inflight = threading.BoundedSemaphore(cfg.max_inflight)
        self._waiters = threading.BoundedSemaphore(cfg.waiter_cap())
        self._streams = threading.BoundedSemaphore(cfg.stream_cap())
        self._open_streams = 0
        self._streams_lock = threading.Lock()
        self.deliverer: Deliverer | None = None
        self.retention: RetentionLoop | None = None
        self._lander: threading.Thread | None = None
        self._wake = threading.Event()
        self.last_landing_error: str | None = None
        for name, (help_text, read) in self._gauges().items():
            self.metrics.gauge(name, help_text, read)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, describe: str) -> None:
        self._lock.acquire(describe)
        try:
            if not wait_for_old_workers(self.data_dir):
                raise StoreError(
                    f"landing workers of an earlier collector on {self.data_dir} are still "
                    "running; stop them before starting a new one"
                )
            self.lander.warm_up()
            self.sweep_quarantine()
            if self.cfg.durability == "spool":
                self._spool = Spool(self.data_dir, segment_bytes=self.cfg.segment_bytes)
                left = self._spool.recover()
                if left:
                    _log.warning("landing %d spool segment(s) left by a previous run", len(left))
                    self.land_pending()
                self._lander = threading.Thread(
                    target=self._land_loop, name="tooltrail-lander", daemon=True
                )
                self._lander.start()
            self._start_deliverer()
            self._start_retention()
        except BaseException:
            self.lander.close()
            self._lock.release()
            raise

    def _start_deliverer(self) -> None:
        """Webhooks are delivered from here unless another process does it already."""
        if not self.cfg.webhooks:
            return
        deliverer = Deliverer(self.data_dir)
        try:
            deliverer.start()
        except StoreError as e:
            _log.warning("tooltrail collect: not delivering webhooks: %s", e)
            deliverer.close()
            return
        self.deliverer = deliverer

    def _start_retention(self) -> None:
        """Retention by age from this process (--retention), off the landing path."""
        if self.cfg.retention is None:
            return
        from tooltrail.collector.retention import RetentionLoop

        names = {
            "runs": "retention_runs_total",
            "sessions": "retention_sessions_deleted_total",
            "rows": "retention_rows_deleted_total",
            "failures": "retention_failures_total",
        }
        self.retention = RetentionLoop(
            self.data_dir,
            self.cfg.retention,
            self.cfg.retention_every_s,
            count=lambda what, n: self.metrics.add(names[what], n),
        )
        self.retention.start()

    def close(self) -> None:
        """Stop landing in the background, land what is spooled, release the lock."""
        self.stop.set()
        self._wake.set()
        if self.retention is not None:
            self.retention.stop()
        if self.deliverer is not None:
            self.deliverer.close()
        if self._lander is not None:
            self._lander.join()
        if self._spool is not None:
            self._spool.close()
            self.land_pending()
        self.lander.close()
        self._lock.release()

    # -- ingest ----------------------------------------------------------------------------

    def shed(self) -> bool:
        """Whether a trace request must be refused (503) to bound the backlog."""
        spool = self._spool
        return spool is not None and spool.backlog_bytes >= self.cfg.max_backlog_bytes

    def ingest(
        self,
        content_type: str | None,
        encoding: str | None,
        body: bytes,
        *,
        sender: str = sc.SOURCE_OTLP,
    ) -> bytes:
        """Decode, validate, make durable; returns the 200 body. Raises RequestRejected.

        ``sender`` is stamped on every resource of the request (stamp_sender), so the
        landed rows say who sent them whichever process lands them."""
        accepted = stamp_sender(read_request(content_type, encoding, body, self.cfg.limits), sender)
        self.metrics.add("spans_received_total", accepted.spans + accepted.rejected)
        self.metrics.add("spans_rejected_total", accepted.rejected)
        rejected, message = accepted.rejected, accepted.error_message
        if accepted.spans:
            acked = accepted.spans
            if self._spool is not None:
                self._append(accepted.payload)
            else:
                # Direct mode lands before it answers: spans set aside while landing are
                # rejected in the answer, as invalid spans are (OTLP partial success).
                aside = self._land_direct(accepted.payload)
                if aside:
                    acked -= aside
                    rejected += aside
                    note = f"{aside} span(s) could not be normalized and were set aside"
                    message = f"{message}; {note}" if message else note
            self.metrics.add("spans_accepted_total", acked)
        return success_body(media_type(content_type), rejected, message)

    def _append(self, payload: bytes) -> None:
        assert self._spool is not None
        try:
            self._spool.append(payload)
        except OSError as e:
            _log.error("tooltrail collect: cannot append to the spool: %s", e)
            raise RequestRejected(503, f"spool unavailable: {e.strerror or e}") from e
        if self._spool.backlog_bytes >= self.cfg.segment_bytes:
            self._wake.set()

    def _land_direct(self, payload: bytes) -> int:
        """Land a request now; returns how many of its spans were set aside."""
        if not self._inflight.acquire(blocking=False):
            self.metrics.add("requests_shed_total")
            raise RequestRejected(503, "too many requests landing at once; retry")
        try:
            landed = self.lander.land_payload(payload)
        except (OSError, BrokenProcessPool) as e:
            self.lander.broken(e)
            _log.error("tooltrail collect: cannot land: %s", e)
            raise RequestRejected(503, f"cannot land: {e}") from e
        finally:
            self._inflight.release()
        self._count(landed)
        self.sweep_quarantine()  # hourly at most: direct mode has no landing loop
        return landed.set_aside

    def _count(self, landed: Landed) -> None:
        self.metrics.add("spans_landed_total", landed.landed)
        self.metrics.add("spans_duplicate_skipped_total", landed.skipped)
        self.metrics.add("spans_foreign_session_total", landed.foreign)
        if landed.forged:
            self.metrics.add("spool_records_forged_total", landed.forged)
            _log.error(
                "tooltrail collect: %d spool record(s) failed authentication (planted or "
                "edited in the data directory?): not landed, span ids noted in %s",
                landed.forged,
                quarantine_dir(self.data_dir),
            )
        if landed.unauthenticated:
            self.metrics.add("spool_records_unauthenticated_total", landed.unauthenticated)
            _log.warning(
                "tooltrail collect: landed %d record(s) of a TTSPOOL1 spool segment (no MAC) "
                "with their decisions claimed (source spool-unauthenticated:...)",
                landed.unauthenticated,
            )
        if landed.set_aside:
            self.metrics.add("spans_set_aside_total", landed.set_aside)
            _log.error(
                "tooltrail collect: set aside %d span(s) that could not be landed "
                "(ids and reasons in %s)",
                landed.set_aside,
                quarantine_dir(self.data_dir),
            )

    def sweep_quarantine(self, every_s: float = 3600.0) -> None:
        """Delete quarantine notes past their retention (at most once per ``every_s``)."""
        now = time.monotonic()
        if self._swept and now - self._swept < every_s:
            return
        self._swept = now
        try:
            removed = sweep_quarantine(self.data_dir, self.cfg.quarantine_retention_s)
        except OSError as e:
            _log.warning("tooltrail collect: cannot sweep the quarantine: %s", e)
            return
        if removed:
            _log.info("tooltrail collect: removed %d quarantine file(s) past retention", removed)

    # -- landing (spool mode) --------------------------------------------------------------

    def _land_loop(self) -> None:
        assert self._spool is not None
        interval = self.cfg.flush_interval_s
        while not self.stop.is_set():
            self._wake.wait(timeout=max(interval / 8, 0.01))
            self._wake.clear()
            idle_s = max(interval * _IDLE_FRACTION, _MIN_IDLE_SEAL_S)
            self._spool.seal(older_than_s=interval, idle_s=idle_s)
            self.sweep_quarantine()
            if not self._pump(block=False) and not self.stop.is_set():
                self.stop.wait(_LANDER_RETRY_S)  # the data dir failed: back off

    def land_pending(self) -> bool:
        """Land every sealed segment now; False when landing hit an I/O error."""
        assert self._spool is not None
        while self._spool.sealed():
            if not self._pump(block=True):
                return False
        return True

    def _pump(self, *, block: bool) -> bool:
        """Hand sealed segments to the lander, settle finished ones; False on I/O error."""
        spool = self._spool
        assert spool is not None
        limit = max(1, self.cfg.workers)
        for segment in spool.sealed():
            if segment in self._landing or len(self._landing) >= limit:
                continue
            if not segment.exists():  # landed by a dying collector's worker
                spool.done(segment)
                continue
            future = self.lander.submit_segment(segment)
            future.add_done_callback(lambda _: self._wake.set())
            self._landing[segment] = future
        ok = True
        for segment, future in list(self._landing.items()):
            if not block and not future.done():
                continue
            del self._landing[segment]
            ok = self._settle(segment, future) and ok
        return ok

    def _settle(self, segment: Path, future: Future[Landed]) -> bool:
        assert self._spool is not None
        try:
            landed = future.result()
        except (OSError, BrokenProcessPool) as e:
            self.lander.broken(e)
            self.metrics.add("landing_errors_total")
            self.last_landing_error = f"{segment.name}: {e}"
            _log.error("tooltrail collect: cannot land %s (will retry): %s", segment, e)
            return False
        except Exception as e:
            # Landing sets bad spans aside one by one; this is a failure of the whole
            # segment no span explains (a bug). Keep the landing loop alive for every
            # other segment, note the segment's span ids, never keep its raw values.
            reason = f"the segment could not be landed: {type(e).__name__}"
            try:
                noted = quarantine(segment, self.data_dir, reason)
            except OSError as io_error:
                self.metrics.add("landing_errors_total")
                self.last_landing_error = f"{segment.name}: {io_error}"
                return False  # the segment stays, to be retried
            self._spool.done(segment)
            self.metrics.add("segments_quarantined_total")
            # The type only, here and in the log: an exception's text may quote a value.
            self.last_landing_error = f"{segment.name}: {reason}"
            _log.error("tooltrail collect: %s: %s (span ids noted in %s)", segment, reason, noted)
            return True
        self._spool.done(segment)
        self.last_landing_error = None
        self._count(landed)
        return True

    # -- views -----------------------------------------------------------------------------

    def backlog_bytes(self) -> int:
        spool = self._spool
        return spool.backlog_bytes if spool is not None else 0

    def _gauges(self) -> dict[str, tuple[str, Callable[[], float]]]:
        def sealed() -> float:
            spool = self._spool
            return len(spool.sealed()) if spool is not None else 0

        return {
            "spool_backlog_bytes": ("Bytes acknowledged and not yet landed.", self.backlog_bytes),
            "spool_sealed_segments": ("Sealed spool segments waiting to land.", sealed),
            "uptime_seconds": ("Seconds since start.", lambda: time.time() - self.metrics.started),
            "event_streams_open": ("Event streams (GET /v1/events) open.", self.open_streams),
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz`` (no token needed): states and counts, never a server path."""
        lander_ok = self._lander is None or self._lander.is_alive()
        error = self.last_landing_error
        ok = lander_ok and error is None
        doc: dict[str, Any] = {
            "status": "ok" if ok else "degraded",
            "durability": self.cfg.durability,
            "backlog_bytes": self.backlog_bytes(),
            "landing_error": None if error is None else self.public(error),
        }
        return (200 if ok else 503), doc

    def public(self, message: str) -> str:
        """``message`` fit for an HTTP answer: the data directory's path (in OSError and
        store messages) replaced by ``<data>``, so callers learn nothing of the server's
        file system; the collector's log keeps the full message."""
        for shown in self._data_paths:
            message = message.replace(shown, "<data>")
        return message

    @functools.cached_property
    def _data_paths(self) -> tuple[str, ...]:
        # Longest first: the resolved path may extend the given one (a symlinked /tmp).
        # Absolute forms only: a relative one ("data") would also hit ordinary words.
        paths = {str(self.data_dir.resolve()), str(self.data_dir.absolute())}
        return tuple(sorted(paths, key=len, reverse=True))

    # -- approvals -------------------------------------------------------------------------

    def try_wait_slot(self) -> bool:
        return self._waiters.acquire(blocking=False)

    def release_wait_slot(self) -> None:
        self._waiters.release()

    # -- event streams ---------------------------------------------------------------------

    def try_stream_slot(self) -> bool:
        if not self._streams.acquire(blocking=False):
            return False
        with self._streams_lock:
            self._open_streams += 1
        return True

    def release_stream_slot(self) -> None:
        with self._streams_lock:
            self._open_streams -= 1
        self._streams.release()

    def open_streams(self) -> float:
        with self._streams_lock:
            return self._open_streams


# --- HTTP -----------------------------------------------------------------------------------


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each given only what is left of a deadline.

    A socket timeout bounds each read alone, so a client sending a byte every 59 s would
    hold its connection thread for ever. The handler arms a deadline for the request line
    and headers, and one for a body; while one is armed every read gets the time left.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline: float | None = None
        self._what = ""

    def arm(self, seconds: float, what: str) -> None:
        self._deadline = time.monotonic() + seconds
        self._what = what

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline = None
            self._sock.settimeout(_SOCKET_TIMEOUT_S)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self._what} took too long")
            self._sock.settimeout(min(left, _SOCKET_TIMEOUT_S))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _LineRecorder:
    """A reader that keeps every line read through it (the request's header lines)."""

    __slots__ = ("_fp", "lines")

    def __init__(self, fp: Any) -> None:
        self._fp = fp
        self.lines: list[bytes] = []

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self._fp.readline(limit)
        self.lines.append(line)
        return line


class _Handler(TraceRoutes, ApprovalRoutes, SessionRoutes, EventRoutes, BaseHTTPRequestHandler):
    """One connection: framing, deadlines, credentials, answers and dispatch; the routes
    are the mixins (what they use of this class is ``http_core.HandlerCore``)."""

    protocol_version = "HTTP/1.1"
    server_version = "tooltrail-collect"

    def version_string(self) -> str:
        return self.server_version

    timeout = _SOCKET_TIMEOUT_S
    server: CollectorHTTPServer
    _answered = False
    # The request body's state, reset per request: its Content-Length, the bytes of it
    # not read yet, whether it is chunked (never read here), and whether the client holds
    # it back until ``100 Continue``. An answer sent with body bytes unread closes the
    # connection (see _send): reading on would take them for the next request.
    _declared: int | None = None
    _header_lines: list[bytes] = []  # noqa: RUF012 - replaced per request, never mutated
    _unread = 0
    _chunked = False
    _awaiting_continue = False

    # Quiet: per-request lines would cost more than the request at full load.
    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    @property
    def collector(self) -> Collector:
        return self.server.collector

    # -- connection ------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the standard reader, replaced by one under deadlines
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._declared, self._unread, self._chunked = None, 0, False
        self._awaiting_continue = False
        # One deadline for the request line and all headers (also how long a keep-alive
        # connection may idle before its next request).
        self._reader.arm(self.server.header_timeout_s, "the request line and headers")
        super().handle_one_request()

    def parse_request(self) -> bool:
        # The header lines as sent, for _malformed_headers: the stdlib's parser reads a
        # bare CR as a line break and drops what it cannot read into a "payload".
        rfile = self.rfile
        recorder = _LineRecorder(rfile)
        self.rfile = recorder  # type: ignore[assignment]  # parse_headers only calls readline
        try:
            return super().parse_request()
        finally:
            self.rfile = rfile
            self._header_lines = recorder.lines

    def handle_expect_100(self) -> bool:
        # ``100 Continue`` is sent only when the body is about to be read, after the
        # token, framing and size checks: a refused request gets its final answer at once
        # and its body is never sent.
        self._awaiting_continue = True
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line or header,
        headers too large, an unknown method) as a ``google.rpc.Status`` JSON body like
        every other error. The connection closes: where the request's body ends is not
        known."""
        self.close_connection = True
        self._reader.disarm()
        if self.request_version == "HTTP/0.9":  # unparsed: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = f"error {code}"
        self.log_error("code %d, message %s", code, text)
        self._error(code, text, kind="other")

    # -- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        kind: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._answered = True
        if self._chunked or self._unread:
            self.close_connection = True  # body bytes unread: see the class attributes
        self.send_response(status)
        if status != 204:  # a 204 has no body, hence neither of these (RFC 9110 §8.6)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.collector.metrics.add("requests_total", kind=kind, code=str(status))

    def _json(
        self, status: int, doc: Any, *, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send(
            status, json.dumps(doc, default=str).encode(), CT_JSON, kind=kind, headers=headers
        )

    def _error(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        media: str = CT_JSON,
        headers: dict[str, str] | None = None,
    ) -> None:
        extra = dict(headers or {})
        if status == 503:
            extra["Retry-After"] = str(_RETRY_AFTER_S)
        if status == 401:
            extra["WWW-Authenticate"] = 'Bearer realm="tooltrail"'
        body = status_body(media, status, self.collector.public(message))
        self._send(status, body, media, kind=kind, headers=extra)

    def _framing_ok(self) -> bool:
        """Check how the body is delimited before any route reads or skips it.

        A request whose length is ambiguous (Content-Length values that differ, or
        Content-Length with Transfer-Encoding: RFC 9112 §6.1, §6.3) gets 400 and the
        connection closes: a proxy in front may have delimited it otherwise, and reading
        on would answer the rest as a request of its own (request smuggling).
        """
        self._chunked = self.headers.get("Transfer-Encoding") is not None
        fields = self.headers.get_all("Content-Length") or []
        values = {value.strip() for field in fields for value in field.split(",")}
        problem = None
        if self._malformed_headers():
            # The stdlib parser stops at a line it cannot read (space before the colon, no
            # colon) and files every later header, a Content-Length too, as "payload": the
            # body would go unseen here and be answered as a request of its own.
            problem = "a malformed header line"
        elif len(values) > 1:
            problem = "conflicting Content-Length values"
        elif values and self._chunked:
            problem = "both Content-Length and Transfer-Encoding"
        elif values:
            (value,) = values
            if _CONTENT_LENGTH_RE.fullmatch(value) is None:
                problem = f"Content-Length {value[:40]!r} is not a byte count"
            else:
                self._declared = self._unread = int(value)
        if problem is None:
            return True
        self.close_connection = True
        self._error(400, f"{problem}: the request cannot be delimited", kind="other")
        return False

    def _malformed_headers(self) -> bool:
        """A header line that is not ``name: value`` CRLF as RFC 9112 §5 has it: a space
        before the colon, no colon, a continuation (obs-fold), a bare CR or LF inside."""
        for line in self._header_lines:
            if line in (b"\r\n", b"\n"):
                break
            body = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
            if b"\r" in body or _HEADER_LINE_RE.fullmatch(body) is None:
                return True
        return False

    def _body_seconds(self, length: int) -> float:
        return self.server.header_timeout_s + length / _MIN_BODY_RATE

    def _read_body(self, limit: int, kind: str, media: str = CT_JSON) -> bytes | None:
        """The request body, or None after answering 411 / 413 for it."""
        if self._chunked:
            self.close_connection = True
            self._error(411, "send the body with a Content-Length", kind=kind, media=media)
            return None
        length = self._declared
        if length is None:
            self.close_connection = True
            self._error(411, "a valid Content-Length is required", kind=kind, media=media)
            return None
        if length > limit:
            self.close_connection = True
            self._discard_body(_DRAIN_CAP)
            self._error(
                413,
                f"body of {length} bytes is over the {limit}-byte limit",
                kind=kind,
                media=media,
            )
            return None
        self._send_continue()
        self._reader.arm(self._body_seconds(length), "the request body")
        try:
            body = self.rfile.read(length)
        finally:
            self._reader.disarm()
        self._unread = length - len(body)
        if self._unread:
            self.close_connection = True
            return None
        return body

    def _send_continue(self) -> None:
        if self._awaiting_continue:
            self._awaiting_continue = False
            self.send_response_only(100)
            self.end_headers()

    def _discard_body(self, limit: int) -> None:
        """Read and drop a body the answer does not need, when it is ``limit`` bytes at
        most, so that the client reads the answer (closing on unread data resets the
        connection) and the connection can serve its next request. A larger body, a
        chunked one, or one held back for ``100 Continue`` is left: the answer closes."""
        left = self._unread
        if not 0 < left <= limit or self._chunked or self._awaiting_continue:
            return
        self._reader.arm(self._body_seconds(left), "the request body")
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
        finally:
            self._unread = left
            self._reader.disarm()

    def _bearer(self) -> bytes | None:
        raw = self.headers.get("Authorization", "")
        scheme, _, value = raw.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip().encode()

    def _token_ok(self, *tokens: str | None) -> bool:
        """Constant-time check of the bearer token against every configured token."""
        wanted = [t.encode() for t in tokens if t]
        if not wanted:
            return True
        given = self._bearer() or b""
        ok = False
        for token in wanted:
            ok |= hmac.compare_digest(given, token)  # no early exit: same time either way
        return ok

    def _authorized(self, kind: str, media: str = CT_JSON) -> bool:
        cfg = self.collector.cfg
        if cfg.token is None and cfg.decision_token is None:
            return True
        if self._token_ok(cfg.token, cfg.decision_token):
            return True
        self.close_connection = True
        self._discard_body(_UNAUTH_DRAIN_CAP)
        self._error(401, "missing or wrong bearer token", kind=kind, media=media)
        return False

    # -- routing ---------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._guarded(self._route_post)

    def do_GET(self) -> None:
        self._guarded(self._route_get)

    def do_HEAD(self) -> None:
        self._guarded(self._route_get)  # a GET answered without its body (_send)

    def do_OPTIONS(self) -> None:
        self._guarded(self._route_options)

    def do_PUT(self) -> None:
        self._guarded(self._no_route)

    def do_PATCH(self) -> None:
        self._guarded(self._no_route)

    def do_DELETE(self) -> None:
        self._guarded(self._no_route)

    def _guarded(self, route: Callable[[], None]) -> None:
        """A bug must cost one request a 500, never the connection without an answer."""
        self._answered = False
        self._reader.disarm()  # the headers are in; body reads arm their own deadline
        try:
            if self._framing_ok():
                route()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            _log.exception("tooltrail collect: internal error on %s %s", self.command, self.path)
            self.close_connection = True
            if not self._answered:
                self._error(500, "internal error (see the collector's log)", kind="error")

    def _route_post(self) -> None:
        path = urlsplit(self.path).path
        if path == TRACES_PATH:
            self._post_traces()
        elif path == APPROVALS_PATH:
            self._post_approval()
        elif (approval_id := _decision_of(path)) is not None:
            self._post_decision(approval_id)
        elif (approval_id := _withdrawal_of(path)) is not None:
            self._post_withdrawal(approval_id)
        elif (session_id := _session_of(path)) is not None:
            self._post_session_control(session_id)
        else:
            self._no_route()

    def _route_get(self) -> None:
        # A GET's body means nothing here: a small one is read away so the connection
        # can serve its next request; a larger one is left and the answer closes.
        self._discard_body(_GET_BODY_CAP)
        parts = urlsplit(self.path)
        path = parts.path
        if path == HEALTH_PATH:
            status, doc = self.collector.health()
            self._json(status, doc, kind="health")
        elif path == METRICS_PATH:
            text = self.collector.metrics.render()
            self._send(200, text.encode(), CT_TEXT, kind="metrics")
        elif path == APPROVALS_PATH:
            self._list_approvals(parts.query)
        elif (approval_id := _approval_of(path)) is not None:
            self._get_approval(approval_id, parts.query)
        elif (session_id := _session_of(path)) is not None:
            self._get_session_control(session_id, parts.query)
        elif path == EVENTS_PATH:
            self._get_events(parts.query)
        else:
            self._no_route()

    def _route_options(self) -> None:
        allowed = _allowed_methods(urlsplit(self.path).path)
        if allowed is None:
            self._no_route()
            return
        self._discard_body(_UNAUTH_DRAIN_CAP)
        self._send(204, b"", CT_JSON, kind="other", headers={"Allow": ", ".join(allowed)})

    def _no_route(self) -> None:
        """404 for a path we do not serve; 405 + Allow for one we serve by other methods."""
        path = urlsplit(self.path).path
        self._discard_body(_UNAUTH_DRAIN_CAP)
        allowed = _allowed_methods(path)
        if allowed is None:
            self._error(404, f"no such endpoint: {self.command} {path}", kind="other")
            return
        allow = ", ".join(allowed)
        self._error(
            405,
            f"{self.command} is not allowed on {path} (allowed: {allow})",
            kind="other",
            headers={"Allow": allow},
        )

    # -- access control --------------------------------------------------------------------

    def _access_on(self) -> bool:
        return self.collector.access.on()

    def _who(self, kind: str, media: str = CT_JSON) -> Principal | None:
        """The bearer credential's user or agent (access control on); None once a 401
        (or a 503: the access store cannot be read) is answered."""
        try:
            return self.collector.access.authenticate(self._bearer())
        except NotAuthenticatedError as e:
            self.close_connection = True
            self._discard_body(_UNAUTH_DRAIN_CAP)
            self._error(401, str(e), kind=kind, media=media)
        except StoreError as e:
            self._discard_body(_UNAUTH_DRAIN_CAP)
            self._error(503, self.collector.public(str(e)), kind=kind, media=media)
        return None

    def _forbid(self, kind: str, message: str, media: str = CT_JSON) -> None:
        self._discard_body(_UNAUTH_DRAIN_CAP)
        self._error(403, message, kind=kind, media=media)

    def _agent(self, kind: str) -> Principal | None:
        """An agent's credential (filing and withdrawing requests are an agent's acts)."""
        who = self._who(kind)
        if who is not None and not who.is_agent:
            self._forbid(kind, f"{who.name!r} is a user: {kind} are filed by agents")
            return None
        return who

    def _user(self, kind: str, action: access.Action) -> Principal | None:
        """A user whose role may take ``action`` (403 for an agent or a lesser role)."""
        who = self._who(kind)
        if who is None:
            return None
        try:
            return access.require(who, action)
        except TooltrailError as e:
            self._forbid(kind, str(e))
            return None

    # -- shared by the approval and session routes -----------------------------------------

    def _checked(self, kind: str) -> bool:
        """Who asks was checked already (access control)."""
        return True

    def _client_gone(self) -> bool:
        """Whether the client closed its connection while its long-poll is parked (a
        killed agent): the socket reads as ended. Anything else (data, unknown) is not."""
        sock = self.connection
        try:
            ready, _, _ = select.select([sock], [], [], 0)
            return bool(ready) and sock.recv(1, socket.MSG_PEEK) == b""
        except ConnectionError:
            return True  # reset by the peer
        except (OSError, ValueError):
            return False  # cannot tell (e.g. a TLS socket refuses MSG_PEEK): the lease will

    def _long_poll(
        self,
        kind: str,
        query: str,
        read: Callable[[float], dict[str, Any]],
        *,
        checked: bool = False,
    ) -> None:
        """A GET that may wait (``?wait=S``): each waiter holds one bounded slot.
        ``checked``: who asks was checked already (access control on)."""
        if not checked and not self._authorized(kind):
            return
        collector = self.collector
        try:
            wait_s = apr.parse_wait(parse_qs(query).get("wait", [None])[0])
        except BadInputError as e:
            self._error(400, str(e), kind=kind)
            return
        if wait_s > 0 and not collector.try_wait_slot():
            self._error(503, f"too many {kind} waiters; retry", kind=kind)
            return
        try:
            doc = read(wait_s)
        except TooltrailError as e:
            self._error(apr.status_of(e), str(e), kind=kind)
            return
        finally:
            if wait_s > 0:
                collector.release_wait_slot()
        self._json(200, doc, kind=kind)

    def _operator_ok(self, kind: str) -> bool:
        """Decisions and session control need the decision token (or the token)."""
        cfg = self.collector.cfg
        required = cfg.decision_token or cfg.token
        if required is None:
            self._discard_body(_UNAUTH_DRAIN_CAP)
            self._error(403, f"{kind} over HTTP need the collector to run with --token", kind=kind)
            return False
        if not self._token_ok(required):
            self.close_connection = True
            self._discard_body(_UNAUTH_DRAIN_CAP)
            self._error(401, f"missing or wrong bearer token for {kind}", kind=kind)
            return False
        return True

    def _operator_post(
        self,
        kind: str,
        what: str,
        act: Callable[[dict[str, Any]], dict[str, Any]],
        counter: str,
        who: Principal | None,
    ) -> None:
        """An operator's change (a decision, a session control): the decision token, or
        with access control on a user's credential (``who``, checked already)."""
        allowed = self._operator_ok if who is None else self._checked
        self._post_json(kind, what, act, counter, allowed, 200)

    def _post_json(
        self,
        kind: str,
        what: str,
        act: Callable[[dict[str, Any]], dict[str, Any]],
        counter: str,
        allowed: Callable[[str], bool],
        status: int,
    ) -> None:
        """A JSON-object POST: token (``allowed`` answers when not), body, act, answer."""
        if not allowed(kind):
            return
        body = self._read_body(MAX_APPROVAL_BODY, kind)
        if body is None:
            return
        try:
            doc = act(apr.parse_json_object(body, what))
        except TooltrailError as e:
            self._error(apr.status_of(e), str(e), kind=kind)
            return
        self.collector.metrics.add(counter)
        self._json(status, doc, kind=kind)


def _session_of(path: str) -> str | None:
    """The session id of a ``/v1/sessions/{id}/control`` path (None for other paths)."""
    prefix = SESSIONS_PATH + "/"
    if not (path.startswith(prefix) and path.endswith(CONTROL_SUFFIX)):
        return None
    raw = path[len(prefix) : -len(CONTROL_SUFFIX)]
    return unquote(raw) if raw and "/" not in raw else None


def _decision_of(path: str) -> str | None:
    """The approval id of a ``/v1/approvals/{id}/decision`` path (None for other paths)."""
    prefix = APPROVALS_PATH + "/"
    if not (path.startswith(prefix) and path.endswith(DECISION_SUFFIX)):
        return None
    return unquote(path[len(prefix) : -len(DECISION_SUFFIX)])


def _withdrawal_of(path: str) -> str | None:
    """The approval id of a ``/v1/approvals/{id}/withdraw`` path (None for other paths)."""
    prefix = APPROVALS_PATH + "/"
    if not (path.startswith(prefix) and path.endswith(WITHDRAW_SUFFIX)):
        return None
    raw = path[len(prefix) : -len(WITHDRAW_SUFFIX)]
    return unquote(raw) if raw and "/" not in raw else None


def _approval_of(path: str) -> str | None:
    """The approval id of a ``/v1/approvals/{id}`` path (None for other paths)."""
    prefix = APPROVALS_PATH + "/"
    rest = path[len(prefix) :]
    return unquote(rest) if path.startswith(prefix) and "/" not in rest else None


_READ_ONLY: Final = ("GET", "HEAD", "OPTIONS")
_READ_WRITE: Final = ("GET", "HEAD", "POST", "OPTIONS")
_WRITE_ONLY: Final = ("POST", "OPTIONS")


def _allowed_methods(path: str) -> tuple[str, ...] | None:
    """The methods a path is served by (the routes above), None for a path not served."""
    if path == TRACES_PATH or _decision_of(path) is not None:
        return _WRITE_ONLY
    if _withdrawal_of(path) is not None:
        return _WRITE_ONLY
    if path in (HEALTH_PATH, METRICS_PATH, EVENTS_PATH) or _approval_of(path) is not None:
        return _READ_ONLY
    if path == APPROVALS_PATH or _session_of(path) is not None:
        return _READ_WRITE
    return None


def _busy_answer() -> bytes:
    """The whole 503 sent to a connection over the cap (written before any thread)."""
    body = status_body(CT_JSON, 503, "too many connections open; retry")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        f"Content-Type: {CT_JSON}\r\nContent-Length: {len(body)}\r\n"
        f"Retry-After: {_RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY_ANSWER: Final = _busy_answer()


class CollectorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) refuses bursts of connections from many senders.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], collector: Collector) -> None:
        self.collector = collector
        self.header_timeout_s = collector.cfg.header_timeout_s
        self.max_connections = collector.cfg.connection_cap()
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._open = 0
        self._open_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        collector.metrics.gauge(
            "open_connections", f"Connections open (at most {self.max_connections}).", self._opened
        )

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # Out of files: the listener stays readable, and the serve loop would spin
                # on it. Pause so the connections being served can finish and free some.
                time.sleep(_NO_FILES_PAUSE_S)
            raise

    def process_request(self, request: _RequestType, client_address: Any) -> None:
        """Serve the connection in a thread of its own while fewer than
        ``max_connections`` are open; past that, answer 503 and close at once, so that
        connections that never finish a request cannot pile up threads and files."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        self._count(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not give the slot back
            self._count(-1)
            self._slots.release()
            raise

    def process_request_thread(self, request: _RequestType, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count(-1)
            self._slots.release()

    def _count(self, delta: int) -> None:
        with self._open_lock:
            self._open += delta

    def _refuse(self, request: _RequestType) -> None:
        self.collector.metrics.add("connections_refused_total")
        sock = request if isinstance(request, socket.socket) else request[1]
        with contextlib.suppress(OSError):
            sock.setblocking(False)  # this runs in the accepting thread: never wait
            # Read what the client sent already: closing on unread data resets the
            # connection, and the reset can destroy the 503 before the client reads it.
            with contextlib.suppress(BlockingIOError):
                sock.recv(65536)
            sock.send(_BUSY_ANSWER)
        self.shutdown_request(request)

    def _opened(self) -> float:
        with self._open_lock:
            return self._open


@dataclass
class Running:
    """A started collector: ``url`` to send to, ``stop()`` to drain and shut down."""

    collector: Collector
    server: CollectorHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        raw_host, port = self.server.server_address[:2]
        host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.collector.close()


def start(cfg: CollectorConfig) -> Running:
    """Bind, recover the spool, and serve in a background thread."""
    collector = Collector(cfg)
    try:
        server = CollectorHTTPServer((cfg.host, cfg.port), collector)
    except OSError as e:
        raise StoreError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from e
    port = server.server_address[1]
    try:
        collector.start(f"pid {os.getpid()} on {socket.gethostname()}, port {port}")
    except BaseException:
        server.server_close()
        raise
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="tooltrail-http",
        daemon=True,
    )
    thread.start()
    return Running(collector, server, thread)


def serve(cfg: CollectorConfig, on_ready: Callable[[Running], None] | None = None) -> None:
    """Run until SIGINT / SIGTERM, then drain the spool and exit."""
    import signal

    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        done.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        running = start(cfg)
        try:
            if on_ready is not None:
                on_ready(running)
            while not done.wait(1.0):
                pass
        finally:
            running.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = [
    "DEFAULT_PORT",
    "DURABILITY_MODES",
    "Collector",
    "CollectorConfig",
    "InstanceLockedError",
    "Metrics",
    "RequestPipeline",
    "Running",
    "default_workers",
    "is_loopback",
    "serve",
    "start",
]
