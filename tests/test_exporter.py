"""The exporter through the real OTel SDK: round trip, failure modes, processes, crashes."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from tooltrail import semconv as sc
from tooltrail.collector import TooltrailSpanExporter
from tooltrail.collector.writer import iter_span_files

AGENT = Path(__file__).parent / "agents" / "export_loop.py"


def _provider(exporter: TooltrailSpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _rows(data: Path) -> list[dict[str, object]]:
    con = duckdb.connect()
    try:
        cur = con.execute(
            "SELECT * FROM read_parquet(?, hive_partitioning=true) ORDER BY start_time",
            [str(data / "spans" / "date=*" / "*.parquet")],
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def test_round_trip_every_field(tmp_path: Path) -> None:
    provider = _provider(TooltrailSpanExporter(data_dir=tmp_path, policy=None))
    tracer = provider.get_tracer("test")
    made = []
    n = 25
    for i in range(n):
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_commit",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"repo_path": "/r/pay", "message": f"m{i}"}),
            sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
            sc.MCP_SERVER_NAME: "mcp-git",
            sc.TT_SESSION_ID: "sess-1",
            sc.SESSION_ID: "sess-1",
            sc.GEN_AI_AGENT_NAME: "release-bot",
            sc.TT_PARENT_SESSION_ID: "sess-0",
            sc.TT_SEQUENCE: i,
            sc.TT_TRIGGER: "schedule",
            sc.TT_DECISION: "REWRITE",
            sc.TT_POLICY_RULE: "rename-branch",
            sc.TT_POLICY_MATCHED: ("rename-branch", "audit-commits"),
            sc.TT_POLICY_VERSION: "abc123",
            sc.TT_ENFORCED: True,
            sc.TT_BLAST_RADIUS: "High",
            sc.TT_TARGET_REPO: "/r/pay",
            sc.TT_TARGET_BRANCH: "main",
            sc.TT_ARGUMENTS_REWRITTEN: json.dumps({"repo_path": "/r/pay", "branch": "agent/x"}),
            "custom.flag": "kept",
        }
        with tracer.start_as_current_span(
            "tools/call git_commit", kind=SpanKind.CLIENT, attributes=attrs
        ) as span:
            if i == 3:
                span.set_status(Status(StatusCode.ERROR, "boom"))
                span.set_attribute(sc.ERROR_TYPE, sc.ERROR_TYPE_TOOL_ERROR)
            made.append(span)
    rows = _rows(tmp_path)
    assert len(rows) == n
    by_span = {r["span_id"]: r for r in rows}
    for i, span in enumerate(made):
        ctx = span.get_span_context()
        row = by_span[format(ctx.span_id, "016x")]
        assert row["trace_id"] == format(ctx.trace_id, "032x")
        assert row["parent_span_id"] is None
        assert row["name"] == "tools/call git_commit"
        assert row["kind"] == "CLIENT"
        assert row["span_type"] == "tool"
        assert row["session_id"] == "sess-1"
        assert row["parent_session_id"] == "sess-0"
        assert row["sequence"] == i
        assert row["agent_name"] == "release-bot"
        assert row["service_name"] == "billing-agent"
        assert row["trigger"] == "schedule"
        assert row["tool_name"] == "git_commit"
        assert row["mcp_server"] == "mcp-git"
        assert json.loads(str(row["arguments"])) == {"repo_path": "/r/pay", "message": f"m{i}"}
        assert json.loads(str(row["arguments_rewritten"]))["branch"] == "agent/x"
        assert row["decision"] == "REWRITE"
        assert row["policy_rule"] == "rename-branch"
        assert list(row["policy_matched"]) == ["rename-branch", "audit-commits"]  # type: ignore[call-overload]
        assert row["policy_version"] == "abc123"
        assert row["enforced"] is True
        assert row["blast_radius"] == "High"
        assert (row["target_repo"], row["target_branch"]) == ("/r/pay", "main")
        assert row["redactions"] == 0
        start_ns, end_ns = span.start_time, span.end_time
        assert start_ns is not None and end_ns is not None
        assert row["duration_ms"] == pytest.approx((end_ns - start_ns) / 1e6, abs=0.01)
        assert row["start_time"].timestamp() == pytest.approx(start_ns / 1e9, abs=1e-5)  # type: ignore[attr-defined]
        assert json.loads(str(row["attributes"]))["custom.flag"] == "kept"
        assert json.loads(str(row["resource"]))["service.name"] == "billing-agent"
        if i == 3:
            assert (row["status_code"], row["status_message"]) == ("ERROR", "boom")
            assert row["error_type"] == "tool_error"
        else:
            assert row["status_code"] == "UNSET" and row["error_type"] is None


def test_decision_columns_stay_null_without_attributes(tmp_path: Path) -> None:
    provider = _provider(TooltrailSpanExporter(data_dir=tmp_path, policy=None))
    with provider.get_tracer("t").start_as_current_span(
        "execute_tool git_status",
        attributes={sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "git_status"},
    ):
        pass
    (row,) = _rows(tmp_path)
    for col in ("decision", "policy_rule", "policy_version", "enforced", "blast_radius"):
        assert row[col] is None, col


def test_secrets_never_reach_disk(tmp_path: Path) -> None:
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    provider = _provider(TooltrailSpanExporter(data_dir=tmp_path, policy=None))
    with provider.get_tracer("t").start_as_current_span(
        "execute_tool http",
        attributes={
            sc.GEN_AI_OPERATION_NAME: "execute_tool",
            sc.GEN_AI_TOOL_NAME: "http_get",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"url": "https://x", "auth": token}),
            "http.request.header.authorization": f"Bearer {token}",
        },
    ):
        pass
    (row,) = _rows(tmp_path)
    assert token not in json.dumps(row, default=str)
    assert int(row["redactions"]) >= 2  # type: ignore[call-overload]


def test_redaction_can_be_turned_off(tmp_path: Path) -> None:
    token = "ghp_" + "Z" * 36
    provider = _provider(TooltrailSpanExporter(data_dir=tmp_path, policy=None, redact=False))
    with provider.get_tracer("t").start_as_current_span(
        "execute_tool x",
        attributes={
            sc.GEN_AI_TOOL_NAME: "x",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"t": token}),
        },
    ):
        pass
    (row,) = _rows(tmp_path)
    assert token in str(row["arguments"])


def test_export_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    exporter = TooltrailSpanExporter(data_dir=blocker, policy=None)
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("x") as span:
        pass
    with caplog.at_level(logging.ERROR):
        result = exporter.export([span])  # type: ignore[list-item]
    assert result is SpanExportResult.FAILURE
    assert "failed to land" in caplog.text


def test_shutdown_is_idempotent_and_final(tmp_path: Path) -> None:
    exporter = TooltrailSpanExporter(data_dir=tmp_path, policy=None)
    assert exporter.force_flush() is True
    exporter.shutdown()
    exporter.shutdown()
    with TracerProvider().get_tracer("t").start_as_current_span("x") as span:
        pass
    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert list(iter_span_files(tmp_path)) == []


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLTRAIL_DATA", str(tmp_path / "from-env"))
    assert TooltrailSpanExporter(policy=None).data_dir == tmp_path / "from-env"


def test_registered_as_otel_traces_exporter() -> None:
    (ep,) = importlib.metadata.entry_points(group="opentelemetry_traces_exporter", name="tooltrail")
    assert ep.load() is TooltrailSpanExporter


def test_four_processes_into_one_directory(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(AGENT), str(tmp_path), "1500", "--tag", f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    con = duckdb.connect()
    total, distinct, names = con.execute(
        "SELECT count(*), count(DISTINCT span_id), count(DISTINCT name) "
        "FROM read_parquet(?, hive_partitioning=true)",
        [str(tmp_path / "spans" / "date=*" / "*.parquet")],
    ).fetchone() or (0, 0, 0)
    assert (total, distinct, names) == (6000, 6000, 6000)


def test_sigkill_mid_export_leaves_no_broken_visible_file(tmp_path: Path) -> None:
    for attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(AGENT), str(tmp_path), "0", "--forever", "--tag", f"k{attempt}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not list(iter_span_files(tmp_path)) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3 + attempt * 0.17)  # land in the middle of a later batch
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    files = list(iter_span_files(tmp_path))
    assert files, "the agent never landed anything"
    for f in files:  # every visible file is whole
        assert pq.read_table(f, partitioning=None).num_rows > 0
    con = duckdb.connect()
    (count,) = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning=true)",
        [str(tmp_path / "spans" / "date=*" / "*.parquet")],
    ).fetchone() or (0,)
    assert count > 0


def _spans(n: int) -> list[object]:
    tracer = TracerProvider().get_tracer("t")
    out = []
    for i in range(n):
        with tracer.start_as_current_span(
            f"execute_tool t{i}", attributes={sc.GEN_AI_TOOL_NAME: "t"}
        ) as span:
            pass
        out.append(span)
    return out


def _landed(data: Path) -> int:
    return sum(pq.read_table(f, partitioning=None).num_rows for f in iter_span_files(data))


def test_full_batches_are_buffered_until_the_queue_drains(tmp_path: Path) -> None:
    exporter = TooltrailSpanExporter(
        data_dir=tmp_path, policy=None, buffer_rows=100, full_batch=4, max_delay_s=60
    )
    assert exporter.export(_spans(4)) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert exporter.export(_spans(4)) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert _landed(tmp_path) == 0  # backed up: wait for a bigger file
    exporter.export(_spans(2))  # type: ignore[arg-type]
    files = list(iter_span_files(tmp_path))
    assert len(files) == 1 and _landed(tmp_path) == 10  # drained: one file, everything
    exporter.shutdown()


def test_buffer_threshold_and_force_flush_and_shutdown_land(tmp_path: Path) -> None:
    exporter = TooltrailSpanExporter(
        data_dir=tmp_path, policy=None, buffer_rows=8, full_batch=4, max_delay_s=60
    )
    for _ in range(2):
        exporter.export(_spans(4))  # type: ignore[arg-type]
    assert _landed(tmp_path) == 8  # threshold reached
    exporter.export(_spans(4))  # type: ignore[arg-type]
    assert _landed(tmp_path) == 8
    assert exporter.force_flush() is True
    assert _landed(tmp_path) == 12
    exporter.export(_spans(4))  # type: ignore[arg-type]
    exporter.shutdown()
    assert _landed(tmp_path) == 16


def test_buffered_rows_land_after_max_delay(tmp_path: Path) -> None:
    exporter = TooltrailSpanExporter(
        data_dir=tmp_path, policy=None, buffer_rows=1000, full_batch=4, max_delay_s=0.2
    )
    exporter.export(_spans(4))  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while _landed(tmp_path) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _landed(tmp_path) == 4
    exporter.shutdown()


def test_a_failed_landing_keeps_the_rows_for_the_next_attempt(tmp_path: Path) -> None:
    import datetime as dt

    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(
        data_dir=data, policy=None, buffer_rows=100, full_batch=4, max_delay_s=60
    )
    assert exporter.export(_spans(4)) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    # A file where today's partition directory must go: landing fails, even for root.
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    blocker = data / "spans" / f"date={today}"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    assert exporter.force_flush() is False
    assert exporter.export(_spans(2)) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    blocker.unlink()
    assert exporter.force_flush() is True
    assert _landed(data) == 6  # the acknowledged rows: nothing lost, nothing twice
    exporter.shutdown()


def test_far_future_and_pre_1970_spans_land_with_the_rest(tmp_path: Path) -> None:
    """A sender's broken clock must not cost the batch it shares (nor the acknowledged
    rows buffered before it): every span lands, under its own (clamped) date."""
    exporter = TooltrailSpanExporter(
        data_dir=tmp_path, policy=None, buffer_rows=100, full_batch=4, max_delay_s=60
    )
    tracer = TracerProvider().get_tracer("t")
    odd = []
    for start_ns in ((2**53 + 1) * 1000, 2**63 - 1, 1):
        span = tracer.start_span("execute_tool odd", start_time=start_ns)
        span.end(end_time=start_ns)
        odd.append(span)
    assert exporter.export(_spans(4)) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert exporter.export(odd) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    exporter.shutdown()
    assert _landed(tmp_path) == 7
    days = {f.parent.name for f in iter_span_files(tmp_path)}
    assert {"date=2255-06-05", "date=2262-04-11", "date=1970-01-01"} <= days
