"""``McpInstrumentor`` against the real ``mcp-server-git`` over stdio.

One server process serves the whole module (it runs in a background event loop behind an
anyio blocking portal); each test re-instruments with the settings it needs. Spans are
checked with the SDK's in-memory exporter, effects in the real repository with ``git``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from git_support import git, init_repo
from instrumentation_support import attrs, instrumented
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tooltrail.instrumentation as tt
from tooltrail.instrumentation.broker import ApprovalOutcome, ApprovalRequest
from tooltrail.semconv import (
    ERROR_TYPE,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    JSONRPC_REQUEST_ID,
    MCP_METHOD_NAME,
    MCP_SERVER_NAME,
    SESSION_ID,
    TT_APPROVAL_STATUS,
    TT_ARGUMENTS_REWRITTEN,
    TT_DECISION,
    TT_ENFORCED,
    TT_POLICY_RULE,
    TT_SEQUENCE,
    TT_SESSION_ID,
    TT_TARGET_BRANCH,
    TT_TARGET_REPO,
)

pytestmark = pytest.mark.mcp

T = TypeVar("T")
AGENTS = Path(__file__).parent / "agents"


def branches(repo: Path) -> set[str]:
    return set(git(repo, "branch", "--format=%(refname:short)").split())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_repo(tmp_path_factory.mktemp("repo"))


class Git:
    """A live ClientSession to mcp-server-git, driven from synchronous tests."""

    def __init__(self, portal: BlockingPortal, session: ClientSession, repo: Path) -> None:
        self.portal = portal
        self.session = session
        self.repo = repo

    def call(self, tool: str, **arguments: Any) -> CallToolResult:
        result = self.run(
            lambda: self.session.call_tool(tool, {"repo_path": str(self.repo), **arguments})
        )
        return result

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def go() -> T:
            return await fn()

        return self.portal.call(go)


@asynccontextmanager
async def git_session(repo: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)]
    )
    async with (
        stdio_client(params, errlog=sys.stderr) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Git]:
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(git_session(repo)) as session,
    ):
        yield Git(portal, session, repo)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with instrumented(enforce=False) as exporter:
        yield exporter


def policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def tool_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("tools/call ")]


def denial(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error
    (block,) = result.content
    text = getattr(block, "text", None)
    assert isinstance(text, str)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


# --- tracing ------------------------------------------------------------------------------


def test_each_git_tool_call_is_one_span_in_its_session(
    server: Git, spans: InMemorySpanExporter
) -> None:
    repo = server.repo
    (repo / "notes.txt").write_text("a note\n")

    async def agent() -> str:
        with tt.session(agent_name="git-agent", trigger="manual") as s:
            s_ = server.session
            await s_.call_tool("git_status", {"repo_path": str(repo)})
            await s_.call_tool("git_create_branch", {"repo_path": str(repo), "branch_name": "f1"})
            await s_.call_tool("git_checkout", {"repo_path": str(repo), "branch_name": "f1"})
            await s_.call_tool("git_add", {"repo_path": str(repo), "files": ["notes.txt"]})
            await s_.call_tool("git_commit", {"repo_path": str(repo), "message": "add notes"})
            await s_.call_tool("git_checkout", {"repo_path": str(repo), "branch_name": "main"})
            return s.session_id

    session_id = server.run(agent)
    assert git(repo, "log", "-1", "--format=%s", "f1") == "add notes"
    found = tool_spans(spans)
    names = [attrs(s)[GEN_AI_TOOL_NAME] for s in found]
    assert names == [
        "git_status",
        "git_create_branch",
        "git_checkout",
        "git_add",
        "git_commit",
        "git_checkout",
    ]
    request_ids = []
    for seq, span in enumerate(found, start=1):
        a = attrs(span)
        assert span.name == f"tools/call {a[GEN_AI_TOOL_NAME]}"
        assert span.kind is SpanKind.CLIENT
        assert span.status.status_code is StatusCode.UNSET
        assert a[GEN_AI_OPERATION_NAME] == "execute_tool"
        assert a[MCP_METHOD_NAME] == "tools/call"
        assert a[MCP_SERVER_NAME] == "mcp-git"
        assert a[SESSION_ID] == a[GEN_AI_CONVERSATION_ID] == a[TT_SESSION_ID] == session_id
        assert a[GEN_AI_AGENT_NAME] == "git-agent"
        assert a[TT_SEQUENCE] == seq
        assert json.loads(a[GEN_AI_TOOL_CALL_ARGUMENTS])["repo_path"] == str(repo)
        assert GEN_AI_TOOL_CALL_RESULT not in a  # results are opt-in
        request_ids.append(int(a[JSONRPC_REQUEST_ID]))
    # Ids the dispatcher really used: increasing, one per request, never repeated.
    assert request_ids == sorted(set(request_ids))
    create = attrs(found[1])
    assert json.loads(create[GEN_AI_TOOL_CALL_ARGUMENTS])["branch_name"] == "f1"


def test_tool_error_result_marks_the_span(server: Git, spans: InMemorySpanExporter) -> None:
    result = server.call("git_checkout", branch_name="no-such-branch")
    assert result.is_error
    (span,) = tool_spans(spans)
    assert attrs(span)[ERROR_TYPE] == "tool_error"
    assert span.status.status_code is StatusCode.ERROR


def test_protocol_error_is_recorded_and_raised(server: Git, spans: InMemorySpanExporter) -> None:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError, match="Unknown tool"):
        server.run(lambda: server.session.call_tool("git_teleport", {}))
    (span,) = tool_spans(spans)
    assert attrs(span)[ERROR_TYPE] == "MCPError"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_result_preview_when_opted_in(server: Git) -> None:
    with instrumented(capture_results=True) as exporter:
        server.call("git_status")
    (span,) = tool_spans(exporter)
    assert "On branch" in attrs(span)[GEN_AI_TOOL_CALL_RESULT]


def test_uninstrument_restores_the_client(server: Git) -> None:
    from mcp.client.session import ClientSession as Cls

    with instrumented() as exporter:  # uninstruments on exit
        assert hasattr(Cls.call_tool, "__wrapped__")
    assert not hasattr(Cls.call_tool, "__wrapped__")
    assert not hasattr(Cls.list_tools, "__wrapped__")
    result = server.call("git_status")
    assert not result.is_error
    assert exporter.get_finished_spans() == ()


def test_instrument_declares_the_supported_mcp_range() -> None:
    assert tt.McpInstrumentor().instrumentation_dependencies() == ("mcp >= 2.0, < 3",)


# --- enforcement --------------------------------------------------------------------------


def test_deny_never_reaches_the_server_and_explains_itself(server: Git, tmp_path: Path) -> None:
    path = policy(
        tmp_path,
        """
        version: 1
        targets:
          - tools: ["git_*"]
            repo: "{repo_path}"
            branch: "{branch_name}"
        rules:
          - id: no-forbidden-branches
            when: {tool: git_create_branch, server: "mcp-*", args: {branch_name: "forbidden-*"}}
            decision: DENY
            reason: Branch names starting with forbidden- are reserved
        """,
    )
    with instrumented(enforce=True, policy=path) as exporter:

        async def agent() -> tuple[CallToolResult, str]:
            with tt.session(agent_name="denied-agent") as s:
                r = await server.session.call_tool(
                    "git_create_branch",
                    {"repo_path": str(server.repo), "branch_name": "forbidden-x"},
                )
                return r, s.session_id

        result, session_id = server.run(agent)
    assert "forbidden-x" not in branches(server.repo)
    body = denial(result)
    assert body["error"] == "tool_call_denied"
    assert body["tool"] == "git_create_branch"
    assert body["decision"] == "DENY"
    assert body["rule"] == "no-forbidden-branches"
    assert body["reason"] == "Branch names starting with forbidden- are reserved"
    assert body["session_id"] == session_id
    (span,) = tool_spans(exporter)
    a = attrs(span)
    assert (a[TT_DECISION], a[TT_POLICY_RULE], a[TT_ENFORCED]) == (
        "DENY",
        "no-forbidden-branches",
        True,
    )
    assert a[TT_TARGET_REPO] == str(server.repo)
    assert a[TT_TARGET_BRANCH] == "forbidden-x"
    assert a[ERROR_TYPE] == "tool_call_denied"
    assert JSONRPC_REQUEST_ID not in a  # no request was sent


def test_rewrite_creates_the_rewritten_branch(server: Git, tmp_path: Path) -> None:
    path = policy(
        tmp_path,
        """
        version: 1
        rules:
          - id: agents-branch-under-agent
            when: {tool: git_create_branch, args: {branch_name: "main-copy"}}
            decision: REWRITE
            rewrite: {set: {branch_name: "agent/{session_id}"}}
        """,
    )
    with instrumented(enforce=True, policy=path) as exporter:

        async def agent() -> CallToolResult:
            # Opened inside the coroutine: the portal's task does not see this thread's context.
            with tt.session(session_id="s42"):
                return await server.session.call_tool(
                    "git_create_branch", {"repo_path": str(server.repo), "branch_name": "main-copy"}
                )

        result = server.run(agent)
    assert not result.is_error, result
    assert "agent/s42" in branches(server.repo)
    assert "main-copy" not in branches(server.repo)
    (span,) = tool_spans(exporter)
    a = attrs(span)
    assert a[TT_DECISION] == "REWRITE"
    assert json.loads(a[GEN_AI_TOOL_CALL_ARGUMENTS])["branch_name"] == "main-copy"
    assert json.loads(a[TT_ARGUMENTS_REWRITTEN])["branch_name"] == "agent/s42"


def test_require_approval_fails_closed_without_a_broker(server: Git, tmp_path: Path) -> None:
    path = policy(
        tmp_path,
        """
        version: 1
        rules:
          - id: commits-need-review
            when: {tool: git_commit}
            decision: REQUIRE_APPROVAL
            approval: {timeout: 10m}
        """,
    )
    repo = server.repo
    (repo / "held.txt").write_text("held\n")
    git(repo, "add", "held.txt")
    head = git(repo, "rev-parse", "HEAD")
    try:
        with instrumented(enforce=True, policy=path) as exporter:
            result = server.call("git_commit", message="should not land")
    finally:
        git(repo, "reset", "-q", "--", "held.txt")
        (repo / "held.txt").unlink()
    assert git(repo, "rev-parse", "HEAD") == head
    body = denial(result)
    assert (body["decision"], body["rule"], body["reason"]) == (
        "REQUIRE_APPROVAL",
        "commits-need-review",
        "approval required",
    )
    assert body["approval"]["status"] == "denied"
    (span,) = tool_spans(exporter)
    assert attrs(span)[TT_APPROVAL_STATUS] == "denied"


def test_approved_call_is_sent_after_the_async_broker_answers(server: Git, tmp_path: Path) -> None:
    path = policy(
        tmp_path,
        """
        version: 1
        rules:
          - id: branches-need-review
            when: {tool: git_create_branch}
            decision: REQUIRE_APPROVAL
        """,
    )
    asked: list[ApprovalRequest] = []

    class Broker:
        def request(self, request: ApprovalRequest) -> ApprovalOutcome:
            raise AssertionError("an async client must use arequest")

        async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
            asked.append(request)
            await asyncio.sleep(0.05)  # waits without blocking the loop
            return ApprovalOutcome("approved", approval_id="a1", decided_by="carol")

    with instrumented(enforce=True, policy=path, broker=Broker()):
        result = server.call("git_create_branch", branch_name="reviewed")
    assert not result.is_error
    assert "reviewed" in branches(server.repo)
    (req,) = asked
    assert req.server == "mcp-git"
    assert dict(req.arguments)["branch_name"] == "reviewed"


def test_tool_annotations_from_tools_list_reach_the_policy(server: Git, tmp_path: Path) -> None:
    path = policy(
        tmp_path,
        """
        version: 1
        rules:
          - id: read-only-agent
            when: {readOnlyHint: false}
            decision: DENY
            reason: This agent may only read
        """,
    )
    with instrumented(enforce=True, policy=path):
        server.run(lambda: server.session.list_tools())
        status = server.call("git_status")
        created = server.call("git_create_branch", branch_name="writes-are-denied")
    assert not status.is_error
    assert denial(created)["rule"] == "read-only-agent"
    assert "writes-are-denied" not in branches(server.repo)


# --- context propagation -------------------------------------------------------------------


def test_server_sees_our_trace_context_in_meta() -> None:
    out = subprocess.run(
        [sys.executable, str(AGENTS / "propagation_client.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONPATH": str(AGENTS)},
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    ours = [s for s in report["spans"] if s["name"] == "tools/call echo_meta"]
    assert len(ours) == 1
    ours_span = ours[0]
    traceparent = report["meta"]["traceparent"]
    version, trace_id, parent_id, _flags = traceparent.split("-")
    assert version == "00"
    assert (trace_id, parent_id) == (ours_span["trace_id"], ours_span["span_id"])
    # mcp 2.x's own request span is folded into ours: one span per tool call, not two.
    assert not [s for s in report["spans"] if s["name"].startswith("MCP send tools/call")]
    # Its spans for other requests stay (the tools/list the SDK sends to validate results).
    assert [s["name"] for s in report["spans"] if s["parent_span_id"] == parent_id] == [
        "MCP send tools/list"
    ]
