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
* **The event loop never waits.** A tool span ended on a thread running an asyncio
  event loop does not wait (that would stall every task of the loop, MCP keep-alives
  included): it is queued (or, with ``max_queue_size`` spans queued, counted as dropped).
  The loop's tool calls get their back-pressure before they start instead: tooltrail's
  async wrappers (``@tool`` on a coroutine function, the MCP client) ``await``
  ``backlog()`` while the record is behind, so the *calling task* waits and the loop
  runs on.

Only the background thread lands, and it never waits for a lock a caller can hold: a
signal handler that interrupted the main thread anywhere in this module (inside
``on_end``, ``force_flush``...) can still land everything from another thread, as
tooltrail's SIGTERM handler does. ``force_flush`` asks that thread to land everything
queued (and the batch in flight) and waits at most ``timeout_millis`` for it;
``shutdown`` waits at most ``SHUTDOWN_WAIT_S``: a stalled exporter cannot hang the
process at exit. Fork: a child starts with an empty queue and its own background thread
(the parent's spans are the parent's).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from tooltrail.semconv import (
    DROPPED_OTHER_SPANS,
    DROPPED_SPANS_NAME,
    DROPPED_TOOL_SPANS,
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
    "backlog",
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
# Threads waiting for landing look again this often (the notice is best effort).
_POLL_S: Final = 0.05
# Async tool calls waiting for landing look again this often (a sleep of the task only).
_ASYNC_POLL_S: Final = 0.01
# How long shutdown waits for the background thread to land what is queued.
SHUTDOWN_WAIT_S: Final = 30.0

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


class _Request:
    """A ``force_flush`` or ``shutdown`` waiting for the background thread: it lands
    everything queued when it takes the request, then answers on ``done`` (a
    ``SimpleQueue``: putting never waits for a lock, whoever holds what)."""

    __slots__ = ("done", "stop")

    def __init__(self, *, stop: bool) -> None:
        self.stop = stop
        self.done: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def wait(self, timeout_s: float) -> bool:
        try:
            return self.done.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return False


class TooltrailSpanProcessor(SpanProcessor):
    """Queues ended spans and lands them in batches through ``exporter`` (module doc).

    Args:
        exporter: usually a ``TooltrailSpanExporter``; one with ``land_each_batch()`` is
            told to land every batch it is handed at once (this processor batches).
        schedule_delay_s: the longest a span waits in the queue.
        max_lag_s: tool spans wait while the oldest span not yet landed is this old.
        max_batch: the largest batch handed over (a full one is handed over at once).
        max_queue_size: queued spans at which tool spans wait and other spans are dropped.
        max_wait_s: the longest a tool span's thread (or an async call) waits.
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
        _register(self)
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
        # holding _export_lock (the background thread, or a flush when it cannot run).
        self._queue: deque[tuple[float, ReadableSpan]] = deque()
        self._export_lock = threading.Lock()
        # To the background thread: None (a full batch: wake up) or a _Request. A
        # SimpleQueue, because putting into it takes no lock a caller could be holding.
        self._signals: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._woken = False
        # Notified after each landing, for threads waiting under back-pressure.
        self._landed = threading.Condition(threading.Lock())
        # When tool spans start to wait: the oldest span in flight, queued at + max_lag.
        self._due = _NEVER
        self._stalled = False
        self._drops_lock = threading.Lock()
        self._drops: dict[tuple[object, ...], _Drops] = {}
        self._start_lock = threading.Lock()
        self._worker: threading.Thread | None = None

    # -- the caller's side -------------------------------------------------------------

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled or self._shutdown:
            return
        now = time.monotonic()
        queue_ = self._queue
        if (now >= self._due or len(queue_) >= self._max_queue) and not self._room_for(span):
            return
        queue_.append((now, span))
        if len(queue_) >= self._max_batch and not self._woken:
            self._woken = True
            self._signals.put(None)
        if self._worker is None:
            self._start_worker()

    def _room_for(self, span: ReadableSpan) -> bool:
        """The record is behind: whether ``span`` may be queued (a tool span after waiting
        for the exporter to catch up); a span that may not is counted."""
        tool = is_tool_span(span)
        full = len(self._queue) >= self._max_queue
        if not tool or threading.current_thread() is self._worker or _on_event_loop():
            # Other spans never wait; nor does the landing thread (it would wait for
            # itself), nor an event loop (every task would stall: async tool calls wait
            # in ``backlog`` before they start instead).
            if not full:
                return True
        elif not self._stalled and self._wait_for_landing():
            return True
        elif not self._stalled:
            self._note_stalled()
        if not self._shutdown:
            self._count_drop(span, tool)
        return False

    def _note_stalled(self) -> None:
        """A wait for landing ran out: until the exporter lands again, nobody waits."""
        self._stalled = True
        _log.error(
            "tooltrail: the exporter landed nothing for %g s; tool spans are dropped"
            " (and counted in %s spans) until it does",
            self._max_wait,
            DROPPED_SPANS_NAME,
        )

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
                # In slices: the landing thread's notice is best effort (it never waits
                # for this lock).
                self._landed.wait(min(left, _POLL_S))
        return True

    async def _room(self) -> None:
        """Until the record has caught up (at most ``max_wait_s``): what an async tool
        call awaits before it starts. The loop runs other tasks meanwhile."""
        import asyncio

        deadline = time.monotonic() + self._max_wait
        while not self._caught_up() and not self._stalled:
            left = deadline - time.monotonic()
            if left <= 0:
                self._note_stalled()  # later calls do not wait; the span queues (on_end)
                return
            await asyncio.sleep(min(left, _ASYNC_POLL_S))

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

    def _start_worker(self) -> bool:
        """Start the background thread (once); False when there is none."""
        try:
            with self._start_lock:
                if self._worker is None and not self._shutdown:
                    worker = threading.Thread(
                        target=self._work, name="tooltrail-span-processor", daemon=True
                    )
                    worker.start()
                    self._worker = worker
        except RuntimeError:  # no new threads at interpreter exit: flush lands them
            _log.debug("tooltrail: cannot start the landing thread", exc_info=True)
        started = self._worker
        return started is not None and started.is_alive()

    def _work(self) -> None:
        while True:
            requests = self._next_signals()
            self._woken = False
            try:
                if requests:
                    self._land_queued()
                elif self._until_due() <= 0:
                    with self._export_lock:
                        self._export(self._take(self._max_batch)[0])
                landed = True
            except Exception:  # the landing thread must outlive any bug in a batch
                _log.exception("tooltrail: landing a batch of spans failed")
                landed = False
            for request in requests:
                request.done.put(landed)
            if any(r.stop for r in requests):
                return

    def _next_signals(self) -> list[_Request]:
        """Wait until a batch is due or a signal comes; the requests that came."""
        signals = self._signals
        timeout = self._until_due()
        try:
            first = signals.get(timeout=timeout) if timeout > 0 else signals.get_nowait()
        except queue.Empty:
            return []
        requests = [] if first is None else [first]
        while True:
            try:
                more = signals.get_nowait()
            except queue.Empty:
                return requests
            if more is not None:
                requests.append(more)

    def _until_due(self) -> float:
        """Seconds until the next batch is due (the schedule delay when nothing waits)."""
        queue_ = self._queue
        if len(queue_) >= self._max_batch or (self._drops and not self._stalled):
            return 0.0
        try:
            oldest = queue_[0][0]
        except IndexError:
            return self.schedule_delay_s
        return max(0.0, oldest + self.schedule_delay_s - time.monotonic())

    def _land_queued(self) -> None:
        """Land every span queued now (not those queued meanwhile: a caller that keeps
        ending spans cannot keep a flush from returning), and the counts of drops."""
        with self._export_lock:
            self._stalled = False  # a flush is progress: counts may land
            left = len(self._queue)
            while True:
                batch, taken = self._take(min(left, self._max_batch))
                if not batch:
                    return  # nothing left (or only counts, whose lock a thread holds)
                self._export(batch)
                left -= taken
                if left <= 0 and not self._drops:
                    return

    def _take(self, count: int) -> tuple[list[ReadableSpan], int]:
        """Holding the export lock: the next ``count`` queued spans (oldest first), with
        the counts of drops; and how many queued spans that is."""
        queue_ = self._queue
        count = min(len(queue_), count)
        if count:
            first, span = queue_.popleft()
            self._due = first + self.max_lag_s  # the batch in flight
            batch = [span]
            batch.extend(queue_.popleft()[1] for _ in range(count - 1))
        else:
            batch = []
        # Not waiting for the lock: a thread holding it may be the one a signal handler
        # interrupted; the counts then land with the next batch.
        if self._drops and not self._stalled and self._drops_lock.acquire(blocking=False):
            try:
                batch.extend(d.span() for d in self._drops.values())
                self._drops = {}
            finally:
                self._drops_lock.release()
        return batch, count

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
        # Best effort, never waiting: the lock's holder may be a thread a signal handler
        # interrupted; waiters look again every _POLL_S anyway.
        if self._landed.acquire(blocking=False):
            try:
                self._landed.notify_all()
            finally:
                self._landed.release()

    # -- flush and shutdown ------------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Land everything queued (and any batch in flight); False when that took longer
        than ``timeout_millis`` (it goes on landing in the background)."""
        if self._shutdown:
            return False
        return self._land_everything(timeout_millis / 1000, stop=False)

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        wait_s = SHUTDOWN_WAIT_S
        if self._land_everything(wait_s, stop=True):
            self.span_exporter.shutdown()
        else:
            # The exporter is still landing (a stalled disk): shutting it down under the
            # landing thread would not end that, and the process is not held up for it.
            _log.error(
                "tooltrail: spans still landing after %g s at shutdown; %d queued spans"
                " were not landed",
                wait_s,
                len(self._queue),
            )

    def _land_everything(self, timeout_s: float, *, stop: bool) -> bool:
        """Have everything queued landed within ``timeout_s``: by the background thread,
        which the caller waits for without holding any lock (the caller may be a signal
        handler that interrupted a thread of this processor: see the module doc)."""
        worker = self._worker
        if worker is threading.current_thread():
            return not self._queue  # called while landing: it lands right after
        if worker is None and not self._queue and not self._drops:
            return True
        request = _Request(stop=stop)
        if worker is not None or self._start_worker():
            self._signals.put(request)
            worker = self._worker
            if worker is not None and worker.is_alive():
                return request.wait(timeout_s)
        return self._land_here(timeout_s)

    def _land_here(self, timeout_s: float) -> bool:
        """No background thread (it could not start, or died): land on the caller's
        thread, waiting for the export lock at most ``timeout_s``."""
        if not self._export_lock.acquire(timeout=max(timeout_s, 0.0)):
            return False
        self._export_lock.release()
        self._land_queued()
        return not self._queue


def _register(processor: TooltrailSpanProcessor) -> None:
    global _processors
    live = [r for r in _processors if r() is not None]
    _processors = (*live, weakref.ref(processor))


# The live processors, for ``backlog`` (a tuple swapped whole: read without a lock).
_processors: tuple[weakref.ref[TooltrailSpanProcessor], ...] = ()


def backlog() -> Coroutine[Any, Any, None] | None:
    """What an async tool call awaits before it starts while a processor's record is
    behind (else None, at once): the task waits, the event loop runs on. A tool span
    ended on the loop's thread never waits (``on_end``), so without this an async agent
    could outrun the landing thread, and the loss window would grow with the queue."""
    for ref in _processors:
        processor = ref()
        if processor is not None and not processor._caught_up() and not processor._stalled:
            return processor._room()
    return None


def _on_event_loop() -> bool:
    """Whether this thread is running an asyncio event loop (asyncio not imported: no)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
