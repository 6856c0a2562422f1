"""Spans made by a third-party instrumentation from PyPI land as tooltrail actions.

OpenLLMetry's ``opentelemetry-instrumentation-mcp`` (0.62.4) makes the tool spans, around
real ``mcp-server-git`` calls; they travel over OTLP/HTTP to a ``tooltrail collect``
subprocess and must land as actions with the right tool, arguments and session.

Why not ``McpInstrumentor().instrument()``: that release does not work with mcp 2.3.
``instrument()`` raises ``wrapt.PathResolutionError`` (it hooks
``mcp.client.streamable_http.streamablehttp_client``, renamed ``streamable_http_client``
in mcp 2.x); its tool spans come from wrapping ``mcp.shared.session.BaseSession
.send_request``, a module mcp 2.x removed; and it reads ``request.root.method``, while
mcp 2.x requests are plain models without ``.root`` (its ``dont_throw`` would swallow the
AttributeError and hand the agent ``None`` instead of the tool result). OpenInference's
``openinference-instrumentation-mcp`` 2.0.13 does install and hook mcp 2.3, but it only
propagates context and makes no spans. So the spans here are made by OpenLLMetry's own
span code (``McpInstrumentor._handle_tool_call``: names, attributes, input, output,
status), attached to mcp 2.3's ``ClientSession.send_request`` by a four-line adapter.
The session id is set the way the Traceloop SDK's association properties set it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from collect_support import CollectorProcess, landed_rows, metric, wait_until
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tooltrail import semconv as sc

pytest.importorskip("mcp_server_git")
openllmetry = pytest.importorskip("opentelemetry.instrumentation.mcp.instrumentation")

pytestmark = pytest.mark.mcp

SESSION = "oll-session-42"


class _AssociationProperties(SpanProcessor):
    """What ``Traceloop.set_association_properties({"session_id": ...})`` does per span."""

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        span.set_attribute(sc.TRACELOOP_SESSION_ID, SESSION)


def _git_repo(path: Path) -> Path:
    path.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "-b", "main")
    run("config", "user.email", "t@example.com")
    run("config", "user.name", "t")
    (path / "README.md").write_text("hello\n")
    run("add", "README.md")
    run("commit", "-q", "-m", "init")
    return path


async def _agent(repo: Path, provider: TracerProvider) -> list[tuple[str, dict[str, Any], str]]:
    import wrapt
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.client import session as client_session

    tracer = provider.get_tracer(openllmetry.__name__)
    instrumentor = openllmetry.McpInstrumentor()

    async def adapter(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        request = args[0]
        if getattr(request, "method", None) == "tools/call":
            return await instrumentor._handle_tool_call(
                tracer, "tools/call", request.params, args, kwargs, wrapped
            )
        return await wrapped(*args, **kwargs)

    original = client_session.ClientSession.send_request
    wrapt.wrap_function_wrapper(client_session, "ClientSession.send_request", adapter)
    calls = [
        ("git_status", {"repo_path": str(repo)}),
        ("git_create_branch", {"repo_path": str(repo), "branch_name": "agent/feature"}),
        ("git_log", {"repo_path": str(repo), "max_count": 1}),
    ]
    results = []
    try:
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)]
        )
        async with stdio_client(params) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            for tool, arguments in calls:
                result = await session.call_tool(tool, arguments)
                text = "".join(getattr(c, "text", "") for c in result.content)
                results.append((tool, arguments, text))
    finally:
        client_session.ClientSession.send_request = original  # type: ignore[method-assign]
    return results


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[dict[str, Any]]]:
    """One real agent run (3 tool calls on mcp-server-git) through one collector."""
    tmp = tmp_path_factory.mktemp("openllmetry")
    repo = _git_repo(tmp / "repo")
    with CollectorProcess(tmp / "data", "--flush-interval", "0.2") as col:
        provider = TracerProvider()
        provider.add_span_processor(_AssociationProperties())
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{col.url}/v1/traces"))
        )
        results = anyio.run(_agent, repo, provider)
        provider.shutdown()
        wait_until(lambda: metric(col.url, "spans_landed_total") >= 3, what="spans landed")
    rows = landed_rows(tmp / "data")
    actions = sorted((r for r in rows if r["span_type"] == "tool"), key=lambda r: r["start_time"])
    return results, actions


def test_openllmetry_mcp_spans_land_as_actions(
    landed: tuple[list[Any], list[dict[str, Any]]],
) -> None:
    results, actions = landed
    assert all(text for _, _, text in results), results  # the real server answered
    assert [r["name"] for r in actions] == [f"{t}.tool" for t, _, _ in results]
    for row, (tool, arguments, text) in zip(actions, results, strict=True):
        assert row["tool_name"] == tool
        assert row["session_id"] == SESSION
        assert row["status_code"] == "OK"
        assert row["mcp_server"] is None or isinstance(row["mcp_server"], str)
        # Every argument value the agent passed is in the landed arguments.
        landed_args = row["arguments"]
        assert all(
            json.dumps(v)[1:-1] in landed_args for v in arguments.values() if isinstance(v, str)
        )
        assert text.splitlines()[0] in (row["result_preview"] or "")


def test_openllmetry_mcp_arguments_are_the_tool_arguments(
    landed: tuple[list[Any], list[dict[str, Any]]],
) -> None:
    results, actions = landed
    for row, (_, arguments, _) in zip(actions, results, strict=True):
        assert json.loads(row["arguments"]) == arguments
