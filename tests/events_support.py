"""Landing tool spans for the event tests: the real SDK and the real exporter."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tooltrail import semconv as sc
from tooltrail.collector.exporter import TooltrailSpanExporter


def land(data: Path, agent: str, session: str, calls: int) -> None:
    """``calls`` tool spans through the real SDK and the real exporter, a file each (what
    an agent's processor does; in-process, without an agent's start-up)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TooltrailSpanExporter(data)))
    tracer = provider.get_tracer("test")
    for i in range(calls):
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "deploy",
            sc.TT_SESSION_ID: session,
            sc.GEN_AI_AGENT_NAME: agent,
            sc.TT_SEQUENCE: i,
        }
        with tracer.start_as_current_span("execute_tool deploy", attributes=attrs):
            pass
    provider.shutdown()
