"""The official OTLP/HTTP exporter -> a real ``tooltrail collect`` -> the same rows as in-process.

One TracerProvider feeds the same spans to two exporters: ``TooltrailSpanExporter``
(in-process, into data ``a``) and the OpenTelemetry OTLP/HTTP exporter pointed at a
collector subprocess (into data ``b``). Both apply the same policy. Every span must land
exactly once in ``b``, as a row equal in every column to its row in ``a``.

JSON: ``opentelemetry-exporter-otlp-json-http`` (0.66b1) cannot be installed beside
``opentelemetry-exporter-otlp-proto-http`` 1.45.2 (they pin different
``opentelemetry-exporter-otlp-common`` versions), so the JSON test sends OTLP/JSON built
from the SDK's own encoder through the exporter package's own HTTP client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, landed_rows, metric, span_keys, wait_until
from google.protobuf import json_format
from opentelemetry.exporter.otlp.common import http as otlp_http
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._common import _build_transport
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from tooltrail import semconv as sc
from tooltrail.collector import TooltrailSpanExporter

POLICY = Path(__file__).resolve().parents[1] / "examples" / "policy-git.yaml"
TOOLS = ("git_status", "git_checkout", "git_reset", "git_commit", "git_add")


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def _make_spans(provider: TracerProvider, n: int) -> None:
    """Tool spans of every shape the normalizer reads: decided, undecided, errors, LLM."""
    tracer = provider.get_tracer("test-collect")
    for i in range(n):
        session = f"sess-{i % 7}"
        tool = TOOLS[i % len(TOOLS)]
        args: dict[str, Any] = {"repo_path": "/srv/app", "branch_name": "main" if i % 3 else "dev"}
        if tool == "git_add":
            args = {"repo_path": "/srv/app", "files": ["src/x.py", "prod.env"]}
        attrs: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: tool,
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(args),
            sc.MCP_SERVER_NAME: "git",
            sc.SESSION_ID: session,
            sc.GEN_AI_CONVERSATION_ID: session,
            sc.GEN_AI_AGENT_NAME: "release-bot",
            sc.TT_SEQUENCE: i,
            "custom.list": ("a", "b"),
            "custom.float": 0.5,
            "custom.secret": "token ghp_" + "A" * 36,
        }
        if i % 3 == 0:  # through the MCP gateway; some tools' definitions changed
            attrs[sc.TT_GATEWAY] = True
            attrs[sc.TT_MCP_CLIENT_NAME] = "claude-code"
            attrs[sc.TT_MCP_CLIENT_VERSION] = f"1.{i % 2}"
            if i % 6 == 0:
                attrs[sc.TT_TOOL_DEFINITION_CHANGED] = True
                attrs[sc.TT_TOOL_DEFINITION_HASH] = f"{i:016x}"
        elif i % 11 == 1:  # a third-party span: no sequence number
            del attrs[sc.TT_SEQUENCE]
        if i % 4 == 0:  # decided at call time: the collector must not re-decide it
            attrs[sc.TT_DECISION] = "ALLOW"
            attrs[sc.TT_POLICY_RULE] = "pass"
            attrs[sc.TT_ENFORCED] = True
        kind = SpanKind.CLIENT if i % 2 else SpanKind.INTERNAL
        with tracer.start_as_current_span(f"execute_tool {tool}", kind=kind, attributes=attrs) as s:
            if i % 5 == 0:
                s.set_status(Status(StatusCode.ERROR, "exit 128"))
                s.add_event("exception", {"exception.type": "GitError"})
    with tracer.start_as_current_span(
        "chat",
        attributes={
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_REQUEST_MODEL: "m-1",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 10,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
        },
    ):
        pass


def _provider(local: Path, *processors: SpanProcessor) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "remote-agent", "deployment.environment": "ci"})
    )
    provider.add_span_processor(
        BatchSpanProcessor(TooltrailSpanExporter(local, policy=POLICY), max_export_batch_size=512)
    )
    for p in processors:
        provider.add_span_processor(p)
    return provider


def _assert_same_rows(local: Path, remote: Path, n: int) -> None:
    a = landed_rows(local)
    b = landed_rows(remote)
    assert len(a) == n
    assert span_keys(b) == span_keys(a), "every span lands once"
    assert len(set(span_keys(b))) == n
    for ra, rb in zip(a, b, strict=True):
        assert rb == ra
    decided = [r for r in b if r["span_type"] == "tool" and r["enforced"] is False]
    assert decided, "the policy hook decided undecided tool spans"
    assert {r["decision"] for r in decided} >= {"DENY", "ALLOW"}
    assert all("ghp_" not in (r["attributes"] or "") for r in b), "redacted as in-process"
    governed = {r["governed_by"] for r in b if r["span_type"] == "tool"}
    assert governed == {"gateway", "instrumentation", None}
    assert any(r["tool_definition_changed"] for r in b)


@pytest.mark.parametrize("durability", ["spool", "direct"])
@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_protobuf_exporter_lands_same_rows(
    tmp_path: Path, durability: str, compression: Compression
) -> None:
    n = 600  # two BatchSpanProcessor batches (512 + 88)
    with CollectorProcess(
        tmp_path / "b",
        "--policy",
        str(POLICY),
        "--durability",
        durability,
        "--flush-interval",
        "0.2",
    ) as col:
        exporter = OTLPSpanExporter(endpoint=f"{col.url}/v1/traces", compression=compression)
        bsp = BatchSpanProcessor(exporter, max_export_batch_size=512)
        provider = _provider(tmp_path / "a", bsp)
        _make_spans(provider, n - 1)
        assert provider.force_flush(30_000)
        provider.shutdown()
        wait_until(lambda: metric(col.url, "spans_landed_total") >= n, what="all spans landed")
        assert metric(col.url, "spans_accepted_total") == n
        assert metric(col.url, "spans_rejected_total") == 0
    _assert_same_rows(tmp_path / "a", tmp_path / "b", n)


class _JsonOtlpExporter(SpanProcessor):
    """OTLP/JSON (hex ids, as the OTLP spec's JSON encoding requires) over the exporter's
    own HTTP client, gzip-compressed, with its retry logic."""

    def __init__(self, url: str) -> None:
        self.keep = _Keep()
        self.url = url

    def on_end(self, span: ReadableSpan) -> None:
        self.keep.on_end(span)

    def send(self) -> None:
        client = otlp_http._OTLPHTTPClient(
            transport=_build_transport(None, None, None, "", "", "", session=None),
            endpoint=f"{self.url}/v1/traces",
            kind="spans",
            compression=otlp_http.Compression.GZIP,
            headers={"Content-Type": "application/json"},
        )
        for start in range(0, len(self.keep.spans), 256):
            msg = encode_spans(self.keep.spans[start : start + 256])
            doc = json_format.MessageToDict(msg)
            _hex_ids(doc)
            result = client.export(json.dumps(doc).encode())
            assert result.success, result
        client.shutdown()


def _hex_ids(doc: dict[str, Any]) -> None:
    import base64

    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()


def test_json_bodies_land_same_rows(tmp_path: Path) -> None:
    n = 300
    with CollectorProcess(
        tmp_path / "b", "--policy", str(POLICY), "--flush-interval", "0.2"
    ) as col:
        sender = _JsonOtlpExporter(col.url)
        provider = _provider(tmp_path / "a", sender)
        _make_spans(provider, n - 1)
        provider.shutdown()
        sender.send()
        wait_until(lambda: metric(col.url, "spans_landed_total") >= n, what="all spans landed")
    _assert_same_rows(tmp_path / "a", tmp_path / "b", n)


def test_sessions_view_sees_remote_spans(tmp_path: Path) -> None:
    """Landed by the collector = queryable by analysts (the bench's end condition)."""
    from tooltrail import analytics

    with CollectorProcess(
        tmp_path / "b", "--policy", str(POLICY), "--flush-interval", "0.2"
    ) as col:
        exporter = OTLPSpanExporter(endpoint=f"{col.url}/v1/traces")
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _make_spans(provider, 70)
        provider.shutdown()
        wait_until(lambda: metric(col.url, "spans_landed_total") >= 71, what="landed")
    con = analytics.connect(tmp_path / "b")
    try:
        got = con.execute(
            "SELECT session_id, action_count FROM sessions WHERE action_count > 0"
            " ORDER BY session_id"
        ).fetchall()
    finally:
        con.close()
    # Every tool span is decided (by the agent or the collector's policy hook): counted.
    assert got == [(f"sess-{k}", 10) for k in range(7)]
