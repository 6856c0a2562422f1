"""What instrumentation costs an agent, measured in one run on this machine.

    python bench/instrumentation.py [--calls N] [--repeats R] [--mcp-calls M]

1. In-process tool call (issue 4 target: <= 1.3x). The same small function called
   (a) inside a bare SDK span, ``with tracer.start_as_current_span(...)``; (b) decorated
   with ``@tool``, enforcement on, a 20-rule policy (no rule matches, so every rule is
   evaluated); (c) ``@tool`` without enforcement. Both use one TracerProvider with the same
   no-op span processor (a span is built and ended; nothing is exported). Also shown, to
   say where the time goes: the bare span carrying the same attributes tooltrail sets, and
   ``Policy.decide`` alone.
2. MCP client cost alone: ``call_tool`` of a trivial tool on an in-process server over
   memory streams (the same JSON-RPC client path as stdio), interleaved modes.
3. MCP: ``call_tool("git_status")`` over stdio to the real mcp-server-git: uninstrumented,
   instrumented, and instrumented enforcing the same policy, in interleaved batches so drift
   hits every mode alike. Reported: the median round trip, and the client process's CPU time
   per call (``time.process_time``), whose difference is the instrumentation's own work
   without the scheduling noise of two processes sharing a busy machine; both as a share of
   the uninstrumented round trip.

Figures are per call: median over repeats of (batch time / calls).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

import tooltrail.instrumentation as tt
from tooltrail import semconv as sc
from tooltrail.policy import ToolCall, load_policy

RULES = 20
POLICY_HEAD = """
version: 1
default: ALLOW
targets:
  - tools: ["git_*", "create_branch"]
    repo: "{repo_path}"
    branch: "{branch_name|target|branch}"
blast_radius:
  - {tools: ["git_reset"], radius: Critical}
  - {tools: ["git_commit", "create_branch"], branch: ["main", "master"], radius: High}
  - {tools: ["git_push*"], radius: Medium}
rules:
"""


def policy_text() -> str:
    """20 rules of the kinds a real policy has; none matches the benchmarked call."""
    kinds = [
        "when: {{tool: git_reset_{i}}}\n    decision: DENY",
        "when: {{tool: create_branch, args: {{branch_name: 'forbidden-{i}-*'}}}}\n"
        "    decision: DENY",
        "when: {{tool: 'git_commit*', branch: ['main', 'release-{i}']}}\n"
        "    decision: REQUIRE_APPROVAL",
        "when: {{tool: create_branch, args: {{branch_name: {{regex: '^tmp{i}/.*'}}}}}}\n"
        "    decision: REWRITE\n    rewrite: {{set: {{branch_name: 'agent/{{session_id}}'}}}}",
        "when: {{agent: 'intern-{i}', tool: 'git_*'}}\n    decision: DENY",
    ]
    rules = [f"  - id: rule-{i}\n    {kinds[i % len(kinds)].format(i=i)}" for i in range(RULES)]
    return textwrap.dedent(POLICY_HEAD) + "\n".join(rules) + "\n"


class _Noop(SpanProcessor):
    """Same for both sides: the span is built, started and ended; nothing is kept."""


def create_branch(repo_path: str, branch_name: str) -> str:
    return branch_name


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    for _ in range(min(calls, 2000)):  # warm up
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def in_process(calls: int, repeats: int, policy_path: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(_Noop())
    tracer = provider.get_tracer("bench")
    args = ("/srv/repos/payments", "feature/retry")

    def bare() -> None:
        with tracer.start_as_current_span("execute_tool create_branch"):
            create_branch(*args)

    same_attrs: dict[str, Any] = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "create_branch",
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path":"/srv/repos/payments","branch_name":"x"}',
        sc.SESSION_ID: "s",
        sc.GEN_AI_CONVERSATION_ID: "s",
        sc.TT_SESSION_ID: "s",
        sc.TT_SEQUENCE: 1,
        sc.GEN_AI_AGENT_NAME: "bench-agent",
        sc.TT_DECISION: "ALLOW",
        sc.TT_POLICY_RULE: "pass",
        sc.TT_POLICY_MATCHED: [],
        sc.TT_POLICY_VERSION: "0123456789abcdef",
        sc.TT_ENFORCED: True,
        sc.TT_BLAST_RADIUS: "Low",
        sc.TT_TARGET_REPO: "/srv/repos/payments",
        sc.TT_TARGET_BRANCH: "feature/retry",
    }

    def bare_with_attrs() -> None:
        with tracer.start_as_current_span("execute_tool create_branch", attributes=same_attrs):
            create_branch(*args)

    decorated = tt.tool(create_branch)
    policy = load_policy(policy_path)
    call = ToolCall(
        tool="create_branch",
        arguments={"repo_path": args[0], "branch_name": args[1]},
        agent="bench-agent",
        session_id="s",
    )
    assert policy.decide(call).policy_rule == "pass", "the benchmarked call must match no rule"

    def decide() -> None:
        policy.decide(call)

    instrumentor = tt.McpInstrumentor()
    results: dict[str, float] = {}
    with tt.session(agent_name="bench-agent"):
        results["bare SDK span"] = per_call_us(bare, calls, repeats)
        instrumentor.instrument(tracer_provider=provider, enforce=True, policy=policy_path)
        results["@tool, enforcing 20 rules"] = per_call_us(lambda: decorated(*args), calls, repeats)
        instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=provider, enforce=False)
        results["@tool, not enforcing"] = per_call_us(lambda: decorated(*args), calls, repeats)
        instrumentor.uninstrument()
        results["bare SDK span + the same attributes"] = per_call_us(
            bare_with_attrs, calls, repeats
        )
        results["Policy.decide alone (20 rules)"] = per_call_us(decide, calls, repeats)
        results["the function alone"] = per_call_us(lambda: create_branch(*args), calls, repeats)

    base = results["bare SDK span"]
    print(f"In-process tool call ({calls} calls x {repeats} repeats, median per call)")
    for name, us in results.items():
        print(f"  {name:<40} {us:8.2f} us   {us / base:5.2f}x bare span")
    ratio = results["@tool, enforcing 20 rules"] / base
    verdict = "meets" if ratio <= 1.3 else "MISSES"
    print(f"  ratio enforcing/bare = {ratio:.2f} ({verdict} the <= 1.3x target)")
    print(
        "  of which: policy "
        f"{results['Policy.decide alone (20 rules)']:.2f} us, SDK attribute handling "
        f"{results['bare SDK span + the same attributes'] - base:.2f} us"
    )


class _Samples:
    def __init__(self) -> None:
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []  # this process only: the client's own work


async def mcp_round_trips(repo: Path, calls: int, policy_path: Path) -> dict[str, _Samples]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)]
    )
    instrumentor = tt.McpInstrumentor()
    provider = TracerProvider()
    provider.add_span_processor(_Noop())
    policy = load_policy(policy_path)  # once: re-parsing per batch would feed the GC
    modes: dict[str, Callable[[], None] | None] = {
        "uninstrumented": None,
        "instrumented, not enforcing": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=False, skip_dep_check=True
        ),
        "instrumented, enforcing 20 rules": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=True, policy=policy, skip_dep_check=True
        ),
    }
    samples = {name: _Samples() for name in modes}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        arguments = {"repo_path": str(repo)}
        for _ in range(20):  # warm up the server and the client
            await session.call_tool("git_status", arguments)
        batch = 10
        for _ in range(max(1, calls // (batch * len(modes)))):
            for name, turn_on in modes.items():  # interleaved: drift hits every mode alike
                if turn_on is not None:
                    turn_on()
                gc.collect()  # outside the timed batch, for every mode alike
                cpu = time.process_time()
                for _ in range(batch):
                    start = time.perf_counter()
                    await session.call_tool("git_status", arguments)
                    samples[name].wall_ms.append((time.perf_counter() - start) * 1e3)
                samples[name].cpu_ms.append((time.process_time() - cpu) * 1e3 / batch)
                if turn_on is not None:
                    instrumentor.uninstrument()
    return samples


def mcp(calls: int, policy_path: Path, tmp: Path) -> None:
    repo = tmp / "repo"
    repo.mkdir()
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "bench@example.com"],
        ["git", "config", "user.name", "bench"],
        ["git", "commit", "-q", "--allow-empty", "-m", "initial"],
    ):
        subprocess.run(cmd, cwd=repo, check=True)
    with tt.session(agent_name="bench-agent"):
        samples = asyncio.run(mcp_round_trips(repo, calls, policy_path))
    n = len(samples["uninstrumented"].wall_ms)
    print(f"\nMCP call_tool('git_status') over stdio to mcp-server-git ({n} calls per mode)")
    print(f"  {'':34} {'round trip (median)':>20} {'client CPU (median)':>20}")
    plain = samples["uninstrumented"]
    base_wall = statistics.median(plain.wall_ms)
    base_cpu = statistics.median(plain.cpu_ms)
    for name, got in samples.items():
        wall = statistics.median(got.wall_ms)
        cpu = statistics.median(got.cpu_ms)
        extra = ""
        if got is not plain:
            d_wall, d_cpu = wall - base_wall, cpu - base_cpu
            extra = (
                f"   +{d_wall * 1e3:.0f} us wall = {d_wall / base_wall:.1%},"
                f" +{d_cpu * 1e3:.0f} us client CPU = {d_cpu / base_wall:.1%} of the round trip"
            )
        print(f"  {name:<34} {wall:17.3f} ms {cpu:17.3f} ms{extra}")


async def in_memory_round_trips(calls: int, policy_path: Path) -> dict[str, float]:
    """The client-side cost alone: a trivial tool on an in-process server (memory streams,
    same JSON-RPC client path as stdio), so nothing but our code differs between modes."""
    from mcp import ClientSession
    from mcp.client._memory import InMemoryTransport
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench-echo")

    @server.tool(name="echo", structured_output=False)
    def echo(text: str) -> str:
        return text

    instrumentor = tt.McpInstrumentor()
    provider = TracerProvider()
    provider.add_span_processor(_Noop())
    policy = load_policy(policy_path)
    modes: dict[str, Callable[[], None] | None] = {
        "uninstrumented": None,
        "instrumented, not enforcing": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=False, skip_dep_check=True
        ),
        "instrumented, enforcing 20 rules": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=True, policy=policy, skip_dep_check=True
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in modes}
    async with InMemoryTransport(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        await session.list_tools()
        for _ in range(50):
            await session.call_tool("echo", {"text": "hi"})
        batch = 50
        for _ in range(max(1, calls // (batch * len(modes)))):
            for name, turn_on in modes.items():
                if turn_on is not None:
                    turn_on()
                gc.collect()
                start = time.perf_counter()
                for _ in range(batch):
                    await session.call_tool("echo", {"text": "hi"})
                samples[name].append((time.perf_counter() - start) / batch * 1e6)
                if turn_on is not None:
                    instrumentor.uninstrument()
    return {name: statistics.median(v) for name, v in samples.items()}


def in_memory(calls: int, policy_path: Path) -> None:
    with tt.session(agent_name="bench-agent"):
        got = asyncio.run(in_memory_round_trips(calls, policy_path))
    base = got["uninstrumented"]
    print(f"\nMCP call_tool over in-memory streams to a trivial tool ({calls} calls, medians)")
    for name, us in got.items():
        extra = f"   +{us - base:.0f} us per call" if name != "uninstrumented" else ""
        print(f"  {name:<34} {us:10.1f} us{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mcp-calls", type=int, default=900)
    parser.add_argument("--memory-calls", type=int, default=6000)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(policy_text())
        in_process(ns.calls, ns.repeats, policy_path)
        in_memory(ns.memory_calls, policy_path)
        mcp(ns.mcp_calls, policy_path, tmp)


if __name__ == "__main__":
    main()
