"""OTLP/JSON ingest: files as the OpenTelemetry Collector's file exporter writes them.

Good files are produced realistically: spans made by the real SDK, encoded into the
protobuf ``ExportTraceServiceRequest`` the way the OTLP exporter encodes them, written as
JSON the way the Collector writes it (hex ids, integer enums, one request per line). The
landed Parquet is read back with DuckDB.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tooltrail import semconv as sc
from tooltrail.collector.normalize import Normalizer
from tooltrail.collector.otlp import (
    IngestReport,
    ingest_files,
    read_otlp_json,
    records_from_request,
)
from tooltrail.errors import IngestError, StoreError
from tooltrail.redact import Redactor
from tooltrail.schema import Row

FIXTURE = Path(__file__).parent / "fixtures" / "collector_traces.jsonl"


# --- producing collector files from real SDK spans -------------------------------------


def encode(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """What the OTLP exporter sends for ``spans``: its own encoder."""
    request: ExportTraceServiceRequest = encode_spans(spans)
    return request


def collector_json(req: ExportTraceServiceRequest) -> str:
    """One line as the Collector's file exporter writes it: hex ids, integer enums."""
    doc = json_format.MessageToDict(req, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(doc, separators=(",", ":"))


@pytest.fixture
def sdk_spans() -> Iterator[list[ReadableSpan]]:
    """A small realistic session: an agent span, tool calls (one failing), an LLM call."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "release-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    session = {sc.SESSION_ID: "sess-ingest", sc.GEN_AI_CONVERSATION_ID: "sess-ingest"}
    with tracer.start_as_current_span(
        "invoke_agent release-bot",
        attributes={sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, **session},
    ):
        with tracer.start_as_current_span(
            "tools/call git_status",
            kind=SpanKind.CLIENT,
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.GEN_AI_TOOL_NAME: "git_status",
                sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path": "/srv/app"}',
                sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
                sc.TT_SEQUENCE: 1,
                sc.TT_ENFORCED: True,
                sc.TT_DECISION: "ALLOW",
                sc.TT_POLICY_MATCHED: ("read-only", "audit"),
                sc.TT_GATEWAY: True,
                sc.TT_MCP_CLIENT_NAME: "claude-code",
                sc.TT_MCP_CLIENT_VERSION: "1.0.3",
                sc.TT_TOOL_DEFINITION_CHANGED: True,
                sc.TT_TOOL_DEFINITION_HASH: "0123456789abcdef",
                "retry.ratio": 0.5,
                **session,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "tools/call git_push",
            kind=SpanKind.CLIENT,
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.GEN_AI_TOOL_NAME: "git_push",
                sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path": "/srv/app", "password": "pw1"}',
                **session,
            },
            record_exception=False,
        ) as span:
            span.record_exception(RuntimeError("rejected"))
            span.set_status(Status(StatusCode.ERROR, "push rejected"))
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                sc.GEN_AI_OPERATION_NAME: "chat",
                sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
                sc.GEN_AI_USAGE_INPUT_TOKENS: 300,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 40,
                **session,
            },
        ):
            pass
    finished = list(exporter.get_finished_spans())
    yield finished
    provider.shutdown()


def landed(data: Path) -> list[dict[str, Any]]:
    files = list((data / "spans").glob("date=*/*.parquet"))
    if not files:
        return []
    con = duckdb.connect()
    try:
        rel = con.sql(
            # Timestamps as epoch microseconds: TIMESTAMPTZ to Python would need pytz.
            "SELECT * REPLACE (epoch_us(start_time) AS start_time, epoch_us(end_time) AS end_time)"
            " FROM read_parquet(?, hive_partitioning = false) ORDER BY start_time",
            params=[[str(f) for f in files]],
        )
        names = rel.columns
        return [dict(zip(names, values, strict=True)) for values in rel.fetchall()]
    finally:
        con.close()


# --- good files ------------------------------------------------------------------------


def test_collector_file_of_sdk_spans_lands_every_span(
    sdk_spans: list[ReadableSpan], tmp_path: Path
) -> None:
    path = tmp_path / "traces.jsonl"
    # Two requests (two lines) and a blank line, as a rotating file exporter produces.
    lines = [collector_json(encode(sdk_spans[:2])), "", collector_json(encode(sdk_spans[2:]))]
    path.write_text("\n".join(lines) + "\n")

    report = ingest_files([path], tmp_path / "data")

    assert report == IngestReport(files=1, spans=4, rows=4, written=report.written)
    assert report.written and all(p.exists() for p in report.written)
    rows = {r["span_id"]: r for r in landed(tmp_path / "data")}
    assert len(rows) == 4
    for span in sdk_spans:
        ctx = span.context
        assert ctx is not None
        row = rows[format(ctx.span_id, "016x")]
        assert row["trace_id"] == format(ctx.trace_id, "032x")
        parent = span.parent
        assert row["parent_span_id"] == (format(parent.span_id, "016x") if parent else None)
        assert row["name"] == span.name
        assert row["session_id"] == "sess-ingest"
        assert row["service_name"] == "release-bot"
        assert span.start_time is not None and span.end_time is not None
        assert (row["start_time"], row["end_time"]) == (
            span.start_time // 1000,
            span.end_time // 1000,
        )
    by_name = {r["name"]: r for r in rows.values()}
    status = by_name["tools/call git_status"]
    assert (status["kind"], status["span_type"], status["tool_name"]) == (
        "CLIENT",
        "tool",
        "git_status",
    )
    assert (status["sequence"], status["enforced"], status["decision"]) == (1, True, "ALLOW")
    assert status["policy_matched"] == ["read-only", "audit"]
    assert json.loads(status["attributes"])["retry.ratio"] == 0.5
    assert (status["governed_by"], status["mcp_client_name"], status["mcp_client_version"]) == (
        "gateway",
        "claude-code",
        "1.0.3",
    )
    assert (status["tool_definition_changed"], status["tool_definition_hash"]) == (
        True,
        "0123456789abcdef",
    )
    push = by_name["tools/call git_push"]
    assert push["governed_by"] is None  # no sequence number: not tooltrail's
    assert (push["status_code"], push["status_message"]) == ("ERROR", "push rejected")
    assert push["error_type"] == "RuntimeError"
    assert json.loads(push["arguments"]) == {"repo_path": "/srv/app", "password": "[REDACTED:key]"}
    assert push["redactions"] == 1
    chat = by_name["chat gpt-4o"]
    assert (chat["span_type"], chat["model"], chat["input_tokens"], chat["output_tokens"]) == (
        "llm",
        "gpt-4o",
        300,
        40,
    )
    assert by_name["invoke_agent release-bot"]["span_type"] == "agent"


def test_ingested_rows_equal_exported_rows(sdk_spans: list[ReadableSpan], tmp_path: Path) -> None:
    # A span lands identically whether it came through the exporter or a collector file.
    path = tmp_path / "traces.jsonl"
    path.write_text(collector_json(encode(sdk_spans)) + "\n")
    normalizer = Normalizer(Redactor())
    from_file = [normalizer.normalize(r) for r in read_otlp_json(path)]
    from_sdk = [Normalizer(Redactor()).normalize_readable(s) for s in sdk_spans]
    assert from_file == from_sdk


def test_collector_fixture_file_is_read_exactly() -> None:
    records = read_otlp_json(FIXTURE)
    assert [r.name for r in records] == ["tools/call git_status", "ChatCompletion", "git_push.tool"]
    mcp, llm, push = records
    assert (mcp.trace_id, mcp.span_id, mcp.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    assert (mcp.kind, mcp.status_code, mcp.start_ns, mcp.end_ns) == (
        "CLIENT",
        "UNSET",
        1795250000000000000,
        1795250000125000000,
    )
    assert mcp.attributes[sc.TT_SEQUENCE] == 2
    assert mcp.attributes[sc.TT_ENFORCED] is True
    assert mcp.attributes[sc.TT_POLICY_MATCHED] == ("read-only", "audit")
    assert mcp.resource == {"service.name": "release-bot", "host.name": "ci-7"}
    assert (llm.kind, llm.status_code, llm.resource) == (
        "INTERNAL",
        "OK",
        {"service.name": "phoenix-app"},
    )
    # Upper-case hex ids land lower-case; an empty parent is no parent; kind UNSPECIFIED
    # is read as INTERNAL.
    assert (push.trace_id, push.span_id, push.parent_span_id, push.kind) == (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        None,
        "INTERNAL",
    )
    assert (push.status_code, push.status_message) == ("ERROR", "push rejected")
    assert push.attributes["retry.ratio"] == 0.25
    assert push.attributes["payload.digest"] == b"\x00\x01binary"
    assert push.attributes["request.meta"] == {"attempt": 3, "dry_run": False}
    assert push.attributes["empty.value"] is None
    assert push.events == [
        ("exception", {"exception.type": "GitCommandError", "exception.message": "rejected"})
    ]


def test_collector_fixture_lands_as_rows(tmp_path: Path) -> None:
    report = ingest_files([FIXTURE], tmp_path / "data")
    assert (report.files, report.spans, report.rows) == (1, 3, 3)
    rows = {r["name"]: r for r in landed(tmp_path / "data")}
    mcp = rows["tools/call git_status"]
    assert (mcp["tool_name"], mcp["session_id"], mcp["span_type"]) == (
        "git_status",
        "mcp-3f2a",
        "tool",
    )
    llm = rows["ChatCompletion"]
    assert (llm["span_type"], llm["model"], llm["input_tokens"], llm["session_id"]) == (
        "llm",
        "gpt-4o-mini",
        120,
        "oi-session-1",
    )
    push = rows["git_push.tool"]
    assert (push["tool_name"], push["session_id"], push["error_type"]) == (
        "git_push",
        "tl-9",
        "GitCommandError",
    )
    assert json.loads(push["arguments"]) == {"repo_path": "/srv/app", "remote": "origin"}
    extra = json.loads(push["attributes"])
    assert extra["payload.digest"] == b"\x00\x01binary".hex()
    assert extra["request.meta"] == {"attempt": 3, "dry_run": False}


def test_row_hook_is_applied_before_landing(sdk_spans: list[ReadableSpan], tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(collector_json(encode(sdk_spans)) + "\n")
    seen: list[str] = []

    def hook(row: Row) -> None:
        seen.append(row["span_id"])
        if row["span_type"] == "tool" and row["decision"] is None:
            row["decision"] = "DENY"
            row["enforced"] = False

    ingest_files([path], tmp_path / "data", row_hook=hook)
    rows = landed(tmp_path / "data")
    # As in the collector and the exporter (one pipeline): the hook sees undecided tool rows.
    assert seen and set(seen) <= {r["span_id"] for r in rows if r["span_type"] == "tool"}
    push = next(r for r in rows if r["name"] == "tools/call git_push")
    assert (push["decision"], push["enforced"]) == ("DENY", False)


def test_pretty_printed_request_and_base64_ids_are_read(
    sdk_spans: list[ReadableSpan], tmp_path: Path
) -> None:
    # protobuf's own JSON mapping (base64 ids, enum names), pretty-printed over many lines.
    path = tmp_path / "pretty.json"
    path.write_text(json_format.MessageToJson(encode(sdk_spans)))
    records = read_otlp_json(path)
    ctx = sdk_spans[0].context
    assert ctx is not None
    assert len(records) == 4
    assert records[0].trace_id == format(ctx.trace_id, "032x")


def test_records_from_protobuf_request(sdk_spans: list[ReadableSpan]) -> None:
    records = records_from_request(encode(sdk_spans))
    assert [r.name for r in records] == [s.name for s in sdk_spans]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("span_id", b"\x01\x02", r"spans\[1\]\.spanId: expected a 8-byte id, got 2 bytes"),
        ("span_id", bytes(8), r"spans\[1\]\.spanId: an all-zero id is invalid"),
        ("trace_id", bytes(16), r"spans\[1\]\.traceId: an all-zero id is invalid"),
        ("trace_id", b"\x01" * 8, r"spans\[1\]\.traceId: expected a 16-byte id"),
        ("parent_span_id", b"\x01" * 9, r"spans\[1\]\.parentSpanId: expected a 8-byte id"),
        ("parent_span_id", bytes(8), r"spans\[1\]\.parentSpanId: an all-zero id"),
        ("start_time_unix_nano", 0, r"spans\[1\]: startTimeUnixNano is missing"),
    ],
)
def test_records_from_request_rejects_an_invalid_span(
    sdk_spans: list[ReadableSpan], field: str, value: Any, message: str
) -> None:
    req = encode(sdk_spans)
    setattr(req.resource_spans[0].scope_spans[0].spans[1], field, value)
    with pytest.raises(IngestError, match=r"resourceSpans\[0\]\.scopeSpans\[0\]\." + message):
        records_from_request(req)


# --- bad files: clear errors, nothing landed -------------------------------------------


def _good_line(sdk_spans: list[ReadableSpan]) -> str:
    return collector_json(encode(sdk_spans))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"resourceSpans": [', r"not valid JSON"),
        ("[1, 2]", r"expected a JSON object"),
        ('{"resourceMetrics": []}', r"holds resourceMetrics, not traces"),
        ('{"foo": 1}', r"no resourceSpans"),
        ('{"resourceSpans": {"a": 1}}', r"resourceSpans: expected a list"),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz","spanId":"00f067aa0ba902b7",'
            '"startTimeUnixNano":"1"}]}]}]}',
            r"spans\[0\]\.traceId: expected 32 hex digits, got 'xyz'",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e473z",'
            '"spanId":"00f067aa0ba902b7","startTimeUnixNano":"1"}]}]}]}',
            r"traceId: '4bf92f3577b34da6a3ce929d0e0e473z' is not hex",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"00000000000000000000000000000000",'
            '"spanId":"00f067aa0ba902b7","startTimeUnixNano":"1"}]}]}]}',
            r"traceId: an all-zero id is invalid",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736",'
            '"spanId":"00f067aa0ba902b7"}]}]}]}',
            r"startTimeUnixNano is missing",
        ),
        (
            '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736",'
            '"spanId":"00f067aa0ba902b7","startTimeUnixNano":"soon"}]}]}]}',
            r"not a valid ExportTraceServiceRequest: .*startTimeUnixNano",
        ),
    ],
)
def test_bad_line_names_file_and_line_and_lands_nothing(
    sdk_spans: list[ReadableSpan], tmp_path: Path, bad_line: str, message: str
) -> None:
    path = tmp_path / "mixed.jsonl"
    path.write_text(f"{_good_line(sdk_spans)}\n\n{bad_line}\n{_good_line(sdk_spans)}\n")
    with pytest.raises(IngestError, match=rf"mixed\.jsonl:3: .*{message}"):
        ingest_files([path], tmp_path / "data")
    assert landed(tmp_path / "data") == []
    assert not (tmp_path / "data").exists()


def test_second_file_bad_lands_nothing_from_the_first(
    sdk_spans: list[ReadableSpan], tmp_path: Path
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(_good_line(sdk_spans) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_good_line(sdk_spans) + "\n{not json\n")
    with pytest.raises(IngestError, match=r"bad\.jsonl:2: not valid JSON"):
        ingest_files([good, bad], tmp_path / "data")
    assert landed(tmp_path / "data") == []
    # The good file alone does land.
    assert ingest_files([good], tmp_path / "data").rows == 4


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"nope\.jsonl: cannot read"):
        ingest_files([tmp_path / "nope.jsonl"], tmp_path / "data")
    with pytest.raises(IngestError, match="is a directory"):
        read_otlp_json(tmp_path)


def test_empty_file_lands_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert ingest_files([path], tmp_path / "data") == IngestReport(files=1, spans=0, rows=0)


def test_unwritable_data_directory_says_how_much_landed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "spans").write_text("a file where the spans directory must go")
    with pytest.raises(StoreError, match=r"cannot write to .*; 0 of \d+ rows were landed"):
        ingest_files([FIXTURE], data)


# --- the command, as a user runs it ------------------------------------------------------


def _tooltrail(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("tooltrail")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_ingest_sets_aside_a_poison_span_and_lands_the_rest(tmp_path: Path) -> None:
    """A span whose argument is JSON nested 5,000 deep under a credential-like key (the
    scrubber recursed into it) and one whose matched-rules attribute nests 5,000 deep:
    each is set aside alone (or lands scrubbed, once the step no longer raises); the
    others land; no traceback."""
    secret = "ghp_" + "Q7x" * 12
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    poisons = [
        {
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"token": '
            + "[" * 5000
            + f'"{secret}"'
            + "]" * 5000
            + "}"
        },
        {sc.TT_POLICY_MATCHED: "[" * 5000 + "]" * 5000},
    ]
    for extra in [{}, *poisons, {}]:
        attrs = {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "git_status"}
        with tracer.start_as_current_span("tools/call git_status", attributes={**attrs, **extra}):
            pass
    spans = list(exporter.get_finished_spans())
    provider.shutdown()
    path = tmp_path / "poison.jsonl"
    path.write_text(collector_json(encode(spans)) + "\n")
    result = _tooltrail("ingest", str(path), "--data", str(tmp_path / "data"))
    assert "Traceback" not in result.stderr
    rows = landed(tmp_path / "data")
    # Exit 1 when something was set aside (as compact when it skips), 0 when all landed.
    assert result.returncode == (1 if len(rows) < len(spans) else 0), result.stderr
    ids = [format(s.context.span_id, "016x") for s in spans]
    landed_ids = {r["span_id"] for r in rows}
    assert {ids[0], ids[3]} <= landed_ids  # the good ones
    for span_id in set(ids) - landed_ids:  # each poison not landed is named, with why
        assert f"span {span_id}: RecursionError while normalizing" in result.stderr
    assert secret not in result.stderr + result.stdout + json.dumps(rows, default=str)


def test_ingest_of_a_huge_json_integer_is_exit_2_naming_file_line_and_field(
    sdk_spans: list[ReadableSpan], tmp_path: Path
) -> None:
    doc = json.loads(_good_line(sdk_spans))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"][0]["value"] = {"intValue": 0}
    line = json.dumps(doc).replace('"intValue": 0', '"intValue": ' + "7" * 5000)
    path = tmp_path / "huge.jsonl"
    path.write_text(f"{_good_line(sdk_spans)}\n{line}\n")
    result = _tooltrail("ingest", str(path), "--data", str(tmp_path / "data"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "huge.jsonl:2:" in result.stderr and "attributes[0].value.intValue" in result.stderr
    assert "5000 digits" in result.stderr
    assert landed(tmp_path / "data") == []
