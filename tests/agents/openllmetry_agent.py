"""An MCP agent instrumented by OpenLLMetry exactly as OpenLLMetry's users do it.

It runs in a separate virtualenv (``tests/agents/openllmetry-requirements.txt``: mcp 1.x,
the mcp-server-git release for it, OpenLLMetry's ``traceloop-sdk`` and
``opentelemetry-instrumentation-mcp``), never in tooltrail's own, and contains no
tooltrail code. It asks a real ``mcp-server-git`` (over stdio) for the status of a
repository, to create a branch and for the last commit, printing each result as a JSON
line, then exits (the OTel SDK's tracer provider flushes its spans at exit).

Two wirings, both documented by OpenLLMetry:

``sdk``
    ``Traceloop.init(api_endpoint=URL, instruments={Instruments.MCP})``: the SDK builds the
    OTel SDK tracer provider with an OTLP/HTTP exporter to ``URL/v1/traces`` and calls
    ``McpInstrumentor().instrument()``; ``Traceloop.set_association_properties({"session_id":
    SESSION})`` puts the session on every span.
``standalone``
    No Traceloop SDK: a stock ``TracerProvider`` + ``BatchSpanProcessor(OTLPSpanExporter)``
    and ``McpInstrumentor().instrument()``. OpenLLMetry has no session here, so the calls run
    under one root span and the agent prints its trace id (the session tooltrail falls back
    to); SESSION is unused.

Usage: python openllmetry_agent.py {sdk,standalone} COLLECTOR_URL SESSION REPO
"""

from __future__ import annotations

import json
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import anyio

APP_NAME = "openllmetry-git-agent"
ROOT_SPAN = "git-agent.run"


def tool_calls(repo: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("git_status", {"repo_path": repo}),
        ("git_create_branch", {"repo_path": repo, "branch_name": "agent/feature"}),
        ("git_log", {"repo_path": repo, "max_count": 1}),
    ]


def init_sdk(url: str, session: str) -> None:
    from traceloop.sdk import Traceloop
    from traceloop.sdk.instruments import Instruments

    Traceloop.init(app_name=APP_NAME, api_endpoint=url, instruments={Instruments.MCP})
    Traceloop.set_association_properties({"session_id": session})


def init_standalone(url: str) -> AbstractContextManager[Any]:
    """The stock OTel SDK set up by hand; returns the root span the calls run under."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.mcp import McpInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": APP_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    trace.set_tracer_provider(provider)
    McpInstrumentor().instrument()
    return trace.get_tracer(APP_NAME).start_as_current_span(ROOT_SPAN)


async def run_calls(repo: str) -> None:
    # Imported after the instrumentation is set up: OpenLLMetry's stdio transport hook
    # replaces ``stdio_client`` in ``mcp.client.stdio``, which a name bound at the top of
    # this file would bypass (its spans for each message sent would then be missing).
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", repo]
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for tool, arguments in tool_calls(repo):
            result = await session.call_tool(tool, arguments)
            text = "".join(getattr(c, "text", "") for c in result.content)
            print(json.dumps({"tool": tool, "arguments": arguments, "text": text}), flush=True)


def main(wiring: str, url: str, session: str, repo: str) -> None:
    root: AbstractContextManager[Any] = nullcontext()
    if wiring == "sdk":
        init_sdk(url, session)
    elif wiring == "standalone":
        root = init_standalone(url)
    else:
        raise SystemExit(f"unknown wiring {wiring!r}: expected 'sdk' or 'standalone'")
    with root as span:
        if span is not None:
            trace_id = f"{span.get_span_context().trace_id:032x}"
            print(json.dumps({"trace_id": trace_id}), flush=True)
        anyio.run(run_calls, repo)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
