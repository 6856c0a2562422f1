"""``TooltrailSpanProcessor``: hands ended spans to the tooltrail exporter without
silently losing a tool call's record, and lands each span within half a second.

The SDK's ``BatchSpanProcessor`` drops a span when its queue is full (one log line says
so), and lands on a schedule that, with the exporter's buffering, let a SIGKILL lose well
over a second of calls. Tool spans are the audit record, so this processor:

* **Lands by age.** A batch is handed over when its oldest span has waited
  ``schedule_delay_s`` (or ``max_batch`` spans are queued), and the exporter lands each
  batch at once (it is told to: ``land_each_batch``).
* **Back-pressure for tool spans, by age.** The exporter runs on a thread of the agent's
  own process, sharing the GIL with the code that makes the calls: an agent calling
  tools as fast as it can would outrun it. So while the oldest span not yet landed is
  older than ``max_lag_s`` (or ``max_queue_size`` spans are queued), the thread ending a
  tool span waits for the batch in flight to land. This keeps every tool span's landing
  within ``max_lag_s`` plus one batch's landing of its end at any call rate: the 0.5 s
  loss window on SIGKILL (docs/INSTRUMENTATION.md, Processes). An agent below the
  exporter's pace never waits.
* **Bounded wait, counted drops.** A thread waits at most ``max_wait_s``: a stalled
  exporter cannot hang the host. Only then is a tool span dropped, and later ones are
  dropped without waiting until the exporter makes progress again. Other spans (LLM,
  agent, HTTP...) never wait: they are dropped when ``max_queue_size`` spans are queued.
  Every dropped span is counted, per session, in a ``tooltrail.dropped_spans`` span (span
  type ``other``; attributes ``tooltrail.dropped.tool_spans`` and
  ``tooltrail.dropped.other_spans``, the dropped spans' session ids and agent name; start
  and end: the first and last dropped span's end) that joins the next batch that lands.

Fork: a child starts with an empty queue and its own background thread (the parent's
spans are the parent's). ``force_flush`` lands everything queued, and the batch in
flight, before it returns. Ending a span takes no lock that landing needs (the queue is a
``deque``): a SIGTERM handler that interrupted the main thread inside ``on_end`` can still
land everything from another thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from tooltrail.semconv import (
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    MCP_METHOD_NAME,
    MCP_METHOD_TOOLS_CALL,
    OP_EXECUTE_TOOL,
    SESSION_ID,
    TT_PARENT_SESSION_ID,
    TT_SESSION_ID,
)

__all__ = [
    "DROPPED_OTHER_SPANS",
    "DROPPED_SPANS_NAME",
    "DROPPED_TOOL_SPANS",
    "TooltrailSpanProcessor",
]

_log = logging.getLogger("tooltrail.instrumentation")

# A span waits at most this long in the queue before its batch is handed over.
SCHEDULE_DELAY_S: Final = 0.15
# Tool spans wait while the oldest span not yet landed is older than this; with the
# landing of one batch after it, the bound on the loss window (0.5 s, documented).
MAX_LAG_S: Final = 0.2
# The largest batch handed over at once.
MAX_BATCH: Final = 8_192
# Queued spans beyond which tool spans wait and other spans are dropped (counted).
MAX_QUEUE_SIZE: Final = 65_536
# The longest a tool span's thread waits before its span is dropped (counted): a stalled
# exporter must not hang the host. A healthy one makes room within a batch's landing.
MAX_WAIT_S: Final = 5.0
_NEVER: Final = float("inf")
# Threads waiting for landing look again this often (a flush does not notify them).
_POLL_S: Final = 0.05
# How long shutdown waits for the background thread to land what is queued.
SHUTDOWN_WAIT_S: Final = 30.0

DROPPED_SPANS_NAME: Final = "tooltrail.dropped_spans"
DROPPED_TOOL_SPANS: Final = "tooltrail.dropped.tool_spans"
DROPPED_OTHER_SPANS: Final = "tooltrail.dropped.other_spans"
# Copied from a dropped span onto its count, so the count lands in the same session.
_SESSION_KEYS: Final = (
    TT_SESSION_ID,
    SESSION_ID,
    GEN_AI_CONVERSATION_ID,
    TT_PARENT_SESSION_ID,
    GEN_AI_AGENT_NAME,
)
_ids = RandomIdGenerator()


def is_tool_span(span: ReadableSpan) -> bool:
    """A tool call's span: tooltrail's / GenAI semconv's, or an MCP ``tools/call``."""
    attributes = span.attributes
    if not attributes:
        return False
    return (
        attributes.get(GEN_AI_OPERATION_NAME) == OP_EXECUTE_TOOL
        or attributes.get(MCP_METHOD_NAME) == MCP_METHOD_TOOLS_CALL
    )


@dataclass(slots=True)
class _Drops:
    """The spans of one session dropped since the last count landed."""

    attributes: dict[str, AttributeValue]
    resource: Resource
    first_end: int
    last_end: int
    tool: int = 0
    other: int = 0
    sessions: set[str] = field(default_factory=set)

    def span(self) -> ReadableSpan:
        attributes = dict(self.attributes)
        attributes[DROPPED_TOOL_SPANS] = self.tool
        attributes[DROPPED_OTHER_SPANS] = self.other
        context = SpanContext(
            _ids.generate_trace_id(),
            _ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return ReadableSpan(
            name=DROPPED_SPANS_NAME,
            context=context,
            kind=SpanKind.INTERNAL,
            resource=self.resource,
            attributes=attributes,
            start_time=self.first_end,
            end_time=self.last_end,
        )


class TooltrailSpanProcessor(SpanProcessor):
    """Queues ended spans and lands them in batches through ``exporter`` (module doc).

    Args:
        exporter: usually a ``TooltrailSpanExporter``; one with ``land_each_batch()`` is
            told to land every batch it is handed at once (this processor batches).
        schedule_delay_s: the longest a span waits in the queue.
        max_lag_s: tool spans wait while the oldest span not yet landed is this old.
        max_batch: the largest batch handed over (a full one is handed over at once).
        max_queue_size: queued spans at which tool spans wait and other spans are dropped.
        max_wait_s: the longest a tool span's thread waits.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        schedule_delay_s: float = SCHEDULE_DELAY_S,
        max_lag_s: float = MAX_LAG_S,
        max_batch: int = MAX_BATCH,
        max_queue_size: int = MAX_QUEUE_SIZE,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        if not 1 <= max_batch <= max_queue_size:
            raise ValueError("need 1 <= max_batch <= max_queue_size")
        self.span_exporter = exporter
        land_each_batch = getattr(exporter, "land_each_batch", None)
        if callable(land_each_batch):
            land_each_batch()
        self.schedule_delay_s = schedule_delay_s
        self.max_lag_s = max_lag_s
        self._max_batch = max_batch
        self._max_queue = max_queue_size
        self._max_wait = max_wait_s
        self._shutdown = False
        self._reset()
        if hasattr(os, "register_at_fork"):
            # By weak reference, as the SDK's processor does: the hook outlives us.
            reset = weakref.WeakMethod(self._reset)

            def after_in_child() -> None:
                method = reset()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=after_in_child)

    def _reset(self) -> None:
        """A fresh state: at start, and in a forked child (locks may have been held)."""
        # (queued at, span), oldest first: appended by any thread, popped by the one
        # holding _export_lock.
        self._queue: deque[tuple[float, ReadableSpan]] = deque()
        # Held while a batch is taken and landed: force_flush returns only after the
        # background thread's batch in flight has landed too.
        self._export_lock = threading.Lock()
        # Wakes the background thread early: a full batch, shutdown.
        self._wake = threading.Event()
        # Notified after each landing, for threads waiting under back-pressure.
        self._landed = threading.Condition(threading.Lock())
        # When tool spans start to wait: the oldest span in flight, queued at + max_lag.
        self._due = _NEVER
        self._stalled = False
        self._drops_lock = threading.Lock()
        self._drops: dict[tuple[object, ...], _Drops] = {}
        self._worker: threading.Thread | None = None

    # -- the caller's side -------------------------------------------------------------

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled or self._shutdown:
            return
        now = time.monotonic()
        queue = self._queue
        if (now >= self._due or len(queue) >= self._max_queue) and not self._room_for(span):
            return
        queue.append((now, span))
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()
        if self._worker is None:
            self._start_worker()

    def _room_for(self, span: ReadableSpan) -> bool:
        """The record is behind: whether ``span`` may be queued (a tool span after waiting
        for the exporter to catch up); a span that may not is counted."""
        tool = is_tool_span(span)
        if not tool:
            if len(self._queue) < self._max_queue:
                return True
        elif threading.current_thread() is self._worker:
            return True  # ended while landing: waiting for ourselves would deadlock
        elif not self._stalled and self._wait_for_landing():
            return True
        elif not self._stalled:
            self._stalled = True
            _log.error(
                "tooltrail: the exporter landed nothing for %g s; tool spans are dropped"
                " (and counted in %s spans) until it does",
                self._max_wait,
                DROPPED_SPANS_NAME,
            )
        if not self._shutdown:
            self._count_drop(span, tool)
        return False

    def _caught_up(self) -> bool:
        if self._shutdown:
            return True
        return time.monotonic() < self._due and len(self._queue) < self._max_queue

    def _wait_for_landing(self) -> bool:
        deadline = time.monotonic() + self._max_wait
        with self._landed:
            while not self._caught_up():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # In slices: a landing by force_flush does not notify.
                self._landed.wait(min(left, _POLL_S))
        return True

    def _count_drop(self, span: ReadableSpan, tool: bool) -> None:
        attributes = span.attributes or {}
        copied = {k: attributes[k] for k in _SESSION_KEYS if k in attributes}
        key = (id(span.resource), *(copied.get(k) for k in _SESSION_KEYS))
        end = span.end_time or time.time_ns()
        with self._drops_lock:
            drops = self._drops.get(key)
            if drops is None:
                drops = self._drops[key] = _Drops(copied, span.resource, end, end)
            drops.first_end = min(drops.first_end, end)
            drops.last_end = max(drops.last_end, end)
            if tool:
                drops.tool += 1
            else:
                drops.other += 1

    # -- the background thread ---------------------------------------------------------

    def _start_worker(self) -> None:
        with self._export_lock:
            if self._worker is not None or self._shutdown:
                return
            self._worker = threading.Thread(
                target=self._work, name="tooltrail-span-processor", daemon=True
            )
            self._worker.start()

    def _work(self) -> None:
        while not self._shutdown:
            self._wake.wait(self._until_due())
            self._wake.clear()
            if self._shutdown or self._until_due() > 0:
                continue
            try:
                with self._export_lock:
                    self._export(self._take())
            except Exception:  # the landing thread must outlive any bug in a batch
                _log.exception("tooltrail: landing a batch of spans failed")
            with self._landed:
                self._landed.notify_all()

    def _until_due(self) -> float:
        """Seconds until the next batch is due (the schedule delay when nothing waits)."""
        queue = self._queue
        if len(queue) >= self._max_batch or (self._drops and not self._stalled):
            return 0.0
        try:
            oldest = queue[0][0]
        except IndexError:
            return self.schedule_delay_s
        return max(0.0, oldest + self.schedule_delay_s - time.monotonic())

    def _take(self) -> list[ReadableSpan]:
        """Holding the export lock: the next batch (oldest first), with counts of drops."""
        queue = self._queue
        count = min(len(queue), self._max_batch)
        if count:
            first, span = queue.popleft()
            self._due = first + self.max_lag_s  # the batch in flight
            batch = [span]
            batch.extend(queue.popleft()[1] for _ in range(count - 1))
        else:
            batch = []
        # Not waiting for the lock: a thread holding it may be the one a SIGTERM
        # handler interrupted; the counts then land with the next batch.
        if self._drops and not self._stalled and self._drops_lock.acquire(blocking=False):
            try:
                batch.extend(d.span() for d in self._drops.values())
                self._drops = {}
            finally:
                self._drops_lock.release()
        return batch

    def _export(self, batch: list[ReadableSpan]) -> None:
        """Holding the export lock: land ``batch``."""
        if batch:
            # Spans an instrumented library would start while landing are not traced.
            token = otel_context.attach(
                otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
            )
            try:
                self.span_exporter.export(batch)
            except Exception:  # an exporter must not raise; never let it end the thread
                _log.exception("tooltrail: exporting %d spans failed", len(batch))
            finally:
                otel_context.detach(token)
        self._stalled = False
        try:
            self._due = self._queue[0][0] + self.max_lag_s
        except IndexError:
            self._due = _NEVER

    # -- flush and shutdown ------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Land everything queued (and any batch in flight) before returning."""
        if self._shutdown:
            return False
        self._drain()
        return True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        worker = self._worker
        self._shutdown = True
        self._wake.set()
        if worker is not None and worker is not threading.current_thread():
            worker.join(SHUTDOWN_WAIT_S)
        self._drain()
        self.span_exporter.shutdown()

    def _drain(self) -> None:
        with self._export_lock:
            self._stalled = False  # a flush is progress: counts may land
            while self._queue or self._drops:
                batch = self._take()
                if not batch:
                    return  # only counts, whose lock another thread holds
                self._export(batch)
