"""kill -9 during sustained load: after a restart every acknowledged span is there once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from collect_support import CollectorProcess, landed_rows, metric, post_traces
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_collect_http import make_request

PB = "application/x-protobuf"
SPANS_PER_REQUEST = 200


def _sender(url: str, acked: list[str], stop: threading.Event) -> None:
    """Post until the collector dies; keep the ids of spans it acknowledged."""
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        req = make_request(SPANS_PER_REQUEST)
        ids = [s.span_id.hex() for s in req.resource_spans[0].scope_spans[0].spans]
        try:
            status, _, _ = post_traces(url, req.SerializeToString(), PB)
        except OSError:
            return  # killed: this request was never acknowledged
        if status == 200:
            acked.extend(ids)


@pytest.mark.parametrize("durability", ["spool", "direct"])
def test_kill_9_loses_and_duplicates_nothing_acknowledged(tmp_path: Path, durability: str) -> None:
    data = tmp_path / "data"
    acked: list[str] = []
    stop = threading.Event()
    col = CollectorProcess(data, "--durability", durability, "--flush-interval", "0.05").start()
    try:
        senders = [threading.Thread(target=_sender, args=(col.url, acked, stop)) for _ in range(3)]
        for t in senders:
            t.start()
        # Kill once a good amount is acknowledged and landing is running behind the load.
        deadline = time.monotonic() + 20
        while len(acked) < 6_000 and time.monotonic() < deadline:
            time.sleep(0.02)
        col.kill9()
        stop.set()
        for t in senders:
            t.join(timeout=30)
    finally:
        stop.set()
        col.stop()
    assert len(acked) >= 6_000, "the load did not get going"
    with CollectorProcess(data, "--durability", durability) as again:
        assert again.stop() == 0  # start-up recovery ran; SIGTERM drains what is left
    if durability == "spool":
        # Under this load the killed collector always had acknowledged, unlanded spans.
        assert "left by a previous run" in again.stderr()
    landed = [r["span_id"] for r in landed_rows(data)]
    assert len(landed) == len(set(landed)), "a span landed twice"
    missing = set(acked) - set(landed)
    assert not missing, f"{len(missing)} acknowledged spans lost"
    assert not list((data / "spool").glob("seg-*.wal"))  # all landed and removed


def test_direct_mode_batch_resent_after_a_crash_lands_once(tmp_path: Path) -> None:
    """The batch landed, the collector died before its 200 left, the SDK sent the batch
    again to the restarted collector: it lands once (direct mode names a request's file
    after its content)."""
    data = tmp_path / "data"
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "resender"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("resend")
    for i in range(40):
        with tracer.start_as_current_span("execute_tool git_status") as span:
            span.set_attributes({"gen_ai.tool.name": "git_status", "tooltrail.sequence": i})
    spans = memory.get_finished_spans()
    provider.shutdown()
    with CollectorProcess(data, "--durability", "direct") as col:
        sender = OTLPSpanExporter(endpoint=f"{col.url}/v1/traces")
        assert sender.export(spans) == SpanExportResult.SUCCESS
        col.kill9()  # as if the 200 never left
    with CollectorProcess(data, "--durability", "direct") as again:
        resender = OTLPSpanExporter(endpoint=f"{again.url}/v1/traces")
        assert resender.export(spans) == SpanExportResult.SUCCESS
        assert metric(again.url, "spans_duplicate_skipped_total") == len(spans)
        assert metric(again.url, "spans_landed_total") == 0
    landed = [r["span_id"] for r in landed_rows(data)]
    assert sorted(landed) == sorted(format(s.context.span_id, "016x") for s in spans)
