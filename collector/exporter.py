"""The tooltrail span exporter: normalize, decide (after the fact), redact, land in Parquet.

A real ``SpanExporter``: use it behind a ``BatchSpanProcessor``, or with no code at all via
``OTEL_TRACES_EXPORTER=tooltrail`` (entry point ``opentelemetry_traces_exporter``).

``export()`` never raises: any failure is logged and reported as ``FAILURE`` so that the
host application is never broken by its audit trail.

Landing is adaptive. A Parquet file costs a fixed few milliseconds however small it is, so
while the processor hands over *full* batches (its queue is backed up: throughput matters)
rows are buffered until ``buffer_rows`` are waiting; a batch smaller than ``full_batch``
means the queue has drained, so everything buffered lands at once (latency matters, and
the per-file cost does not at that rate). A background timer lands anything older than
``max_delay_s``; ``force_flush()`` and ``shutdown()`` land everything.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tooltrail import config
from tooltrail.collector.columnar import Columns, columns_of_spans, row_at
from tooltrail.collector.normalize import Normalizer
from tooltrail.collector.pipeline import BatchPipeline
from tooltrail.collector.writer import LandingError, ParquetSpanWriter
from tooltrail.schema import Row

if TYPE_CHECKING:
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

DEFAULT_BUFFER_ROWS = 8192
DEFAULT_FULL_BATCH = 512
DEFAULT_MAX_DELAY_S = 1.0
# Rows kept for another attempt after a failed landing (a full disk, say); beyond this the
# oldest are dropped, and counted in the log, rather than exhausting the agent's memory.
MAX_RETAINED_ROWS = 100_000


class TooltrailSpanExporter(SpanExporter):
    """Lands every span as a row of ``<data>/spans/date=*/*.parquet``.

    Args:
        data_dir: where to land; default ``$TOOLTRAIL_DATA`` or ``./tooltrail-data``.
        policy: a policy path or ``Policy`` applied to undecided tool spans
            (default ``$TOOLTRAIL_POLICY``).
        redact: scrub credentials before landing (default on; ``TOOLTRAIL_REDACT=0`` off).
        writer_id: file-name prefix; unique per process by default.
        buffer_rows: land once this many rows wait (0: land every batch at once).
        full_batch: a batch this large means more are queued behind it (the SDK's
            ``max_export_batch_size``, 512 by default).
        max_delay_s: the longest a row waits in the buffer.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        policy: str | os.PathLike[str] | Policy | None = None,
        redact: bool | None = None,
        writer_id: str | None = None,
        *,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        full_batch: int = DEFAULT_FULL_BATCH,
        max_delay_s: float = DEFAULT_MAX_DELAY_S,
    ) -> None:
        self.data_dir: Path = config.data_dir(data_dir)
        self._pipeline = BatchPipeline.build(policy, redact)
        self._writer = ParquetSpanWriter(self.data_dir, writer_id=writer_id)
        self._buffer_rows = buffer_rows
        self._full_batch = full_batch
        self._max_delay_s = max_delay_s
        # Normalized batches waiting to land, as Arrow tables (one per export call).
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._buffered_since = 0.0
        self._shutdown = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._timer: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            # A forked child must not land its parent's buffered rows a second time.
            os.register_at_fork(after_in_child=self._forget_buffer)

    def land_each_batch(self) -> None:
        """Land every batch as it comes (no buffering): for a processor that already
        batches by age, as tooltrail's does, so a span lands within its bound."""
        with self._lock:
            self._buffer_rows = 0
            self._land_locked()

    def set_policy(self, policy: str | os.PathLike[str] | Policy | None) -> None:
        """Decide undecided tool spans with ``policy`` from the next batch on (as the
        ``policy`` argument; a repeated ``configure()`` hands over its new policy)."""
        self._pipeline = self._pipeline.with_policy(policy)

    @property
    def policy_error(self) -> str | None:
        """Why the policy could not be loaded (its rows land as ``policy-error``), or None."""
        return self._pipeline.policy_error

    def _forget_buffer(self) -> None:
        self._buffer = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._timer = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _log.warning("tooltrail exporter already shut down; %d spans dropped", len(spans))
            return SpanExportResult.FAILURE
        try:
            table = self.to_table(spans)
            with self._lock:
                if not self._buffer:
                    self._buffered_since = time.monotonic()
                self._buffer.append(table)
                self._buffered += table.num_rows
                backed_up = len(spans) >= self._full_batch
                if backed_up and self._buffered < self._buffer_rows:
                    self._ensure_timer()
                    return SpanExportResult.SUCCESS
                self._land_locked()
        except Exception:
            _log.exception("tooltrail: failed to land %d spans in %s", len(spans), self.data_dir)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _land_locked(self) -> None:
        tables, self._buffer, self._buffered = self._buffer, [], 0
        if not tables:
            return
        try:
            self._writer.write_arrow(pa.concat_tables(tables))
        except LandingError as e:
            # export() already answered SUCCESS for these rows: keep them for the next try.
            unwritten = e.unwritten
            keep = unwritten.slice(max(0, unwritten.num_rows - MAX_RETAINED_ROWS))
            dropped = unwritten.num_rows - keep.num_rows
            if dropped:
                _log.error("tooltrail: dropped %d spans that could not be landed", dropped)
            self._buffer.insert(0, keep)
            self._buffered += keep.num_rows
            raise

    def _flush(self) -> bool:
        try:
            with self._lock:
                self._land_locked()
        except Exception:
            _log.exception("tooltrail: failed to land buffered spans in %s", self.data_dir)
            return False
        return True

    def _ensure_timer(self) -> None:
        if self._timer is None or not self._timer.is_alive():
            self._timer = threading.Thread(
                target=self._timer_loop, name="tooltrail-exporter-flush", daemon=True
            )
            self._timer.start()

    def _timer_loop(self) -> None:
        while not self._shutdown:
            self._wake.wait(self._max_delay_s / 2)
            with self._lock:
                due = self._buffer and time.monotonic() - self._buffered_since >= self._max_delay_s
            if due:
                self._flush()

    def to_columns(self, spans: Sequence[ReadableSpan]) -> Columns:
        """Normalize (and, with a policy, decide) a batch without landing."""
        return self._pipeline.columns(columns_of_spans(spans))

    def to_table(self, spans: Sequence[ReadableSpan]) -> pa.Table:
        """The batch as the Arrow table that lands."""
        return self._pipeline.table(columns_of_spans(spans))

    def to_rows(self, spans: Sequence[ReadableSpan]) -> list[Row]:
        """The batch as rows (for inspection and tests; landing uses :meth:`to_table`)."""
        columns = self.to_columns(spans)
        return [row_at(columns, i) for i in range(len(spans))]

    @property
    def normalizer(self) -> Normalizer:
        return self._pipeline.normalizer

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._flush()
        self._shutdown = True
        self._wake.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._shutdown:
            return False
        return self._flush()
