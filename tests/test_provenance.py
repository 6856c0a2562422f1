"""Provenance (issue 17): a decision is tooltrail's only if tooltrail made it.

A real `tooltrail collect` with access control, spans sent by the official OTLP/HTTP
exporter: decision attributes from a sender without an agent credential land claimed
(`verified` false, `source` otlp), never enforced in the views; the same spans sent with an
agent's `tta_` credential land verified. In-process exporter rows are tooltrail's own;
`tooltrail ingest` rows are claimed unless the policy decided them there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from access_support import add, invoke, people
from collect_support import CollectorProcess, landed_rows, wait_until
from conftest import MakeRow
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tooltrail import analytics
from tooltrail import semconv as sc
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.collector.verify import verify

SHARED_TOKEN = "shared-span-token-0123456789"

CLAIMS = {
    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
    sc.GEN_AI_TOOL_NAME: "git_push",
    sc.TT_DECISION: "ALLOW",
    sc.TT_ENFORCED: True,
    sc.TT_POLICY_RULE: "pass",
    sc.TT_APPROVAL_DECIDED_BY: "alice",
    sc.TT_SEQUENCE: 1,
}


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[tuple[CollectorProcess, str]]:
    data = tmp_path / "data"
    data.mkdir()
    creds = people(data)
    agent = add(data, "agent", "remote-bot", None, creds["admin"])
    env = {"TOOLTRAIL_CONFIG_DIR": str(tmp_path / "config")}
    with CollectorProcess(data, "--token", SHARED_TOKEN, env=env) as proc:
        yield proc, agent


def _send(
    url: str,
    token: str,
    session: str,
    resource: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}
    )
    provider = TracerProvider(resource=Resource.create(resource or {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("claims").start_span(
        "execute_tool git_push", attributes={**CLAIMS, sc.TT_SESSION_ID: session, **(extra or {})}
    )
    span.end()
    provider.shutdown()


def _by_session(data: Path) -> dict[str, dict[str, object]]:
    return {str(r["session_id"]): r for r in landed_rows(data) if r["span_type"] == "tool"}


def test_claims_without_an_agent_credential_land_claimed_and_never_enforced(
    collector: tuple[CollectorProcess, str],
) -> None:
    proc, agent = collector
    _send(proc.url, SHARED_TOKEN, "claimed")
    # Forging the collector's own stamp changes nothing: the collector overwrites it.
    _send(proc.url, SHARED_TOKEN, "forged", {sc.TT_COLLECTOR_SENDER: "agent:remote-bot"})
    _send(proc.url, agent, "credentialed")
    # An agent's own credential does not vouch for a span naming another agent.
    _send(proc.url, agent, "impersonated", extra={sc.GEN_AI_AGENT_NAME: "bot-b"})
    wait_until(lambda: len(_by_session(proc.data_dir)) == 4, what="four tool rows landed")

    rows = _by_session(proc.data_dir)
    for sid in ("claimed", "forged"):
        r = rows[sid]
        assert (r["source"], r["verified"]) == ("otlp", False), sid
        # The file keeps what was claimed (the record); the views do not believe it.
        assert (r["decision"], r["enforced"], r["approval_decided_by"]) == ("ALLOW", True, "alice")
    good = rows["credentialed"]
    assert (good["source"], good["verified"], good["enforced"]) == ("agent:remote-bot", True, True)
    assert good["agent_name"] == "remote-bot"  # a span naming no agent is its sender's
    other = rows["impersonated"]
    assert (other["source"], other["verified"], other["agent_name"]) == (
        "agent:remote-bot",
        False,
        "bot-b",
    )

    data = proc.data_dir
    with analytics.connect(data) as con:
        enforced = dict(
            con.sql("SELECT session_id, enforced FROM actions ORDER BY session_id").fetchall()
        )
    assert enforced == {
        "claimed": False,
        "credentialed": True,
        "forged": False,
        "impersonated": False,
    }
    sessions = analytics.sessions(data)
    claimed = dict(zip(sessions["session_id"], sessions["claimed_calls"], strict=True))
    assert claimed == {"claimed": 1, "credentialed": 0, "forged": 1, "impersonated": 1}
    assert verify(data).ok  # the collector's landed files are chained too


def test_in_process_exporter_rows_are_tooltrails_own(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

    kept: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            kept.append(span)

    provider = TracerProvider()
    provider.add_span_processor(Keep())
    tracer = provider.get_tracer("t")
    tracer.start_span("execute_tool git_push", attributes={**CLAIMS, sc.TT_SESSION_ID: "s"}).end()
    tracer.start_span("llm call").end()
    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data, buffer_rows=0)
    exporter.export(kept)
    exporter.shutdown()
    rows = sorted(landed_rows(data), key=lambda r: str(r["span_type"]))
    assert [(r["span_type"], r["source"], r["verified"]) for r in rows] == [
        ("other", "exporter", None),
        ("tool", "exporter", True),
    ]


def test_ingested_claims_are_claimed_and_the_policy_decides_verified(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spans = [
        {
            "traceId": "ab" * 16,
            "spanId": f"{i:016x}",
            "name": "execute_tool git_push",
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000000500000000",
            "attributes": [
                {"key": sc.GEN_AI_OPERATION_NAME, "value": {"stringValue": sc.OP_EXECUTE_TOOL}},
                {"key": sc.GEN_AI_TOOL_NAME, "value": {"stringValue": "git_push"}},
                {"key": sc.TT_SESSION_ID, "value": {"stringValue": f"s{i}"}},
                *([{"key": sc.TT_DECISION, "value": {"stringValue": "ALLOW"}}] if i == 1 else []),
            ],
        }
        for i in (1, 2)
    ]
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans}]}]}
    src = tmp_path / "traces.jsonl"
    src.write_text(json.dumps(doc) + "\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: DENY\nrules: []\n")
    code, _, err = invoke(data, "ingest", str(src), "--policy", str(policy))
    assert code == 0, err
    rows = {r["session_id"]: r for r in landed_rows(data)}
    assert (rows["s1"]["source"], rows["s1"]["verified"]) == ("ingest", False)
    assert (rows["s2"]["decision"], rows["s2"]["verified"]) == ("DENY", True)


# --- files landed before the provenance columns -------------------------------------------


def _land_without_provenance(data: Path, rows: list[dict[str, object]]) -> None:
    """A span file as a version before `source`/`verified` wrote it."""
    import pyarrow.parquet as pq

    from tooltrail.collector.writer import rows_to_table, sort_landed

    table = sort_landed(rows_to_table(rows)).drop_columns(["source", "verified"])
    part = data / "spans" / "date=2026-03-01"
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, part / "old-1.parquet")


def _views(data: Path) -> tuple[dict[str, int], dict[str, object]]:
    with analytics.connect(data) as con:
        sessions = con.sql("SELECT session_id, claimed_calls FROM sessions").fetchall()
        actions = con.sql("SELECT session_id, enforced FROM actions").fetchall()
    return dict(sessions), dict(actions)


@pytest.mark.parametrize("index", [False, True])
def test_old_files_read_null_and_every_path_counts_claims_alike(
    tmp_path: Path, make_row: MakeRow, index: bool
) -> None:
    import datetime as dt

    from tooltrail.collector.writer import ParquetSpanWriter

    day = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    data = tmp_path / "data"
    _land_without_provenance(data, [make_row(session_id="old", start_time=day)])
    if index:
        analytics.build_session_index(data)
    claimed = make_row(
        session_id="new", start_time=day, enforced=True, source="otlp", verified=False
    )
    ParquetSpanWriter(data).write([claimed])
    sessions, actions = _views(data)
    assert sessions == {"old": 0, "new": 1}
    assert actions == {"old": True, "new": False}  # old rows (verified null) as before
    with analytics.connect(data) as con:
        (old,) = con.sql("SELECT source, verified FROM spans WHERE session_id = 'old'").fetchall()
    assert old == (None, None)
    if index:  # the index (built on the old file) and its delta agree with a full rebuild
        analytics.build_session_index(data)
        assert _views(data) == (sessions, actions)


def test_the_dashboard_marks_claimed_decisions(
    tmp_path: Path, make_row: MakeRow, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from dashboard_support import app_test, goto, table, texts

    from tooltrail.collector.writer import ParquetSpanWriter

    day = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
    data = tmp_path / "data"
    claimed = dict(start_time=day, enforced=True, source="otlp", verified=False)
    own = dict(start_time=day, enforced=True, source="exporter", verified=True)
    ParquetSpanWriter(data).write(
        [make_row(session_id="claimed", **claimed), make_row(session_id="own", **own)]
    )
    app = app_test(data, None, monkeypatch)
    at = goto(app, "sessions")
    assert not at.exception
    frame = table(at, "sessions_table_").value.set_index("session_id")
    assert (frame.loc["claimed", "claimed_calls"], frame.loc["own", "claimed_calls"]) == (1, 0)
    at = goto(app, "session", session="claimed")
    assert not at.exception
    assert any("1 decision only claimed" in w.value for w in at.warning)
    at.selectbox(key="inspect_action_claimed").set_value(0).run()
    assert any("claimed (unverified sender)" in m for m in texts(at.markdown))
    at = goto(app, "session", session="own")
    assert not any("claimed" in w.value for w in at.warning)
