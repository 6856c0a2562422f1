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
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import (
    CollectorProcess,
    landed_rows,
    metric,
    request,
    two_agent_collector,
    wait_until,
)
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from polars import col as analytics_col

from tooltrail import analytics
from tooltrail import semconv as sc
from tooltrail.access import AccessStore
from tooltrail.collector.landing import RequestPipeline
from tooltrail.collector.owners import SessionOwnersUnavailable

CALL = {
    sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
    sc.GEN_AI_TOOL_NAME: "git_push",
    sc.TT_DECISION: "ALLOW",
    sc.TT_ENFORCED: True,
    sc.TT_POLICY_RULE: "pass",
    sc.TT_SEQUENCE: 1,
}


@pytest.fixture(scope="module", params=["spool", "direct"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    """One collector per durability mode (each test uses sessions of its own)."""
    root = tmp_path_factory.mktemp(f"owners-{request.param}")
    args = ("--durability", request.param, "--flush-interval", "0.2")
    with two_agent_collector(root, *args) as running:
        yield running


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


def _rows(data: Path, sessions: set[str]) -> list[dict[str, Any]]:
    return [
        r for r in landed_rows(data) if r["span_type"] == "tool" and r["session_id"] in sessions
    ]


def _landed(data: Path, count: int, *sessions: str) -> list[dict[str, Any]]:
    """The tool rows of ``sessions``, once ``count`` of them landed."""
    wanted = set(sessions)
    wait_until(lambda: len(_rows(data, wanted)) >= count, what=f"{count} tool rows landed")
    return _rows(data, wanted)


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
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    col, creds = setup
    data = col.data_dir
    foreign = metric(col.url, "spans_foreign_session_total")
    _send(col.url, creds["bot-b"], _in("sess-b"))  # bot-b uses sess-b first: it holds it
    _landed(data, 1, "sess-b")
    assert _owners(data).get("sess-b") == "bot-b"

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
    rows = _landed(data, 5, "sess-a", "sess-b")
    assert len(rows) == 5

    seen = sorted(
        (r["session_id"], r["agent_name"], r["source"], r["verified"], r["tool_name"]) for r in rows
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
            "SELECT agent_name, session_id, enforced FROM actions"
            " WHERE session_id IN ('sess-a', 'sess-b') ORDER BY ALL"
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
    assert (claimed["sess-a"], claimed["sess-b"]) == (0, 2)
    assert metric(col.url, "spans_foreign_session_total") == foreign + 2
    owners = _owners(data)
    assert (owners["sess-a"], owners["sess-b"]) == ("bot-a", "bot-b")

    _dashboard_shows_claimed(data, tmp_path, monkeypatch)

    # Bound by spans alone, the session refuses bot-a's requests and control reads.
    assert _file(col, creds["bot-a"], "sess-b") == 403
    assert _call(col, "GET", "/v1/sessions/sess-b/control", creds["bot-a"]) == 403
    assert _call(col, "GET", "/v1/sessions/sess-b/control", creds["bot-b"]) == 200
    assert _file(col, creds["bot-b"], "sess-b") == 201
    assert _file(col, creds["bot-b"], "sess-a") == 403


def _dashboard_shows_claimed(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session page of the landed files (copied: the collector's directory has access
    control, and sign-in is not what is tested here) says which decisions are claimed."""
    from dashboard_support import app_test, goto, texts

    copy = tmp_path / "copy"
    shutil.copytree(data / "spans", copy / "spans")
    app = app_test(copy, None, monkeypatch)
    at = goto(app, "session", session="sess-b")
    assert not at.exception
    assert any("2 decisions only claimed" in w.value for w in at.warning)
    labels = []
    for index in range(3):
        at.selectbox(key="inspect_action_sess-b").set_value(index).run()
        labels += [m for m in texts(at.markdown) if "claimed (" in m]
    assert sum("sent by agent `bot-a` into `bot-b`'s session" in m for m in labels) == 2


def test_a_session_claimed_over_http_first_refuses_the_other_agents_spans(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    col, creds = setup
    # bot-b reads the control state of sess-c first (as its agent loop does): it holds it.
    assert _call(col, "GET", "/v1/sessions/sess-c/control", creds["bot-b"]) == 200
    _send(col.url, creds["bot-a"], _in("sess-c"))
    _send(col.url, creds["bot-b"], _in("sess-c"))
    rows = _landed(col.data_dir, 2, "sess-c")
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
    rows = _landed(col.data_dir, 2, "sess-new")
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
    session = f"{trace_id:032x}"
    _send(col.url, creds["bot-a"], {}, parent=parent)
    _landed(col.data_dir, 1, session)
    _send(col.url, creds["bot-b"], {}, parent=parent)
    rows = _landed(col.data_dir, 2, session)
    assert sorted((r["source"], r["verified"]) for r in rows) == [
        ("agent:bot-a", True),
        ("agent:bot-b", True),
    ]
    assert session not in _owners(col.data_dir)


def test_a_trace_id_shaped_like_a_held_session_does_not_reach_it(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    """`tt.session` ids are 32 hex digits, like trace ids: a span that names no session
    lands in its trace's, so a trace id chosen to equal a held session is checked too."""
    col, creds = setup
    trace_id = 0x0DDBA11C0FFEE0DDBA11C0FFEE123456
    session = f"{trace_id:032x}"
    _send(col.url, creds["bot-b"], _in(session))
    _landed(col.data_dir, 1, session)
    parent = SpanContext(trace_id, 0x4321, is_remote=True, trace_flags=TraceFlags(1))
    _send(col.url, creds["bot-a"], {}, parent=parent)
    rows = _landed(col.data_dir, 2, session)
    assert sorted((r["source"], r["verified"]) for r in rows) == [
        ("agent:bot-a/session-of:bot-b", False),
        ("agent:bot-b", True),
    ]


# --- landing, in process: the owner lookup's cost and its failure ---------------------------


def _request(sender: str, sessions: list[str]) -> ExportTraceServiceRequest:
    """One OTLP request as the collector spools it: stamped with its sender."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    stamp = rs.resource.attributes.add()
    stamp.key, stamp.value.string_value = sc.TT_COLLECTOR_SENDER, sender
    scope = rs.scope_spans.add()
    for i, session in enumerate(sessions, start=1):
        span = scope.spans.add()
        span.trace_id, span.span_id = i.to_bytes(16, "big"), i.to_bytes(8, "big")
        span.name = "execute_tool git_push"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
        for key, value in {**CALL, sc.TT_SESSION_ID: session}.items():
            kv = span.attributes.add()
            kv.key = key
            if isinstance(value, bool):
                kv.value.bool_value = value
            elif isinstance(value, int):
                kv.value.int_value = value
            else:
                kv.value.string_value = str(value)
    return req


def test_the_owner_lookup_asks_the_store_once_per_batch_then_never(tmp_path: Path) -> None:
    with AccessStore(tmp_path) as store:
        store.claim_session("bot-b", "held-b")
    pipeline = RequestPipeline(None, redact=True, data_dir=tmp_path)
    assert pipeline.owners is not None
    sessions = [f"mine-{i % 9}" if i % 10 else "held-b" for i in range(512)]
    for _ in range(3):
        rows = pipeline.result(_request("agent:bot-a", sessions)).table.to_pylist()
        assert len(rows) == 512
        for row in rows:
            intruding = row["session_id"] == "held-b"
            want = "agent:bot-a/session-of:bot-b" if intruding else "agent:bot-a"
            assert (row["source"], row["verified"]) == (want, not intruding)
    # 512 spans in 10 sessions, three times: one read (and one write binding mine-*).
    assert pipeline.owners.store_reads == 1
    with AccessStore(tmp_path) as store:
        assert store.session_owners([f"mine-{i}" for i in range(9)]) == {
            f"mine-{i}": "bot-a" for i in range(9)
        }


def test_an_unreadable_access_store_lands_nothing_yet(tmp_path: Path) -> None:
    """Fail closed, lose nothing: an OSError keeps the spool segment (or answers 503)."""
    (tmp_path / "access.sqlite").write_bytes(b"not a database, " * 64)
    pipeline = RequestPipeline(None, redact=True, data_dir=tmp_path)
    with pytest.raises(SessionOwnersUnavailable) as caught:
        pipeline.result(_request("agent:bot-a", ["s-1"]))
    assert isinstance(caught.value, OSError)
    # Spans from the shared token (no agent credential) need no owner: they land claimed.
    rows = pipeline.result(_request("otlp", ["s-1"])).table.to_pylist()
    assert [(r["source"], r["verified"]) for r in rows] == [("otlp", False)]


class _FixedIds(IdGenerator):
    """One trace id and one span id for every span: a copy of a span, ids and all."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.trace_id, self.span_id = trace_id, span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


def _send_copy(url: str, token: str, ids: _FixedIds, attributes: dict[str, Any]) -> None:
    exporter = OTLPSpanExporter(
        endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}
    )
    provider = TracerProvider(resource=Resource.create({}), id_generator=ids)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    provider.get_tracer("owners").start_span(
        "execute_tool git_push", attributes={**CALL, **attributes}
    ).end()
    provider.shutdown()


def test_a_claimed_copy_of_a_span_never_replaces_the_verified_one_in_the_views(
    setup: tuple[CollectorProcess, dict[str, str]],
) -> None:
    # bot-a learned the trace and span id of bot-b's call (traceparent carries both) and
    # resends that span, ALLOW and approved, ending later. It lands claimed; in the views,
    # where one copy of a span counts, bot-b's own record must stay the one that counts.
    col, creds = setup
    data = col.data_dir
    ids = _FixedIds(0x5EED_0000_0000_0000_0000_0000_0000_0001, 0x5EED_0000_0000_0001)
    deny = {sc.TT_DECISION: "DENY", sc.TT_ENFORCED: False, sc.TT_POLICY_RULE: "no-push"}
    _send_copy(col.url, creds["bot-b"], ids, _in("sess-copy", **deny))
    _landed(data, 1, "sess-copy")
    forged = {sc.TT_DECISION: "ALLOW", sc.TT_ENFORCED: False, sc.TT_APPROVAL_STATUS: "approved"}
    _send_copy(col.url, creds["bot-a"], ids, _in("sess-copy", **forged))
    rows = _landed(data, 2, "sess-copy")
    assert sorted((r["decision"], r["verified"]) for r in rows) == [
        ("ALLOW", False),
        ("DENY", True),
    ]
    with analytics.connect(data) as con:
        counted = con.sql(
            "SELECT decision, verified, policy_rule FROM actions WHERE session_id = 'sess-copy'"
        ).fetchall()
    assert counted == [("DENY", True, "no-push")]
    head = analytics.sessions(data).filter(analytics_col("session_id") == "sess-copy")
    assert (head["denies"][0], head["allows"][0]) == (1, 0)
