"""Shared by the instrumentation tests: instrument tooltrail so its spans land in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tooltrail.instrumentation as tt
from tooltrail.instrumentation import _settings


def instrument(exporter: InMemorySpanExporter, **settings: Any) -> None:
    """(Re-)instrument with ``settings`` (``enforce``, ``policy``, ...) on a new provider
    whose spans land in ``exporter``; replaces any earlier instrumentation."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = tt.McpInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(tracer_provider=provider, **settings)


@contextmanager
def instrumented(**settings: Any) -> Iterator[InMemorySpanExporter]:
    """``instrument(exporter, **settings)`` for the code inside ``with``, then uninstrument;
    yields the exporter."""
    exporter = InMemorySpanExporter()
    instrument(exporter, **settings)
    try:
        yield exporter
    finally:
        tt.McpInstrumentor().uninstrument()
        _settings.reset()  # uninstrument() keeps the settings; the next test starts afresh


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})
