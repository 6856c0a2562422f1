"""The normalizer: every convention family lands as the same row (SPEC §2, §3).

Spans are made by the real OpenTelemetry SDK. Every row is produced twice, through the
exporter's fast path (``normalize_readable``) and through a ``SpanRecord``, and the two
must be identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from tooltrail import semconv as sc
from tooltrail.collector.columnar import columns_of_spans, normalize_batch, row_at
from tooltrail.collector.normalize import (
    Normalizer,
    SpanRecord,
    derive_summary,
    from_readable_span,
)
from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.redact import Redactor
from tooltrail.schema import COLUMNS, Row

DECISION_COLUMNS = (
    "decision",
    "policy_rule",
    "policy_matched",
    "policy_version",
    "enforced",
    "blast_radius",
    "target_repo",
    "target_branch",
    "target_path",
    "arguments_rewritten",
    "approval_id",
    "approval_status",
    "approval_decided_by",
    "approval_wait_ms",
)
GH_TOKEN = "gh" + "p_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "release-bot", "deployment.environment": "ci"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class Spans:
    """Makes one finished SDK span at a time."""

    def __init__(self, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
        self.tracer = provider.get_tracer("test")
        self.exporter = exporter

    def make(
        self,
        name: str,
        attributes: Mapping[str, Any],
        kind: SpanKind = SpanKind.INTERNAL,
        status: Status | None = None,
        error: Exception | None = None,
    ) -> ReadableSpan:
        self.exporter.clear()
        with self.tracer.start_as_current_span(
            name, kind=kind, attributes=dict(attributes), record_exception=False
        ) as span:
            if error is not None:
                span.record_exception(error)
            if status is not None:
                span.set_status(status)
        (finished,) = self.exporter.get_finished_spans()
        return finished


@pytest.fixture
def spans(memory: tuple[TracerProvider, InMemorySpanExporter]) -> Spans:
    return Spans(*memory)


def both(span: ReadableSpan, redactor: Redactor | None = None) -> Row:
    """The row of ``span``; every path must agree exactly: the per-span fast path, the
    SpanRecord path, and the batch path (alone, and in a batch of copies, where it takes
    the columnar route unless the span needs per-span handling)."""

    def fresh() -> Normalizer:
        return Normalizer(redactor if redactor is not None else Redactor())

    fast = fresh().normalize_readable(span)
    slow = fresh().normalize(from_readable_span(span))
    assert fast == slow
    assert tuple(fast) == COLUMNS
    for batch in ([span], [span] * 3):
        columns = normalize_batch(fresh(), columns_of_spans(batch))
        assert [row_at(columns, i) for i in range(len(batch))] == [fast] * len(batch)
    return fast


def attrs_json(row: Row) -> dict[str, Any]:
    parsed = json.loads(row["attributes"])
    assert isinstance(parsed, dict)
    return parsed


# --- convention families ---------------------------------------------------------------


def test_tooltrail_native_tool_span(spans: Spans) -> None:
    arguments = {"repo_path": "/srv/payments", "branch_name": "main", "message": "fix: retry"}
    span = spans.make(
        "tools/call git_commit",
        {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_commit",
            sc.GEN_AI_TOOL_CALL_ID: "call-7",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(arguments),
            sc.GEN_AI_TOOL_CALL_RESULT: "[main 1a2b3c4] fix: retry",
            sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
            sc.MCP_SERVER_NAME: "mcp-git",
            sc.MCP_SESSION_ID: "mcp-transport-9",
            sc.JSONRPC_REQUEST_ID: "7",
            sc.TT_SESSION_ID: "sess-1",
            sc.SESSION_ID: "sess-1",
            sc.GEN_AI_CONVERSATION_ID: "sess-1",
            sc.TT_PARENT_SESSION_ID: "sess-0",
            sc.GEN_AI_AGENT_NAME: "release-bot",
            sc.GEN_AI_AGENT_ID: "agent-42",
            sc.TT_SEQUENCE: 3,
            sc.TT_TRIGGER: "schedule",
            sc.TT_DECISION: "REQUIRE_APPROVAL",
            sc.TT_POLICY_RULE: "commit-to-default-branch",
            sc.TT_POLICY_MATCHED: ("commit-to-default-branch", "audit-all"),
            sc.TT_POLICY_VERSION: "sha256:abc",
            sc.TT_POLICY_REASON: "commits to main need a human",
            sc.TT_ENFORCED: True,
            sc.TT_BLAST_RADIUS: "High",
            sc.TT_TARGET_REPO: "/srv/payments",
            sc.TT_TARGET_BRANCH: "main",
            sc.TT_ACTION_SUMMARY: "git_commit to main",
            sc.TT_APPROVAL_ID: "appr-1",
            sc.TT_APPROVAL_STATUS: "approved",
            sc.TT_APPROVAL_DECIDED_BY: "alice",
            sc.TT_APPROVAL_WAIT_MS: 1500,
        },
        kind=SpanKind.CLIENT,
    )
    row = both(span)
    ctx = span.context
    assert ctx is not None
    expected = {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": None,
        "name": "tools/call git_commit",
        "kind": "CLIENT",
        "span_type": "tool",
        "start_time": span.start_time,
        "end_time": span.end_time,
        "status_code": "UNSET",
        "status_message": None,
        "error_type": None,
        "session_id": "sess-1",
        "parent_session_id": "sess-0",
        "sequence": 3,
        "agent_name": "release-bot",
        "agent_id": "agent-42",
        "service_name": "release-bot",
        "trigger": "schedule",
        "tool_name": "git_commit",
        "mcp_server": "mcp-git",
        "arguments": json.dumps(arguments),
        "arguments_rewritten": None,
        "result_preview": "[main 1a2b3c4] fix: retry",
        "action_summary": "git_commit to main",
        "decision": "REQUIRE_APPROVAL",
        "policy_rule": "commit-to-default-branch",
        "policy_matched": ["commit-to-default-branch", "audit-all"],
        "policy_version": "sha256:abc",
        "enforced": True,
        "blast_radius": "High",
        "target_repo": "/srv/payments",
        "target_branch": "main",
        "target_path": None,
        "approval_id": "appr-1",
        "approval_status": "approved",
        "approval_decided_by": "alice",
        "approval_wait_ms": 1500.0,
        "input_tokens": None,
        "output_tokens": None,
        "model": None,
        "redactions": 0,
    }
    assert {k: row[k] for k in expected} == expected
    assert row["duration_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6)  # type: ignore[operator]
    # Only what no column holds stays in `attributes`, with sorted keys. The session
    # synonyms equal to the winner are gone; the MCP transport session differs and stays.
    assert list(attrs_json(row)) == sorted(
        [
            sc.GEN_AI_OPERATION_NAME,
            sc.GEN_AI_TOOL_CALL_ID,
            sc.JSONRPC_REQUEST_ID,
            sc.MCP_METHOD_NAME,
            sc.MCP_SESSION_ID,
            sc.TT_POLICY_REASON,
        ]
    )
    resource = json.loads(row["resource"])
    assert resource["service.name"] == "release-bot"
    assert resource["deployment.environment"] == "ci"


def test_plain_genai_tool_span(spans: Spans) -> None:
    span = spans.make(
        "execute_tool git_checkout",
        {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_checkout",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path": "/r", "branch_name": "main"}',
            sc.GEN_AI_CONVERSATION_ID: "conv-5",
            sc.GEN_AI_AGENT_NAME: "coder",
        },
    )
    row = both(span)
    assert row["span_type"] == "tool"
    assert row["tool_name"] == "git_checkout"
    assert row["session_id"] == "conv-5"
    assert row["agent_name"] == "coder"
    assert row["arguments"] == '{"repo_path": "/r", "branch_name": "main"}'
    assert row["action_summary"] == "git_checkout repo=/r branch=main"
    assert all(row[c] is None for c in DECISION_COLUMNS)


def test_mcp_semconv_client_span(spans: Spans) -> None:
    span = spans.make(
        "tools/call git_status",
        {
            sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
            sc.MCP_SESSION_ID: "4f1c9b",
            sc.JSONRPC_REQUEST_ID: "12",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path": "/srv/app"}',
        },
        kind=SpanKind.CLIENT,
    )
    row = both(span)
    assert row["span_type"] == "tool"
    assert row["kind"] == "CLIENT"
    assert row["tool_name"] == "git_status"  # from the span name
    assert row["session_id"] == "4f1c9b"
    assert row["action_summary"] == "git_status repo=/srv/app"
    assert attrs_json(row) == {sc.JSONRPC_REQUEST_ID: "12", sc.MCP_METHOD_NAME: "tools/call"}


def test_mcp_non_tool_method_is_other(spans: Spans) -> None:
    row = both(spans.make("tools/list", {sc.MCP_METHOD_NAME: "tools/list"}))
    assert row["span_type"] == "other"
    assert row["tool_name"] is None
    assert row["action_summary"] is None


def test_openinference_tool_span(spans: Spans) -> None:
    span = spans.make(
        "git_diff",
        {
            sc.OPENINFERENCE_SPAN_KIND: "TOOL",
            sc.OI_TOOL_NAME: "git_diff",
            sc.OI_INPUT_VALUE: '{"repo_path": "/srv/app", "target": "HEAD~1"}',
            sc.OI_OUTPUT_VALUE: "diff --git a/x b/x",
            sc.OI_TOOL_PARAMETERS: '{"type": "object"}',
            sc.SESSION_ID: "oi-session",
        },
    )
    row = both(span)
    assert row["span_type"] == "tool"
    assert row["tool_name"] == "git_diff"
    assert row["arguments"] == '{"repo_path": "/srv/app", "target": "HEAD~1"}'
    assert row["result_preview"] == "diff --git a/x b/x"
    assert row["session_id"] == "oi-session"
    assert row["action_summary"] == "git_diff repo=/srv/app target=HEAD~1"
    assert attrs_json(row) == {
        sc.OPENINFERENCE_SPAN_KIND: "TOOL",
        sc.OI_TOOL_PARAMETERS: '{"type": "object"}',
    }


def test_openinference_llm_span(spans: Spans) -> None:
    span = spans.make(
        "ChatCompletion",
        {
            sc.OPENINFERENCE_SPAN_KIND: "LLM",
            sc.OI_LLM_MODEL_NAME: "gpt-4o-mini",
            sc.OI_LLM_TOKEN_PROMPT: 120,
            sc.OI_LLM_TOKEN_COMPLETION: 33,
            sc.OI_INPUT_VALUE: "Summarize the diff",
            sc.SESSION_ID: "oi-session",
        },
    )
    row = both(span)
    assert row["span_type"] == "llm"
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o-mini", 120, 33)
    # On LLM spans input.value is a prompt, not tool arguments: it stays in attributes.
    assert row["arguments"] is None
    assert row["tool_name"] is None
    assert attrs_json(row)[sc.OI_INPUT_VALUE] == "Summarize the diff"


def test_openllmetry_tool_span(spans: Spans) -> None:
    span = spans.make(
        "git_log.tool",
        {
            sc.TRACELOOP_SPAN_KIND: "tool",
            sc.TRACELOOP_ENTITY_NAME: "git_log",
            sc.TRACELOOP_ENTITY_INPUT: json.dumps(
                {"args": [], "kwargs": {"repo_path": "/srv/app", "max_count": 5}}
            ),
            sc.TRACELOOP_ENTITY_OUTPUT: '"commit 1a2b"',
            sc.TRACELOOP_SESSION_ID: "tl-session",
            sc.TRACELOOP_WORKFLOW_NAME: "nightly",
        },
    )
    row = both(span)
    assert row["span_type"] == "tool"
    assert row["tool_name"] == "git_log"
    # OpenLLMetry's {"args": [], "kwargs": {...}} wrapper is unwrapped to the arguments.
    assert json.loads(row["arguments"]) == {"repo_path": "/srv/app", "max_count": 5}
    assert row["result_preview"] == '"commit 1a2b"'
    assert row["session_id"] == "tl-session"
    assert attrs_json(row) == {
        sc.TRACELOOP_SPAN_KIND: "tool",
        sc.TRACELOOP_WORKFLOW_NAME: "nightly",
    }


def test_openllmetry_tool_named_only_by_span_name(spans: Spans) -> None:
    row = both(spans.make("git_show.tool", {sc.TRACELOOP_SPAN_KIND: "tool"}))
    assert (row["span_type"], row["tool_name"]) == ("tool", "git_show")


def test_openllmetry_llm_span(spans: Spans) -> None:
    span = spans.make(
        "openai.chat",
        {
            sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
            sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06",
            sc.GEN_AI_USAGE_PROMPT_TOKENS: 200,
            sc.GEN_AI_USAGE_COMPLETION_TOKENS: 50,
            sc.TRACELOOP_SESSION_ID: "tl-session",
        },
        kind=SpanKind.CLIENT,
    )
    row = both(span)
    assert row["span_type"] == "llm"  # no kind marker: model + token usage
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-4o", 200, 50)
    # The differing response model is not lost.
    assert attrs_json(row) == {sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06"}


def test_genai_llm_span(spans: Spans) -> None:
    row = both(
        spans.make(
            "chat claude",
            {
                sc.GEN_AI_OPERATION_NAME: "chat",
                sc.GEN_AI_REQUEST_MODEL: "claude-sonnet",
                sc.GEN_AI_USAGE_INPUT_TOKENS: 1000,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
                sc.SESSION_ID: "s",
            },
        )
    )
    assert (row["span_type"], row["model"], row["input_tokens"], row["output_tokens"]) == (
        "llm",
        "claude-sonnet",
        1000,
        10,
    )


@pytest.mark.parametrize(
    "attributes",
    [
        {sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.GEN_AI_AGENT_NAME: "planner"},
        {sc.GEN_AI_OPERATION_NAME: sc.OP_CREATE_AGENT},
        {sc.OPENINFERENCE_SPAN_KIND: "AGENT"},
        {sc.TRACELOOP_SPAN_KIND: "workflow"},
        {sc.TRACELOOP_SPAN_KIND: "agent"},
        # An agent span with aggregate usage is still an agent, not an LLM call.
        {
            sc.GEN_AI_OPERATION_NAME: sc.OP_INVOKE_AGENT,
            sc.GEN_AI_REQUEST_MODEL: "m",
            sc.GEN_AI_USAGE_INPUT_TOKENS: 5,
        },
    ],
)
def test_agent_spans(spans: Spans, attributes: dict[str, Any]) -> None:
    row = both(spans.make("agent run", attributes))
    assert row["span_type"] == "agent"
    assert row["tool_name"] is None


def test_other_span_falls_back_to_trace_id_session(spans: Spans) -> None:
    span = spans.make("GET /health", {"http.request.method": "GET"}, kind=SpanKind.SERVER)
    row = both(span)
    assert row["span_type"] == "other"
    assert row["session_id"] == row["trace_id"]
    assert row["kind"] == "SERVER"
    assert attrs_json(row) == {"http.request.method": "GET"}


# --- session precedence ----------------------------------------------------------------

SESSION_KEYS = [
    sc.TT_SESSION_ID,
    sc.SESSION_ID,
    sc.GEN_AI_CONVERSATION_ID,
    sc.MCP_SESSION_ID,
    sc.TRACELOOP_SESSION_ID,
]


@pytest.mark.parametrize("level", range(len(SESSION_KEYS)))
def test_session_key_precedence(spans: Spans, level: int) -> None:
    # Keys from `level` down are set, each with its own value: `level` must win, and
    # the losers (different values) stay visible in `attributes`.
    present = {key: f"value-of-{key}" for key in SESSION_KEYS[level:]}
    row = both(spans.make("work", present))
    assert row["session_id"] == f"value-of-{SESSION_KEYS[level]}"
    assert set(attrs_json(row)) == set(SESSION_KEYS[level + 1 :])


def test_session_falls_back_to_trace_id(spans: Spans) -> None:
    row = both(spans.make("work", {sc.SESSION_ID: ""}))
    assert row["session_id"] == row["trace_id"]


# --- decisions: from attributes only ---------------------------------------------------


def test_decision_columns_null_when_absent(spans: Spans) -> None:
    row = both(
        spans.make(
            "execute_tool git_reset",
            {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "git_reset"},
        )
    )
    assert {c: row[c] for c in DECISION_COLUMNS} == dict.fromkeys(DECISION_COLUMNS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (("a", "b"), ["a", "b"]),
        ('["a", "b"]', ["a", "b"]),
        ("a, b", ["a", "b"]),
        ("only-one", ["only-one"]),
    ],
)
def test_policy_matched_lands_as_list(spans: Spans, raw: Any, expected: list[str]) -> None:
    row = both(spans.make("x", {sc.TT_POLICY_MATCHED: raw}))
    assert row["policy_matched"] == expected


def test_values_that_do_not_fit_stay_in_attributes(spans: Spans) -> None:
    row = both(
        spans.make(
            "x",
            {
                sc.TT_DECISION: "maybe",
                sc.TT_BLAST_RADIUS: "enormous",
                sc.TT_SEQUENCE: "not-a-number",
                sc.TT_ENFORCED: "perhaps",
            },
        )
    )
    assert (row["decision"], row["blast_radius"], row["sequence"], row["enforced"]) == (
        None,
        None,
        None,
        None,
    )
    assert attrs_json(row) == {
        sc.TT_DECISION: "maybe",
        sc.TT_BLAST_RADIUS: "enormous",
        sc.TT_SEQUENCE: "not-a-number",
        sc.TT_ENFORCED: "perhaps",
    }


def test_vocabulary_is_normalized_not_invented(spans: Spans) -> None:
    row = both(
        spans.make(
            "x",
            {
                sc.TT_DECISION: "deny",
                sc.TT_BLAST_RADIUS: "critical",
                sc.TT_SEQUENCE: "4",
                sc.TT_ENFORCED: "false",
            },
        )
    )
    assert (row["decision"], row["blast_radius"], row["sequence"], row["enforced"]) == (
        "DENY",
        "Critical",
        4,
        False,
    )


# --- errors ----------------------------------------------------------------------------


def test_error_type_from_exception_event(spans: Spans) -> None:
    span = spans.make(
        "execute_tool git_push",
        {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL},
        status=Status(StatusCode.ERROR, "remote rejected"),
        error=PermissionError("denied"),
    )
    row = both(span)
    assert row["status_code"] == "ERROR"
    assert row["status_message"] == "remote rejected"
    assert row["error_type"] == "PermissionError"


def test_error_type_attribute_wins_over_exception_event(spans: Spans) -> None:
    span = spans.make(
        "x",
        {sc.ERROR_TYPE: sc.ERROR_TYPE_TOOL_ERROR},
        status=Status(StatusCode.ERROR),
        error=ValueError("bad"),
    )
    assert both(span)["error_type"] == "tool_error"


# --- payloads --------------------------------------------------------------------------


def test_arguments_that_are_not_json_become_a_json_string(spans: Spans) -> None:
    row = both(
        spans.make(
            "x",
            {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.OI_INPUT_VALUE: "plain words"},
        )
    )
    assert json.loads(row["arguments"]) == "plain words"


def test_mapping_arguments_are_serialized() -> None:
    rec = SpanRecord(
        trace_id="1" * 32,
        span_id="2" * 16,
        parent_span_id="3" * 16,
        name="execute_tool git_add",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_002_000_000,
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: {"files": ["a.py", "b.py"], "repo_path": "/r"},
        },
    )
    row = Normalizer(Redactor()).normalize(rec)
    assert json.loads(row["arguments"]) == {"files": ["a.py", "b.py"], "repo_path": "/r"}
    assert row["parent_span_id"] == "3" * 16
    assert row["duration_ms"] == 2.0
    assert row["tool_name"] == "git_add"
    assert row["action_summary"] == 'git_add repo=/r files=["a.py","b.py"]'


def test_result_preview_is_truncated(spans: Spans) -> None:
    row = both(
        spans.make(
            "x",
            {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_CALL_RESULT: "y" * 5000},
        )
    )
    assert len(row["result_preview"]) == 1000
    assert row["result_preview"].endswith("…")


def test_derived_summary_shape() -> None:
    assert derive_summary("git_commit", "/x", "main") == "git_commit repo=/x branch=main"
    assert (
        derive_summary("git_commit", args={"repo_path": "/x", "message": "two words"})
        == 'git_commit repo=/x message="two words"'
    )
    assert derive_summary("deploy", args={"env": "prod", "n": 3}) == "deploy env=prod n=3"
    long = derive_summary("t", args={"query": "q" * 500})
    assert len(long) < 80


# --- redaction -------------------------------------------------------------------------


def test_secrets_are_scrubbed_everywhere_and_counted(spans: Spans) -> None:
    span = spans.make(
        "execute_tool git_push",
        {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_push",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(
                {"remote": f"https://x:{GH_TOKEN}@github.com/o/r", "password": "hunter2"}
            ),
            sc.GEN_AI_TOOL_CALL_RESULT: "Authorization: Bearer abcdef0123456789xyz",
            sc.TT_ARGUMENTS_REWRITTEN: json.dumps({"token": "rewritten-secret"}),
            "http.request.header.cookie": ("session=abc123",),
            "note": f"used {GH_TOKEN}",
        },
        status=Status(StatusCode.ERROR, f"push failed for {GH_TOKEN}"),
    )
    row = both(span)
    landed = json.dumps(row, default=str)
    for secret in (GH_TOKEN, "hunter2", "abcdef0123456789xyz", "rewritten-secret", "abc123"):
        assert secret not in landed
    # args: url_password + password key; result: key; rewritten: key;
    # attributes: cookie key + github token; status: github token
    assert row["redactions"] == 7
    args = json.loads(row["arguments"])
    assert args["password"] == "[REDACTED:key]"
    assert "[REDACTED:" in args["remote"]
    assert json.loads(row["arguments_rewritten"]) == {"token": "[REDACTED:key]"}
    assert attrs_json(row)["http.request.header.cookie"] == "[REDACTED:key]"
    assert row["action_summary"] is not None and GH_TOKEN not in row["action_summary"]


def test_resource_secrets_are_scrubbed() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "bot", "process.command_line": "run --api-key=zzz999"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("x"):
        pass
    (span,) = exporter.get_finished_spans()
    provider.shutdown()
    row = both(span)
    assert "zzz999" not in row["resource"]
    assert row["redactions"] == 1


def test_redaction_off_keeps_values(spans: Spans) -> None:
    span = spans.make("x", {"note": f"used {GH_TOKEN}", "password": "hunter2"})
    row = Normalizer(None).normalize_readable(span)
    assert row["redactions"] == 0
    assert attrs_json(row) == {"note": f"used {GH_TOKEN}", "password": "hunter2"}
    disabled = Normalizer(Redactor(enabled=False)).normalize_readable(span)
    assert disabled == row


# --- landing ---------------------------------------------------------------------------


def test_rows_land_through_the_writer(spans: Spans, tmp_path: Path) -> None:
    made = [
        spans.make(
            "tools/call git_status",
            {sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL, sc.TT_POLICY_MATCHED: ("a",)},
        ),
        spans.make("chat", {sc.GEN_AI_OPERATION_NAME: "chat", sc.GEN_AI_USAGE_INPUT_TOKENS: 9}),
        spans.make("x", {"password": "p", sc.TT_APPROVAL_WAIT_MS: 3}),
    ]
    rows = [both(s) for s in made]
    (path,) = ParquetSpanWriter(tmp_path).write(rows)
    table = pq.read_table(path, partitioning=None)
    back = {r["span_id"]: r for r in table.to_pylist()}
    for row in rows:
        got = back[row["span_id"]]
        for column in ("span_type", "tool_name", "policy_matched", "input_tokens", "redactions"):
            assert got[column] == row[column]
        assert got["attributes"] == row["attributes"]


def test_odd_values_never_break_normalization(tmp_path: Path) -> None:
    # OTLP and other SDKs can send values the OTel Python SDK would refuse; a row still
    # comes out, lands, and keeps what it could not place in `attributes`.
    rec = SpanRecord(
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id=None,
        name="odd",
        start_ns=1_700_000_000_000_000_000,
        end_ns=None,
        attributes={
            sc.GEN_AI_OPERATION_NAME: ["chat"],
            sc.OPENINFERENCE_SPAN_KIND: {"x": 1},
            sc.SESSION_ID: None,
            sc.TT_SEQUENCE: 2.5,
            sc.TT_APPROVAL_WAIT_MS: float("nan"),
            sc.GEN_AI_AGENT_NAME: True,
            "blob": b"\x00\xff",
            "ratio": float("inf"),
            "nested": {"deep": [1, {"password": "p"}]},
        },
        resource={"service.name": 7},
        events=[("exception", {"exception.type": None}), ("exception", {"exception.type": "E"})],
    )
    row = Normalizer(Redactor()).normalize(rec)
    assert row["span_type"] == "other"
    assert row["session_id"] == "a" * 32
    assert (row["sequence"], row["approval_wait_ms"], row["agent_name"]) == (None, None, None)
    assert (row["end_time"], row["duration_ms"], row["error_type"]) == (None, None, "E")
    assert row["service_name"] == "7"
    kept = attrs_json(row)
    assert kept["blob"] == "00ff"
    assert kept["ratio"] == "inf"
    assert kept["nested"] == {"deep": [1, {"password": "[REDACTED:key]"}]}
    assert kept[sc.TT_SEQUENCE] == 2.5
    assert row["redactions"] == 1
    (path,) = ParquetSpanWriter(tmp_path).write([row])
    assert pq.read_table(path).num_rows == 1


def test_secrets_in_targets_name_and_summary_are_scrubbed() -> None:
    token = "ghp_" + "Q" * 36
    remote = f"https://x:{token}@github.com/acme/app"
    rec = SpanRecord(
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_span_id=None,
        name=f"execute_tool git_push {remote}",
        start_ns=1,
        end_ns=2,
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_push",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"remote": remote}),
            sc.TT_TARGET_REPO: remote,
            sc.TT_TARGET_BRANCH: f"main-{token}",
        },
    )
    row = Normalizer(Redactor()).normalize(rec)
    assert token not in json.dumps(row, default=str)
    assert row["action_summary"] and "REDACTED" in row["action_summary"]
    assert row["redactions"] >= 4


def test_redactions_made_by_the_policy_at_call_time_are_counted() -> None:
    rec = SpanRecord(
        trace_id="c" * 32,
        span_id="d" * 16,
        parent_span_id=None,
        name="execute_tool git_commit",
        start_ns=1,
        end_ns=2,
        attributes={
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_commit",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"message": "key [REDACTED]"}),
            sc.TT_REDACTIONS: 2,
        },
    )
    row = Normalizer(Redactor()).normalize(rec)
    assert row["redactions"] == 2
    assert sc.TT_REDACTIONS not in json.loads(str(row["attributes"]))


def test_a_secret_keys_value_is_erased_where_the_tool_quoted_it(spans: Spans) -> None:
    # No pattern knows this token's shape: only its key (`token`) marks it. Erased from
    # the arguments, it must not land in the result preview or the error message either.
    token = "zq" + "plmokn" * 16 + "xy"
    row = both(
        spans.make(
            "execute_tool deploy",
            {
                sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
                sc.GEN_AI_TOOL_NAME: "deploy",
                sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"token": token, "env": "prod"}),
                sc.GEN_AI_TOOL_CALL_RESULT: f"deployed with token {token} ok",
            },
            status=Status(StatusCode.ERROR, f"ValueError: token {token} expired"),
        )
    )
    landed = json.dumps(row, default=str)
    assert token not in landed
    assert json.loads(row["arguments"]) == {"token": "[REDACTED:key]", "env": "prod"}
    assert row["result_preview"] == "deployed with token [REDACTED] ok"
    assert row["status_message"] == "ValueError: token [REDACTED] expired"
    assert row["redactions"] == 3


# --- who governed the call (governed_by, the gateway's columns) --------------------------


def _gateway_attributes(changed: bool) -> dict[str, Any]:
    """The attributes the MCP gateway adds to a tool span (gateway/connection.py)."""
    out: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "read_file",
        sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
        sc.MCP_SERVER_NAME: "filesystem",
        sc.TT_SESSION_ID: "sess-gw",
        sc.TT_SEQUENCE: 1,
        sc.TT_GATEWAY: True,
        sc.TT_MCP_CLIENT_NAME: "claude-code",
        sc.TT_MCP_CLIENT_VERSION: "1.0.3",
    }
    if changed:
        out[sc.TT_TOOL_DEFINITION_CHANGED] = True
        out[sc.TT_TOOL_DEFINITION_HASH] = "0123456789abcdef"
    return out


def test_gateway_span_lands_governed_by_gateway_with_client_and_change(spans: Spans) -> None:
    row = both(spans.make("tools/call read_file", _gateway_attributes(changed=True)))
    assert row["governed_by"] == "gateway"
    assert (row["mcp_client_name"], row["mcp_client_version"]) == ("claude-code", "1.0.3")
    assert row["tool_definition_changed"] is True
    assert row["tool_definition_hash"] == "0123456789abcdef"
    # landed in columns, so not repeated in the attributes JSON
    landed_keys = {
        sc.TT_GATEWAY,
        sc.TT_MCP_CLIENT_NAME,
        sc.TT_MCP_CLIENT_VERSION,
        sc.TT_TOOL_DEFINITION_CHANGED,
        sc.TT_TOOL_DEFINITION_HASH,
    }
    assert not landed_keys & set(attrs_json(row))


def test_unchanged_gateway_tool_has_no_change_flag(spans: Spans) -> None:
    row = both(spans.make("tools/call read_file", _gateway_attributes(changed=False)))
    assert row["governed_by"] == "gateway"
    assert row["tool_definition_changed"] is None and row["tool_definition_hash"] is None


def test_instrumentation_span_is_governed_by_instrumentation() -> None:
    from instrumentation_support import instrumented

    import tooltrail.instrumentation as tt

    @tt.tool(name="lookup")
    def lookup(q: str) -> str:
        return q.upper()

    with instrumented() as exporter:
        assert lookup("x") == "X"
        (span,) = exporter.get_finished_spans()
    row = both(span)
    assert row["governed_by"] == "instrumentation"
    assert row["mcp_client_name"] is None and row["tool_definition_changed"] is None


def test_third_party_span_is_governed_by_nobody(spans: Spans) -> None:
    row = both(
        spans.make(
            "execute_tool search",
            {sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.GEN_AI_TOOL_NAME: "search"},
        )
    )
    assert row["governed_by"] is None


def test_a_gateway_mark_that_is_not_true_stays_in_attributes(spans: Spans) -> None:
    attributes = _gateway_attributes(changed=False)
    attributes[sc.TT_GATEWAY] = "maybe"
    attributes[sc.TT_TOOL_DEFINITION_CHANGED] = "perhaps"
    row = both(spans.make("tools/call read_file", attributes))
    # not the gateway's mark: what the span's sequence number says (tooltrail made it)
    assert row["governed_by"] == "instrumentation"
    assert row["tool_definition_changed"] is None
    kept = attrs_json(row)
    assert kept[sc.TT_GATEWAY] == "maybe" and kept[sc.TT_TOOL_DEFINITION_CHANGED] == "perhaps"


def test_gateway_attribute_names_are_the_landed_ones() -> None:
    # The gateway's names (gateway/connection.py) are the ones the normalizer reads.
    from tooltrail.gateway import connection as stdio

    assert (
        stdio.TT_GATEWAY,
        stdio.TT_CLIENT_NAME,
        stdio.TT_CLIENT_VERSION,
        stdio.TT_TOOL_CHANGED,
        stdio.TT_TOOL_HASH,
    ) == (
        sc.TT_GATEWAY,
        sc.TT_MCP_CLIENT_NAME,
        sc.TT_MCP_CLIENT_VERSION,
        sc.TT_TOOL_DEFINITION_CHANGED,
        sc.TT_TOOL_DEFINITION_HASH,
    )
