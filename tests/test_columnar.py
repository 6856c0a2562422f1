"""The batch normalizer lands exactly what the per-span normalizer lands.

``normalize_batch`` is an optimization of ``Normalizer.normalize``: it must agree with it row
for row on any batch. Hypothesis builds batches that mix conventions, synonyms that agree
and disagree, values that do not fit their columns, possible secrets and several attribute
name sets, and every row is compared with the per-span result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tooltrail import semconv as sc
from tooltrail.collector.columnar import (
    columns_of_records,
    columns_to_table,
    normalize_batch,
    row_at,
)
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.collector.normalize import Normalizer, SpanRecord
from tooltrail.collector.writer import rows_to_table
from tooltrail.redact import Redactor
from tooltrail.schema import BLAST_RADII, DECISIONS

GH_TOKEN = "gh" + "p_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"

# Every key some mapping reads, plus keys that only land in `attributes`.
MAPPED_KEYS = [
    sc.TT_SESSION_ID,
    sc.SESSION_ID,
    sc.GEN_AI_CONVERSATION_ID,
    sc.MCP_SESSION_ID,
    sc.TRACELOOP_SESSION_ID,
    sc.GEN_AI_OPERATION_NAME,
    sc.GEN_AI_TOOL_NAME,
    sc.OI_TOOL_NAME,
    sc.GEN_AI_TOOL_CALL_ARGUMENTS,
    sc.GEN_AI_TOOL_CALL_RESULT,
    sc.MCP_METHOD_NAME,
    sc.MCP_SERVER_NAME,
    sc.GEN_AI_AGENT_NAME,
    sc.TT_SEQUENCE,
    sc.TT_DECISION,
    sc.TT_POLICY_RULE,
    sc.TT_POLICY_MATCHED,
    sc.TT_ENFORCED,
    sc.TT_BLAST_RADIUS,
    sc.TT_TARGET_REPO,
    sc.TT_TARGET_BRANCH,
    sc.TT_ACTION_SUMMARY,
    sc.TT_APPROVAL_WAIT_MS,
    sc.TT_ARGUMENTS_REWRITTEN,
    sc.TT_REDACTIONS,
    sc.GEN_AI_USAGE_INPUT_TOKENS,
    sc.GEN_AI_USAGE_PROMPT_TOKENS,
    sc.GEN_AI_REQUEST_MODEL,
    sc.GEN_AI_RESPONSE_MODEL,
    sc.ERROR_TYPE,
    sc.TT_GATEWAY,
    sc.TT_MCP_CLIENT_NAME,
    sc.TT_MCP_CLIENT_VERSION,
    sc.TT_TOOL_DEFINITION_CHANGED,
    sc.TT_TOOL_DEFINITION_HASH,
    sc.OPENINFERENCE_SPAN_KIND,
    sc.TRACELOOP_SPAN_KIND,
    sc.TRACELOOP_ENTITY_INPUT,
    sc.OI_INPUT_VALUE,
    "jsonrpc.request.id",
    "custom.note",
    "custom.password",
]

texts = st.sampled_from(
    [
        *DECISIONS,
        *BLAST_RADII,
        "",
        "s1",
        "s2",
        "git_commit",
        "execute_tool",
        "tools/call",
        "TOOL",
        "tool",
        "/srv/repos/payments",
        "fix: the right thing",  # "gh" inside an ordinary word: probed, then cleared
        f"token={GH_TOKEN}",
        "https://user:hunter2@example.com/repo.git",
        '{"repo_path": "/srv/a", "message": "m"}',
        '{"args": [], "kwargs": {"path": "/x"}}',
        "[1, 2]",
        "not json",
        "allow",
        "high",
        "3",
        "12.5",
        "hunter2",
    ]
)
values = st.one_of(
    texts,
    st.integers(min_value=-3, max_value=5),
    st.sampled_from([2**63 - 1, 2**63, -(2**70)]),  # int64's edge and beyond
    st.booleans(),
    st.sampled_from([1.5, 2.0, math.nan, math.inf]),
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.integers(0, 3), max_size=2).map(tuple),
    # nested values (OTLP arrays of kvlists / arrays), secrets inside included
    st.lists(
        st.dictionaries(st.sampled_from(["password", "note"]), texts, max_size=2), max_size=2
    ).map(tuple),
    st.lists(st.lists(texts, max_size=2).map(tuple), max_size=2).map(tuple),
)
name_sets = st.lists(
    st.lists(st.sampled_from(MAPPED_KEYS), min_size=0, max_size=12, unique=True),
    min_size=1,
    max_size=3,
)


@st.composite
def batches(draw: st.DrawFn) -> list[SpanRecord]:
    keysets = draw(name_sets)
    resources = [{"service.name": "svc"}, {"service.name": "other", "api_key": "k-123"}]
    records = []
    for i in range(draw(st.integers(min_value=1, max_value=24))):
        keys = keysets[draw(st.integers(0, len(keysets) - 1))]
        attrs = {k: draw(values) for k in keys}
        records.append(
            SpanRecord(
                trace_id=f"{i + 1:032x}",
                span_id=f"{i + 1:016x}",
                parent_span_id=draw(st.sampled_from([None, "", f"{i + 7:016x}"])),
                name=draw(st.sampled_from(["tools/call git_commit", "execute_tool x", "chat"])),
                kind="CLIENT",
                start_ns=1_700_000_000_000_000_000 + i,
                end_ns=draw(st.sampled_from([None, 1_700_000_000_000_500_000 + i])),
                status_code=draw(st.sampled_from(["UNSET", "ERROR"])),
                status_message=draw(st.sampled_from([None, "", "boom", f"auth {GH_TOKEN}"])),
                attributes=attrs,
                resource=resources[draw(st.integers(0, 1))],
                events=draw(
                    st.sampled_from([[], [(sc.EXCEPTION_EVENT, {sc.EXCEPTION_TYPE: "ValueError"})]])
                ),
            )
        )
    return records


def _same(a: Any, b: Any) -> bool:
    # NaN never equals itself; nowhere else may a row differ.
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


@pytest.mark.parametrize("redact", [True, False])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=batches())
def test_batch_equals_per_span(records: list[SpanRecord], redact: bool) -> None:
    expected = [Normalizer(Redactor(enabled=redact)).normalize(r) for r in records]
    columns = normalize_batch(Normalizer(Redactor(enabled=redact)), columns_of_records(records))
    got = [row_at(columns, i) for i in range(len(records))]
    for want, row in zip(expected, got, strict=True):
        assert want.keys() == row.keys()
        diff = {c: (want[c], row[c]) for c in want if not _same(want[c], row[c])}
        assert not diff
    # And the Arrow table is the same as the one built from the rows.
    assert columns_to_table(columns, len(records)).equals(rows_to_table(expected))


def test_a_secret_in_one_span_is_scrubbed_without_touching_the_others() -> None:
    records = [
        SpanRecord(
            trace_id=f"{i + 1:032x}",
            span_id=f"{i + 1:016x}",
            parent_span_id=None,
            name="tools/call git_push",
            attributes={
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.TT_SESSION_ID: "s",
                sc.GEN_AI_TOOL_CALL_ARGUMENTS: (
                    f'{{"remote": "https://x:{GH_TOKEN}@github.com/o/r"}}'
                    if i == 37
                    else f'{{"remote": "origin", "n": {i}}}'
                ),
            },
        )
        for i in range(64)
    ]
    columns = normalize_batch(Normalizer(Redactor()), columns_of_records(records))
    arguments = columns["arguments"]
    redactions = columns["redactions"]
    assert arguments is not None and redactions is not None
    assert GH_TOKEN not in arguments[37] and redactions[37] == 1
    assert [a for i, a in enumerate(arguments) if i != 37] == [
        f'{{"remote": "origin", "n": {i}}}' for i in range(64) if i != 37
    ]
    assert sum(redactions) == 1


def test_exporter_lands_the_per_span_rows(tmp_path: Path) -> None:
    """End to end: what the exporter lands equals the per-span normalizer's rows."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(40):
        attrs: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_status",
            sc.TT_SESSION_ID: f"s{i % 3}",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: f'{{"repo_path": "/r/{i}"}}',
        }
        if i % 5 == 0:
            attrs[sc.TT_DECISION] = "maybe"  # does not fit: per-span path for these
        with tracer.start_as_current_span("tools/call git_status", attributes=attrs):
            pass
    spans = memory.get_finished_spans()
    exporter = TooltrailSpanExporter(data_dir=tmp_path, policy=None, buffer_rows=0)
    try:
        exporter.export(spans)
    finally:
        exporter.shutdown()
    landed = pq.read_table(next((tmp_path / "spans").glob("date=*/*.parquet")))
    normalizer = Normalizer(Redactor())
    want = rows_to_table([normalizer.normalize_readable(s) for s in spans])
    key = [("span_id", "ascending")]
    # Provenance is the landing path's to stamp (the per-span normalizer knows no sender).
    assert set(landed.column("source").to_pylist()) == {"exporter"}
    stamped = ("source", "verified")
    landed, want = landed.drop_columns(list(stamped)), want.drop_columns(list(stamped))
    assert landed.sort_by(key).equals(want.sort_by(key))


@pytest.mark.parametrize(
    "nested",
    [
        ({"password": "hunter2"},),  # an OTLP array of kvlists
        ((f"token={GH_TOKEN}",),),  # an array inside an array
    ],
)
def test_secrets_inside_nested_arrays_are_scrubbed(nested: Any) -> None:
    records = [
        SpanRecord(
            trace_id=f"{i + 1:032x}",
            span_id=f"{i + 1:016x}",
            parent_span_id=None,
            name="http request",
            attributes={"http.request.headers": nested if i == 1 else ("a", "b")},
        )
        for i in range(3)
    ]
    columns = normalize_batch(Normalizer(Redactor()), columns_of_records(records))
    attributes, redactions = columns["attributes"], columns["redactions"]
    assert attributes is not None and redactions is not None
    assert "hunter2" not in attributes[1] and GH_TOKEN not in attributes[1]
    assert redactions == [0, 1, 0]


def test_every_producer_text_column_is_scrubbed() -> None:
    """A token in the tool name, session, service name or exception type never lands."""
    secret = f"token={GH_TOKEN}"
    record = SpanRecord(
        trace_id="1" * 32,
        span_id="1" * 16,
        parent_span_id=None,
        name="execute_tool x",
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: secret,
            sc.TT_SESSION_ID: secret,
            sc.TT_TRIGGER: secret,
            sc.MCP_SERVER_NAME: secret,
            sc.GEN_AI_REQUEST_MODEL: secret,
            sc.TT_MCP_CLIENT_NAME: secret,
            sc.TT_MCP_CLIENT_VERSION: secret,
        },
        resource={sc.SERVICE_NAME: secret},
        events=[(sc.EXCEPTION_EVENT, {sc.EXCEPTION_TYPE: secret})],
    )
    rows = [
        Normalizer(Redactor()).normalize(record),
        row_at(normalize_batch(Normalizer(Redactor()), columns_of_records([record] * 2)), 1),
    ]
    for row in rows:
        leaked = {c: v for c, v in row.items() if isinstance(v, str) and GH_TOKEN in v}
        assert not leaked
        assert row["redactions"] >= 9
