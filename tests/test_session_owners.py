"""A session belongs to the first agent credential that uses it (issue 16/17 provenance).

A real `tooltrail collect` with access control, two agents added through the real CLI,
spans sent by the official OTel SDK OTLP/HTTP exporter with each agent's `tta_`
credential. An agent's spans into a session another agent holds land claimed (`verified`
false, `source` `agent:<sender>/session-of:<holder>`), never enforced in the views and
counted in `sessions.claimed_calls`, while the rest of the same request lands as usual;
the holder's own spans and the sender's spans in its own sessions land verified. A
session bound by spans alone refuses the other agent's approval requests and control
reads. On main the intruder's spans land verified and it may file into the session.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from access_support import add
from collect_support import CollectorProcess, landed_rows, metric, request, wait_until
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tooltrail import analytics
from tooltrail import semconv as sc

CALL = {
    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
    sc.GEN_AI_TOOL_NAME: "git_push",
    sc.TT_DECISION: "ALLOW",
    sc.TT_ENFORCED: True,
    sc.TT_POLICY_RULE: "pass",
    sc.TT_SEQUENCE: 1,
}


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(params=["spool", "direct"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    data = tmp_path / "data"
    data.mkdir()
    admin = add(data, "user", "admin", "admin", None)
    creds = {name: add(data, "agent", name, None, admin) for name in ("bot-a", "bot-b")}
    env = {"TOOLTRAIL_CONFIG_DIR": str(tmp_path / "config")}
    args = ("--durability", request.param, "--flush-interval", "0.2")
    with CollectorProcess(data, *args, env=env) as proc:
        yield proc, creds


def _send(url: str, token: str, *spans: dict[str, Any], parent: SpanContext | None = None) -> None:
    """Each of ``spans`` (attributes) as a tool span, all in one OTLP request."""
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}
    )
    provider = TracerProvider(resource=Resource.create({}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    tracer = provider.get_tracer("owners")
    context = None if parent is None else trace.set_span_in_context(NonRecordingSpan(parent))
    for attributes in spans:
        tracer.start_span("execute_tool git_push", context, attributes={**CALL, **attributes}).end()
    provider.shutdown()  # one export of the whole batch


def _in(session: str, **extra: Any) -> dict[str, Any]:
    return {sc.TT_SESSION_ID: session, **extra}


def _rows(data: Path) -> list[dict[str, Any]]:
    return [r for r in landed_rows(data) if r["span_type"] == "tool"]


def _landed(data: Path, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(_rows(data)) >= count, what=f"{count} tool rows landed")
    return _rows(data)


def _owners(data: Path) -> dict[str, str]:
    con = sqlite3.connect(data / "access.sqlite")
    try:
        return dict(con.execute("SELECT session_id, agent FROM session_owners").fetchall())
    finally:
        con.close()


def _call(col: CollectorProcess, method: str, path: str, token: str, body: Any = None) -> int:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    data = json.dumps(body).encode() if body is not None else None
    return request(col.url, method, path, data, headers)[0]


def _file(col: CollectorProcess, token: str, session: str) -> int:
    body = {
        "tool_name": "git_commit",
        "arguments": {"message": "ship"},
        "session_id": session,
        "approvers": ["role:operator"],
    }
    return _call(col, "POST", "/v1/approvals", token, body)


def test_spans_into_another_agents_session_land_claimed(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    col, creds = setup
    data = col.data_dir
    _send(col.url, creds["bot-b"], _in("sess-b"))  # bot-b uses sess-b first: it holds it
    _landed(data, 1)
    assert _owners(data) == {"sess-b": "bot-b"}

    # One request of bot-a's: one span into its own session, two into bot-b's (one naming
    # no agent, one naming itself). The intruding spans cost the other nothing.
    _send(
        col.url,
        creds["bot-a"],
        _in("sess-a"),
        _in("sess-b", **{sc.GEN_AI_TOOL_NAME: "quiet"}),
        _in("sess-b", **{sc.GEN_AI_AGENT_NAME: "bot-a", sc.GEN_AI_TOOL_NAME: "named"}),
    )
    _send(col.url, creds["bot-b"], _in("sess-b", **{sc.GEN_AI_TOOL_NAME: "own"}))
    rows = _landed(data, 5)
    assert len(rows) == 5

    seen = sorted(
        (r["session_id"], r["agent_name"], r["source"], r["verified"], r["tool_name"])
        for r in rows
    )
    intruded = "agent:bot-a/session-of:bot-b"
    assert seen == [
        ("sess-a", "bot-a", "agent:bot-a", True, "git_push"),
        ("sess-b", "bot-a", intruded, False, "named"),
        ("sess-b", "bot-a", intruded, False, "quiet"),
        ("sess-b", "bot-b", "agent:bot-b", True, "git_push"),
        ("sess-b", "bot-b", "agent:bot-b", True, "own"),
    ]
    # The file keeps what was claimed; the views do not believe it.
    assert {r["decision"] for r in rows} == {"ALLOW"}
    assert all(r["enforced"] for r in rows)
    with analytics.connect(data) as con:
        enforced = con.sql(
            "SELECT agent_name, session_id, enforced FROM actions ORDER BY ALL"
        ).fetchall()
    assert enforced == [
        ("bot-a", "sess-a", True),
        ("bot-a", "sess-b", False),
        ("bot-a", "sess-b", False),
        ("bot-b", "sess-b", True),
        ("bot-b", "sess-b", True),
    ]
    sessions = analytics.sessions(data)
    claimed = dict(zip(sessions["session_id"], sessions["claimed_calls"], strict=True))
    assert claimed == {"sess-a": 0, "sess-b": 2}
    assert metric(col.url, "spans_foreign_session_total") == 2
    assert _owners(data) == {"sess-a": "bot-a", "sess-b": "bot-b"}

    # Bound by spans alone, the session refuses bot-a's requests and control reads.
    assert _file(col, creds["bot-a"], "sess-b") == 403
    assert _call(col, "GET", "/v1/sessions/sess-b/control", creds["bot-a"]) == 403
    assert _call(col, "GET", "/v1/sessions/sess-b/control", creds["bot-b"]) == 200
    assert _file(col, creds["bot-b"], "sess-b") == 201
    assert _file(col, creds["bot-b"], "sess-a") == 403


def test_a_session_claimed_over_http_first_refuses_the_other_agents_spans(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    col, creds = setup
    # bot-b reads the control state of sess-c first (as its agent loop does): it holds it.
    assert _call(col, "GET", "/v1/sessions/sess-c/control", creds["bot-b"]) == 200
    _send(col.url, creds["bot-a"], _in("sess-c"))
    _send(col.url, creds["bot-b"], _in("sess-c"))
    rows = _landed(col.data_dir, 2)
    assert sorted((r["source"], r["verified"]) for r in rows) == [
        ("agent:bot-a/session-of:bot-b", False),
        ("agent:bot-b", True),
    ]


def test_two_first_senders_one_owner(setup: tuple[CollectorProcess, dict[str, str]]) -> None:
    col, creds = setup
    go = threading.Barrier(2)

    def send(name: str) -> None:
        go.wait()
        _send(col.url, creds[name], _in("sess-new"))

    threads = [threading.Thread(target=send, args=(name,)) for name in ("bot-a", "bot-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = _landed(col.data_dir, 2)
    owner = _owners(col.data_dir)["sess-new"]
    other = "bot-b" if owner == "bot-a" else "bot-a"
    assert sorted((r["agent_name"], r["source"], r["verified"]) for r in rows) == sorted(
        [(owner, f"agent:{owner}", True), (other, f"agent:{other}/session-of:{owner}", False)]
    )


def test_a_trace_crossing_agents_binds_no_session(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    """Spans naming no session land in their trace's: one trace legitimately crosses agents
    (context propagated from one to the other), so it is never claimed by either."""
    col, creds = setup
    trace_id = 0x5B8EFFF798038103D269B633813FC60C
    parent = SpanContext(trace_id, 0x1234, is_remote=True, trace_flags=TraceFlags(1))
    _send(col.url, creds["bot-a"], {}, parent=parent)
    _landed(col.data_dir, 1)
    _send(col.url, creds["bot-b"], {}, parent=parent)
    rows = _landed(col.data_dir, 2)
    assert sorted((r["session_id"], r["source"], r["verified"]) for r in rows) == [
        (f"{trace_id:032x}", "agent:bot-a", True),
        (f"{trace_id:032x}", "agent:bot-b", True),
    ]
    assert _owners(col.data_dir) == {}
