"""Tool spans landed through the real exporter at a chosen time (backdated for retention
and the audit chain's tests): one definition for test_chain, test_retention_recheck and
test_collect_retention."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from tooltrail import semconv as sc
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.collector.writer import iter_span_files


class Keep(SpanProcessor):
    """Keeps every ended span."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def tool_spans(session: str, decisions: Sequence[str], start: dt.datetime) -> list[ReadableSpan]:
    """One ended ``git_push`` tool span per decision, a second apart from ``start``."""
    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(keep)
    tracer = provider.get_tracer("test")
    for i, decision in enumerate(decisions):
        t = int((start + dt.timedelta(seconds=i)).timestamp() * 1e9)
        span = tracer.start_span(
            f"execute_tool git_push {i}",
            start_time=t,
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.GEN_AI_TOOL_NAME: "git_push",
                sc.TT_SESSION_ID: session,
                sc.GEN_AI_AGENT_NAME: "release-bot",
                sc.TT_SEQUENCE: i + 1,
                sc.TT_DECISION: decision,
                sc.TT_POLICY_RULE: "no-push" if decision == "DENY" else "pass",
                sc.TT_ENFORCED: True,
                sc.TT_BLAST_RADIUS: "High",
            },
        )
        span.end(end_time=t + 5_000_000)
    provider.shutdown()
    return keep.spans


def land(data: Path, session: str, decisions: Sequence[str], start: dt.datetime) -> list[Path]:
    """Land one batch through the real exporter; the span files that appeared."""
    before = set(iter_span_files(data))
    exporter = TooltrailSpanExporter(data, buffer_rows=0)
    exporter.export(tool_spans(session, decisions, start))
    exporter.shutdown()
    return sorted(set(iter_span_files(data)) - before)
