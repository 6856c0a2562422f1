"""One bad span never costs another: spool mode, direct mode, the in-process exporter.

A *poison* span is valid OTLP whose values make a landing step raise: an argument holding
a 10 KB JSON text nested 5,000 deep under a credential-like key (the scrubber recursed
into it), and a matched-rules attribute that is a JSON array nested 5,000 deep (the
normalizer's parse recursed). A step may stop raising on one of them once it is fixed;
what must always hold is: every other span lands, a poison span is either landed with no
raw secret or set aside alone (its ids and reason noted, no value kept), the sender is
told (direct mode: OTLP partial success) and ``/metrics`` counts it. The in-process test
uses a value that fails at the Arrow conversion (a lone surrogate) and so always
exercises the per-span fallback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, landed_rows, metric, post_traces, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tooltrail import semconv as sc
from tooltrail.collector import TooltrailSpanExporter

PB = "application/x-protobuf"
SECRET = "ghp_" + "Q7x" * 12  # a GitHub token shape, 40 characters
DEEP_TOKEN = '{"token": ' + "[" * 5000 + json.dumps(SECRET) + "]" * 5000 + "}"
DEEP_MATCHED = "[" * 5000 + "]" * 5000
POISONS: dict[str, dict[str, str]] = {
    "deep-token": {sc.GEN_AI_TOOL_CALL_ARGUMENTS: DEEP_TOKEN},
    "deep-matched-rules": {sc.TT_POLICY_MATCHED: DEEP_MATCHED},
}


def _tool_attrs(agent: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "git_status",
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"repo_path": "/srv/app"}),
        sc.GEN_AI_AGENT_NAME: agent,
        sc.SESSION_ID: f"sess-{agent}",
        **(extra or {}),
    }


def _provider(url: str, agent: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": agent}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    return provider


def _emit(provider: TracerProvider, agent: str, n: int, poisons: list[str] = ()) -> dict[str, str]:
    """``n`` good tool spans, then one span per poison; returns span id -> what it is."""
    tracer = provider.get_tracer("poison-test")
    made: dict[str, str] = {}
    for i in range(n):
        with tracer.start_as_current_span("execute_tool git_status") as span:
            span.set_attributes(_tool_attrs(agent, {sc.TT_SEQUENCE: str(i)}))
            made[format(span.get_span_context().span_id, "016x")] = "good"
    for name in poisons:
        with tracer.start_as_current_span("execute_tool git_status") as span:
            span.set_attributes(_tool_attrs(agent, POISONS[name]))
            made[format(span.get_span_context().span_id, "016x")] = name
    return made


def _quarantine_files(data: Path) -> list[Path]:
    qdir = data / "spool" / "quarantine"
    return sorted(p for p in qdir.iterdir() if p.is_file()) if qdir.is_dir() else []


def _notes(data: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in _quarantine_files(data)
        if path.suffix == ".jsonl"
        for line in path.read_text().splitlines()
    ]


def _check_poison_outcome(data: Path, made: dict[str, str], set_aside_counted: float) -> None:
    """Every good span landed; each poison span landed without its secret or was set
    aside with a note; the counter and the notes agree; nothing raw in the quarantine."""
    rows = {r["span_id"]: r for r in landed_rows(data)}
    good = {s for s, what in made.items() if what == "good"}
    assert good <= set(rows), f"{len(good - set(rows))} good spans lost"
    for row in rows.values():
        assert SECRET not in json.dumps(row, default=str), "a raw secret landed"
    missing = set(made) - set(rows)
    assert set_aside_counted == len(missing)
    noted = {n["span_id"] for n in _notes(data)}
    assert missing <= noted
    for note in _notes(data):
        assert note["reason"] and note["trace_id"]
    for path in _quarantine_files(data):
        assert path.suffix == ".jsonl", f"raw data kept in the quarantine: {path.name}"
        raw = path.read_bytes()
        assert SECRET.encode() not in raw and b"[[[[" not in raw


@pytest.fixture
def spool_collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    # A long flush interval: both agents' requests share one segment (idle seal 0.5 s).
    with CollectorProcess(tmp_path / "data", "--flush-interval", "5") as col:
        yield col


def test_poison_span_never_costs_other_agents_spans_in_spool_mode(
    spool_collector: CollectorProcess,
) -> None:
    col = spool_collector
    alice, bob = _provider(col.url, "alice"), _provider(col.url, "bob")
    made = _emit(alice, "alice", 20)
    assert alice.force_flush()  # acknowledged: now it must land, whatever comes next
    made |= _emit(bob, "bob", 5, list(POISONS))
    assert bob.force_flush()
    alice.shutdown()
    bob.shutdown()
    good = {s for s, what in made.items() if what == "good"}
    wait_until(lambda: good <= {r["span_id"] for r in landed_rows(col.data_dir)}, what="landed")
    wait_until(
        lambda: (
            len(landed_rows(col.data_dir)) + metric(col.url, "spans_set_aside_total") == len(made)
        ),
        what="every span landed or set aside",
    )
    _check_poison_outcome(col.data_dir, made, metric(col.url, "spans_set_aside_total"))
    assert metric(col.url, "segments_quarantined_total") == 0
    assert not list((col.data_dir / "spool").glob("seg-*.wal"))
    assert SECRET not in col.stderr()  # nor in the log


def _request_with(poisons: list[str], good: int) -> tuple[bytes, dict[str, str]]:
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    made: dict[str, str] = {}
    for k, what in enumerate(["good"] * good + poisons, start=1):
        span = scope.spans.add()
        span.trace_id = (0xABC0 + k).to_bytes(16, "big")
        span.span_id = (0xDEF0 + k).to_bytes(8, "big")
        span.name = "execute_tool git_status"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + k
        span.end_time_unix_nano = 1_700_000_000_100_000_000 + k
        extra = POISONS.get(what)
        for key, value in _tool_attrs("carol", extra).items():
            span.attributes.add(key=key, value=AnyValue(string_value=value))
        made[span.span_id.hex()] = what
    return req.SerializeToString(), made


def test_poison_span_in_direct_mode_gets_partial_success_not_500(tmp_path: Path) -> None:
    data = tmp_path / "data"
    body, made = _request_with(list(POISONS), good=3)
    with CollectorProcess(data, "--durability", "direct") as col:
        status, _, answer = post_traces(col.url, body, PB)
        assert status == 200, answer
        resp = ExportTraceServiceResponse.FromString(answer)
        aside = metric(col.url, "spans_set_aside_total")
        assert resp.partial_success.rejected_spans == aside
        if aside:
            assert "set aside" in resp.partial_success.error_message
        _check_poison_outcome(data, made, aside)
        assert metric(col.url, "spans_accepted_total") == len(made) - aside
        assert SECRET not in col.stderr()


def _land_in_process(data: Path, spans: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """The real SDK into the in-process exporter (the same BatchPipeline), one batch:
    ``(what, attributes)`` per span; returns span id -> what."""
    exporter = TooltrailSpanExporter(data, redact=True)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("poison-test")
    ids: dict[str, str] = {}
    for what, attrs in spans:
        with tracer.start_as_current_span("execute_tool git_status") as span:
            span.set_attributes(attrs)
            ids[format(span.get_span_context().span_id, "016x")] = what
    provider.shutdown()
    return ids


def test_in_process_exporter_lands_a_tool_span_that_cannot_land_in_full_reduced(
    tmp_path: Path,
) -> None:
    """A lone surrogate fails the Arrow conversion of its span: a tool call must still
    leave a row (ids, tool, session, agent, decision as sent; arguments replaced by the
    marker; flagged in ``attributes``), and the other spans land whole."""
    bad = _tool_attrs(
        "dave",
        {
            "custom.note": "half a pair \ud800",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"cmd": "rm -rf / \ud800"}),
            sc.TT_DECISION: "DENY",
            sc.TT_POLICY_RULE: "no-rm",
            sc.TT_GATEWAY: True,
            sc.TT_MCP_CLIENT_NAME: "cursor",
            sc.TT_TOOL_DEFINITION_CHANGED: True,
        },
    )
    ids = _land_in_process(
        tmp_path / "data",
        [("good", _tool_attrs("dave")), ("bad", bad), ("good", _tool_attrs("dave"))],
    )
    rows = {r["span_id"]: r for r in landed_rows(tmp_path / "data")}
    assert set(rows) == set(ids)
    for span_id, what in ids.items():
        row = rows[span_id]
        attributes = json.loads(row["attributes"] or "{}")
        if what == "good":
            assert "tooltrail.reduced" not in attributes
            continue
        assert row["span_type"] == "tool" and row["tool_name"] == "git_status"
        assert row["agent_name"] == "dave" and row["session_id"] == "sess-dave"
        assert row["decision"] == "DENY" and row["policy_rule"] == "no-rm"
        # who governed it and the changed-tool flag survive the reduction
        assert (row["governed_by"], row["mcp_client_name"]) == ("gateway", "cursor")
        assert row["tool_definition_changed"] is True
        assert json.loads(row["arguments"]) == "[REDACTED:unparseable]"
        assert attributes["tooltrail.reduced"] == "UnicodeEncodeError while converting to Arrow"
        assert "custom.note" not in attributes and "rm -rf" not in json.dumps(row, default=str)


def test_in_process_exporter_counts_the_spans_it_sets_aside_in_landed_data(
    tmp_path: Path,
) -> None:
    """A span that cannot land even reduced (its tool name is a lone surrogate) and an
    other span that cannot land are set aside: a ``tooltrail.dropped_spans`` row lands
    with the batch and counts them, naming their span ids (the collector notes them in
    its quarantine; the in-process exporter has only the landed data)."""
    ids = _land_in_process(
        tmp_path / "data",
        [
            ("good", _tool_attrs("dave")),
            ("bad-tool", {**_tool_attrs("dave"), sc.GEN_AI_TOOL_NAME: "git \ud800"}),
            ("bad-other", {"custom.note": "half a pair \ud800"}),
        ],
    )
    rows = landed_rows(tmp_path / "data")
    landed = {r["span_id"] for r in rows}
    good = {s for s, what in ids.items() if what == "good"}
    assert good <= landed and not (set(ids) - good) & landed
    counts = [r for r in rows if r["name"] == "tooltrail.dropped_spans"]
    assert len(counts) == 1, rows
    attributes = json.loads(counts[0]["attributes"])
    assert attributes["tooltrail.dropped.tool_spans"] == 1
    assert attributes["tooltrail.dropped.other_spans"] == 1
    assert set(attributes["tooltrail.dropped.set_aside_span_ids"]) == set(ids) - good


def test_deeply_nested_arguments_land_in_full(tmp_path: Path) -> None:
    """Arguments nested 5,000 deep beside the command (the C JSON scanner recurses past
    its limit) must not keep the call out of the record: the row lands, the command in
    its arguments."""
    deep = '{"pad":' + "[" * 5000 + "]" * 5000 + ',"cmd":"rm -rf /"}'
    attrs = _tool_attrs("dave", {sc.GEN_AI_TOOL_CALL_ARGUMENTS: deep})
    ids = _land_in_process(tmp_path / "data", [("deep", attrs), ("good", _tool_attrs("dave"))])
    rows = {r["span_id"]: r for r in landed_rows(tmp_path / "data")}
    assert set(rows) == set(ids)
    (deep_id,) = (s for s, what in ids.items() if what == "deep")
    assert rows[deep_id]["arguments"].endswith('"cmd":"rm -rf /"}')  # too deep for json.loads


def test_a_deeply_nested_tool_call_lands_through_the_collector_with_a_policy(
    tmp_path: Path,
) -> None:
    """The reviewer's case over real HTTP (direct mode, a policy deciding after the fact):
    arguments nested 5,000 deep beside the command once kept the call out of the record.
    The row lands: whole, or (while a later step such as the policy still cannot read
    such nesting) reduced, flagged, with its arguments replaced by the marker."""
    deep = '{"pad":' + "[" * 5000 + "]" * 5000 + ',"repo_path":"/srv/app"}'
    POISONS["deep-args"] = {sc.GEN_AI_TOOL_CALL_ARGUMENTS: deep}
    try:
        body, made = _request_with(["deep-args"], good=1)
    finally:
        del POISONS["deep-args"]
    policy = Path(__file__).resolve().parents[1] / "examples" / "policy-git.yaml"
    data = tmp_path / "data"
    with CollectorProcess(data, "--durability", "direct", "--policy", str(policy)) as col:
        status, _, answer = post_traces(col.url, body, PB)
        assert status == 200, answer
        assert ExportTraceServiceResponse.FromString(answer).partial_success.rejected_spans == 0
    rows = {r["span_id"]: r for r in landed_rows(data)}
    assert set(rows) == set(made)
    (deep_id,) = (s for s, what in made.items() if what == "deep-args")
    row = rows[deep_id]
    assert row["span_type"] == "tool" and row["tool_name"] == "git_status"
    assert row["agent_name"] == "carol" and row["session_id"] == "sess-carol"
    reduced = json.loads(row["attributes"] or "{}").get("tooltrail.reduced")
    if reduced is None:
        assert row["arguments"].endswith('"repo_path":"/srv/app"}')
    else:
        assert row["arguments"] == '"[REDACTED:unparseable]"' and row["decision"] is None
