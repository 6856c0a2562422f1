"""The tooltrail span exporter: normalize, decide (after the fact), redact, land in Parquet.

A real ``SpanExporter``: use it behind a ``BatchSpanProcessor``, or with no code at all via
``OTEL_TRACES_EXPORTER=tooltrail`` (entry point ``opentelemetry_traces_exporter``).

``export()`` never raises: any failure is logged and reported as ``FAILURE`` so that the
host application is never broken by its audit trail. Landing is synchronous (each batch
becomes one immutable Parquet file per date), so ``force_flush()`` has nothing buffered.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tooltrail import config
from tooltrail.collector.normalize import Normalizer
from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.redact import Redactor
from tooltrail.schema import Row

if TYPE_CHECKING:
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

RowHook = Callable[[Row], None]


def policy_row_hook(policy: str | os.PathLike[str] | Policy | None) -> RowHook | None:
    """The exporter's single policy hook: decide tool rows that carry no decision yet.

    ``policy`` is a path, a loaded ``Policy`` or None (then ``$TOOLTRAIL_POLICY``; no policy
    at all means no hook). A policy that cannot load never fails open: rows are marked
    ``policy_rule="policy-error"`` with a null decision, and the error is logged.
    """
    from tooltrail.policy import Policy, apply_to_row, load_policy

    source: Any = policy if policy is not None else os.environ.get(config.ENV_POLICY) or None
    if source is None:
        return None
    if isinstance(source, Policy):
        loaded: Policy = source
    else:
        try:
            loaded = load_policy(source)
        except Exception as e:  # PolicyError, or anything unexpected: fail closed
            message = str(e)
            _log.error("tooltrail: policy %s could not be loaded: %s", source, message)

            def mark_error(row: Row) -> None:
                apply_to_row(None, row, error=message)

            return mark_error

    def decide(row: Row) -> None:
        apply_to_row(loaded, row)

    return decide


class TooltrailSpanExporter(SpanExporter):
    """Lands every span as a row of ``<data>/spans/date=*/*.parquet``.

    Args:
        data_dir: where to land; default ``$TOOLTRAIL_DATA`` or ``./tooltrail-data``.
        policy: a policy path or ``Policy`` applied to undecided tool spans
            (default ``$TOOLTRAIL_POLICY``).
        redact: scrub credentials before landing (default on; ``TOOLTRAIL_REDACT=0`` off).
        writer_id: file-name prefix; unique per process by default.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        policy: str | os.PathLike[str] | Policy | None = None,
        redact: bool | None = None,
        writer_id: str | None = None,
    ) -> None:
        self.data_dir: Path = config.data_dir(data_dir)
        if redact is None:
            redact = config.env_flag(config.ENV_REDACT, default=True)
        self._normalizer = Normalizer(Redactor() if redact else None)
        self._writer = ParquetSpanWriter(self.data_dir, writer_id=writer_id)
        self._row_hook = policy_row_hook(policy)
        self._shutdown = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _log.warning("tooltrail exporter already shut down; %d spans dropped", len(spans))
            return SpanExportResult.FAILURE
        try:
            rows = self.to_rows(spans)
            self._writer.write(rows)
        except Exception:
            _log.exception("tooltrail: failed to land %d spans in %s", len(spans), self.data_dir)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def to_rows(self, spans: Sequence[ReadableSpan]) -> list[Row]:
        """Normalize (and, with a policy, decide) without landing."""
        normalize = self._normalizer.normalize_readable
        rows = [normalize(span) for span in spans]
        hook = self._row_hook
        if hook is not None:
            for row in rows:
                hook(row)
        return rows

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Every export() lands synchronously: nothing is ever buffered here.
        return not self._shutdown
