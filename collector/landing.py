"""Landing work for the collector, in-process or in worker processes.

Normalizing and writing Parquet is pure-Python-heavy (records, normalizer, policy hook,
Arrow conversion): in one process it would share the GIL with the HTTP threads and use one
core at most. ``Lander`` runs it in ``workers`` processes (spawned, never forked: the
collector has threads) so landing uses the other cores while the receiver only decodes,
validates and fsyncs. ``workers=0`` lands in the calling thread (tests, tiny machines).

Each worker builds its own :class:`RequestPipeline` from the policy *path* (loaded policies
are not picklable).

Direct mode lands each request as ``spans/date=D/direct-<digest>.parquet``, named after a
SHA-256 of the accepted request's protobuf encoding: a sender that resends a batch whose
200 it never got (the collector crashed after landing it) finds the name taken, and the
batch lands once. The Parquet files are the index, so it costs one ``exists`` per
partition and survives any crash; it holds until compaction merges the file away, long
after any sender's retries.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tooltrail.collector.columnar import columns_of_records
from tooltrail.collector.otlp import records_from_request
from tooltrail.collector.owners import SessionOwners
from tooltrail.collector.pipeline import PROVENANCE_COLLECTOR, BatchPipeline, BatchResult
from tooltrail.collector.spool import (
    Landed,
    foreign_rows,
    land_named,
    land_segment,
    note_set_aside,
)
from tooltrail.collector.writer import spans_lock, split_by_date, write_sorted_parquet
from tooltrail.config import SPANS_DIR

if TYPE_CHECKING:
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

WORKERS_LOCK_FILE = "collector.workers.lock"
PolicySource = str | os.PathLike[str] | None
PolicyPath = str | os.PathLike[str]
_PARENT_POLL_S = 0.5


class RequestPipeline:
    """OTLP request -> records -> batch normalizer -> policy hook: the exporter's steps."""

    def __init__(
        self,
        policy: str | os.PathLike[str] | Policy | None,
        redact: bool | None,
        data_dir: Path | None = None,
    ) -> None:
        # Each row's `source` is the sender the collector stamped on its request; with the
        # data directory, rows an agent sent into another agent's session land claimed.
        self.owners = None if data_dir is None else SessionOwners(data_dir)
        self._pipeline = BatchPipeline.build(policy, redact, PROVENANCE_COLLECTOR, self.owners)

    def result(self, request: ExportTraceServiceRequest) -> BatchResult:
        """The request's landed table and the spans set aside from it."""
        return self._pipeline.result(columns_of_records(records_from_request(request)))

    def table(self, request: ExportTraceServiceRequest) -> pa.Table:
        return self.result(request).table


# --- worker-process side ---------------------------------------------------------------------

_pipeline: RequestPipeline | None = None
_data_dir: Path | None = None


def _exit_with_parent(parent: int) -> None:
    # A collector killed with -9 cannot stop its workers: they notice and leave. (Safe
    # mid-landing: files appear atomically and the segment stays until it is landed.)
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


_workers_lock: int | None = None


def workers_lock_path(data_dir: Path) -> Path:
    """Held shared by every landing worker while it lives (see ``wait_for_old_workers``)."""
    return data_dir / WORKERS_LOCK_FILE


def _init_worker(policy: PolicySource, redact: bool | None, data_dir: str, parent: int) -> None:
    global _pipeline, _data_dir, _workers_lock
    _workers_lock = os.open(workers_lock_path(Path(data_dir)), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(_workers_lock, fcntl.LOCK_SH)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _pipeline = RequestPipeline(policy, redact, Path(data_dir))
    _data_dir = Path(data_dir)


def _ready_job() -> int:
    """Run the whole landing path once on a one-span request, in memory: what a first
    landing would import and initialize lazily (Arrow kernels, the Parquet writer, ...)
    is done during warm-up, before any span waits on it."""
    assert _pipeline is not None
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x01" * 8, "warm-up"
    span.start_time_unix_nano = span.end_time_unix_nano = time.time_ns()
    table = _pipeline.table(req)
    for _, part in split_by_date(table):
        write_sorted_parquet(part, io.BytesIO())
    return os.getpid()


def _land_segment_job(segment: str, data_dir: str) -> Landed:
    assert _pipeline is not None
    return land_segment(Path(segment), Path(data_dir), _pipeline.result)


def direct_name(payload: bytes) -> str:
    """The stem a direct-mode request lands as: the same bytes, the same name."""
    return f"direct-{hashlib.sha256(payload).hexdigest()[:32]}"


def _land_payload(pipeline: RequestPipeline, data_dir: Path, payload: bytes) -> Landed:
    """Land one request's spans as its own files, once (see the module docstring)."""
    result = pipeline.result(ExportTraceServiceRequest.FromString(payload))
    stem = direct_name(payload)
    note_set_aside(data_dir, stem, result.set_aside)
    with spans_lock(data_dir / SPANS_DIR, exclusive=False):
        landed, skipped = land_named(result.table, data_dir, f"{stem}.parquet")
    return Landed(landed, skipped, len(result.set_aside), foreign_rows(result.table))


def _land_payload_job(payload: bytes) -> Landed:
    assert _pipeline is not None and _data_dir is not None
    return _land_payload(_pipeline, _data_dir, payload)


def wait_for_old_workers(data_dir: Path, timeout_s: float = 15.0) -> bool:
    """Wait until no landing worker of an earlier collector is alive (they exit within
    half a second of their collector's death); True when none is left.

    A new collector must not recover the spool while a dead one's worker may still be
    landing a segment of it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workers_lock_path(data_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
    finally:
        os.close(fd)  # releases the lock: new workers take it shared


# --- collector side -----------------------------------------------------------------------------


class Lander:
    """Lands spool segments (spool mode) or request payloads (direct mode)."""

    def __init__(
        self,
        data_dir: Path,
        policy: str | os.PathLike[str] | Policy | None,
        redact: bool | None,
        workers: int,
    ) -> None:
        self.data_dir = data_dir
        self._redact = redact
        self.workers = workers
        if workers and not isinstance(policy, str | os.PathLike | type(None)):
            raise ValueError("worker processes need the policy as a file path")
        self._policy_path = None if policy is None else os.fspath(cast(PolicyPath, policy))
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        # In-process landing (workers=0), also used to check the policy loads here.
        self.pipeline = RequestPipeline(policy, redact, data_dir)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(
                        self._policy_path,
                        self._redact,
                        os.fspath(self.data_dir),
                        os.getpid(),
                    ),
                )
            return self._pool

    def warm_up(self) -> None:
        """Start the worker processes now rather than on the first batch: starting one
        (interpreter, pyarrow, the policy) takes about a second, which would otherwise
        hold up the first spans to land. Returns at once."""
        if self.workers:
            pool = self._executor()
            for _ in range(self.workers):
                pool.submit(_ready_job)

    def _reset(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def submit_segment(self, segment: Path) -> Future[Landed]:
        """Land one sealed segment; the future holds what landing it did."""
        if not self.workers:
            done: Future[Landed] = Future()
            try:
                done.set_result(land_segment(segment, self.data_dir, self.pipeline.result))
            except Exception as e:
                done.set_exception(e)
            return done
        return self._submit(_land_segment_job, os.fspath(segment), os.fspath(self.data_dir))

    def land_payload(self, payload: bytes) -> Landed:
        """Land one request's spans now, once (direct mode)."""
        if not self.workers:
            return _land_payload(self.pipeline, self.data_dir, payload)
        result: Landed = self._submit(_land_payload_job, payload).result()
        return result

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        try:
            return self._executor().submit(fn, *args)
        except BrokenProcessPool:
            # A worker died (OOM-killed, say): start a fresh pool and try once more.
            _log.error("tooltrail collect: a landing worker died; restarting the pool")
            self._reset()
            return self._executor().submit(fn, *args)

    def broken(self, error: BaseException) -> bool:
        """Whether ``error`` means the pool is gone (then it is reset for the next try)."""
        if isinstance(error, BrokenProcessPool):
            self._reset()
            return True
        return False

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


__all__ = ["Lander", "RequestPipeline", "direct_name", "wait_for_old_workers"]
