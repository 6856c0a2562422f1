"""Spans another agent sends into a session say nothing about that session (SECURITY §8).

A real `tooltrail collect` with access control, two agents added through the real CLI,
spans sent by the official OTel SDK OTLP/HTTP exporter with each agent's `tta_`
credential. bot-b holds its session (a tool span promising an end record, an LLM span).
bot-a then sends into it what carries no decision: a session-end record saying
`completed` (with a planted final output), a root agent span that errored, and an LLM
span with large token counts. bot-b's session keeps its status, end, token totals and
holder-recorded times in `sessions`, from the spans alone, from the session index alone
and from the index plus the files landed since; bot-a's spans are still in the session's
trace, marked claimed, and counted in `foreign_spans`. Before the fix bot-a's end record
made the session `completed` and its LLM span tripled the session's tokens.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, landed_rows, two_agent_collector, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tooltrail import analytics
from tooltrail import semconv as sc

SESSION = "sess-held"
TOOL = {
    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
    sc.GEN_AI_TOOL_NAME: "git_push",
    sc.TT_DECISION: "ALLOW",
    sc.TT_ENFORCED: True,
    sc.TT_POLICY_RULE: "pass",
    sc.TT_SEQUENCE: 1,
    sc.TT_SESSION_ENDS: True,  # the holder records its end: no end record -> active
}


def _llm(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_REQUEST_MODEL: "gpt-test",
        sc.GEN_AI_USAGE_INPUT_TOKENS: tokens_in,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: tokens_out,
    }


END = {
    sc.TT_SESSION_OUTCOME: "completed",
    sc.TT_SESSION_END_SOURCE: "session",
    sc.TT_SESSION_OUTPUT: "planted by bot-a",
}
ROOT_AGENT = {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT}


@pytest.fixture(scope="module")
def collector(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    """A collector with access control and two agents (bot-a, bot-b) with credentials."""
    with two_agent_collector(
        tmp_path_factory.mktemp("foreign"), "--flush-interval", "0.2"
    ) as running:
        yield running


def _send(url: str, token: str, *spans: tuple[str, dict[str, Any], bool]) -> None:
    """Each of ``spans`` (name, attributes, errored) in session SESSION, one request."""
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}
    )
    provider = TracerProvider(resource=Resource.create({}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("foreign")
    for name, attributes, errored in spans:
        span = tracer.start_span(name, attributes={sc.TT_SESSION_ID: SESSION, **attributes})
        if errored:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end()
    provider.shutdown()


def _landed(data: Path, count: int) -> list[dict[str, Any]]:
    def rows() -> list[dict[str, Any]]:
        return [r for r in landed_rows(data) if r["session_id"] == SESSION]

    wait_until(lambda: len(rows()) >= count, what=f"{count} rows of {SESSION} landed")
    return rows()


def _copy_new(data: Path, copy: Path) -> None:
    """The span files of ``data`` not yet in ``copy`` (the collector's own directory has
    access control; which reader reads it is not what is tested here)."""
    for path in (data / "spans").rglob("*.parquet"):
        target = copy / path.relative_to(data)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def _uses_index(copy: Path) -> bool:
    with analytics.connect(copy) as con:
        rows = con.sql(
            "SELECT sql FROM duckdb_views() WHERE view_name = '_session_totals'"
        ).fetchall()
    return analytics.SESSION_INDEX_FILE in rows[0][0]


def _held(copy: Path) -> dict[str, Any]:
    frame = analytics.sessions(copy)
    (row,) = frame.filter(frame["session_id"] == SESSION).to_dicts()
    return row


@pytest.fixture(scope="module")
def views(
    collector: tuple[CollectorProcess, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """The held session's `sessions` row before bot-a's spans, and after them read three
    ways (no index; index plus the files since; index over everything), and the trace."""
    col, creds = collector
    data, url = col.data_dir, col.url
    _send(url, creds["bot-b"], ("execute_tool git_push", TOOL, False))
    _landed(data, 1)  # bot-b used it first: bot-b holds it
    _send(url, creds["bot-b"], ("chat gpt-test", _llm(100, 20), False))
    _landed(data, 2)
    copy = tmp_path_factory.mktemp("copy")
    _copy_new(data, copy)
    before = _held(copy)
    analytics.build_session_index(copy)  # covers bot-b's files only

    _send(
        url,
        creds["bot-a"],
        ("chat gpt-test", _llm(5000, 3000), False),
        ("invoke_agent intruder", ROOT_AGENT, True),
        (sc.SESSION_END_NAME, END, False),
    )
    rows = _landed(data, 5)
    _copy_new(data, copy)
    assert _uses_index(copy)
    merged = _held(copy)  # the index plus bot-a's files (the delta)
    (copy / analytics.SESSION_INDEX_FILE).unlink()
    assert not _uses_index(copy)
    full = _held(copy)
    trace = analytics.session_trace(copy, SESSION).to_dicts()
    analytics.build_session_index(copy)  # now covering every file
    assert _uses_index(copy)
    indexed = _held(copy)
    return {
        "rows": rows,
        "before": before,
        "full": full,
        "merged": merged,
        "indexed": indexed,
        "trace": trace,
        "copy": copy,
    }


def test_the_intruders_spans_land_marked_as_sent_into_the_session(views: dict[str, Any]) -> None:
    intruded = "agent:bot-a/session-of:bot-b"
    seen = sorted((r["span_type"], r["name"], r["source"]) for r in views["rows"])
    assert seen == [
        ("agent", "invoke_agent intruder", intruded),
        ("llm", "chat gpt-test", intruded),
        ("llm", "chat gpt-test", "agent:bot-b"),
        ("other", sc.SESSION_END_NAME, intruded),
        ("tool", "execute_tool git_push", "agent:bot-b"),
    ]


@pytest.mark.parametrize("path", ["full", "merged", "indexed"])
def test_the_holders_status_end_and_tokens_are_unchanged(views: dict[str, Any], path: str) -> None:
    before, after = views["before"], views[path]
    kept = (
        "status",
        "status_basis",
        "ended_at",
        "end_outcome",
        "end_source",
        "end_reason",
        "input_tokens",
        "output_tokens",
        "started_at",
        "last_activity_at",
        "last_action_at",
        "agent_name",
        "action_count",
        "claimed_calls",
    )
    assert {k: after[k] for k in kept} == {k: before[k] for k in kept}
    assert (after["status"], after["status_basis"]) == ("active", "idle_window")
    assert (after["input_tokens"], after["output_tokens"]) == (100, 20)
    assert after["end_outcome"] is None
    # bot-a's rows are the session's record all the same: counted, not believed
    assert (before["span_count"], after["span_count"]) == (2, 5)
    assert (before["foreign_spans"], after["foreign_spans"]) == (0, 3)


def test_every_path_agrees(views: dict[str, Any]) -> None:
    assert views["merged"] == views["full"] == views["indexed"]


def test_the_trace_keeps_the_intruders_spans_marked_claimed(views: dict[str, Any]) -> None:
    trace = views["trace"]
    marks = sorted(
        (e["entry"], e["name"], bool(e["claimed"]))
        for e in trace
        if e["entry"] in ("llm", "agent", "end", "tool")
    )
    assert marks == [
        ("agent", "invoke_agent intruder", True),
        ("end", "invoke_agent intruder", True),
        ("end", sc.SESSION_END_NAME, True),
        ("llm", "chat gpt-test", False),
        ("llm", "chat gpt-test", True),
        ("tool", "execute_tool git_push", False),
    ]
    claimed = [e for e in trace if e["claimed"]]
    assert all(e["source"] == "agent:bot-a/session-of:bot-b" for e in claimed)
    assert all("(claimed)" in str(e["summary"]) for e in claimed)
    # a final output planted by the intruder's end record is not the session's
    assert not any(e["entry"] == "output" for e in trace)


def test_the_dashboards_trace_says_who_sent_them(
    views: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard_support import app_test, goto

    at = goto(app_test(views["copy"], None, monkeypatch), "session", session=SESSION)
    assert not at.exception
    said = [w.value for w in at.warning if "into `bot-b`'s session" in w.value]
    assert said == ["claimed (sent by agent `bot-a` into `bot-b`'s session)"] * 4
    assert any(w.value.startswith("3 spans sent into this session") for w in at.warning)
