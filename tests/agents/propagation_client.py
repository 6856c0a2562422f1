"""Calls ``echo_meta_server`` through an instrumented ``ClientSession`` and prints, as JSON,
what the server saw in ``_meta`` plus every finished span (for the propagation test).

Runs in its own process so that the global tracer provider is ours: mcp 2.x opens its own
``MCP send`` spans with the global provider, and the test checks which of them remain.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tooltrail.instrumentation import McpInstrumentor

SERVER = Path(__file__).with_name("echo_meta_server.py")


async def call() -> dict[str, Any]:
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER)])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        result = await s.call_tool("echo_meta", {})
        text = result.content[0].text  # type: ignore[union-attr]
        seen: dict[str, Any] = json.loads(text)
        return seen


def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    McpInstrumentor().instrument()
    seen = anyio.run(call)
    spans = [
        {
            "name": s.name,
            "trace_id": format(s.context.trace_id, "032x"),
            "span_id": format(s.context.span_id, "016x"),
            "parent_span_id": format(s.parent.span_id, "016x") if s.parent else None,
            "scope": s.instrumentation_scope.name if s.instrumentation_scope else None,
        }
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"meta": seen, "spans": spans}))


if __name__ == "__main__":
    main()
