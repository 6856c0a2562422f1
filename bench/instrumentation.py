"""What instrumentation costs an agent, measured in one run on this machine.

    python bench/instrumentation.py [--calls N] [--repeats R] [--mcp-calls M]
                                    [--memory-calls K] [--only in-process|memory|mcp]

1. In-process tool call (issue 4 target: <= 1.3x). The same small function called
   (a) inside a bare SDK span, ``with tracer.start_as_current_span(...)``; (b) decorated
   with ``@tool``, enforcement on, a 20-rule policy (no rule matches; the engine evaluates
   every rule whose tool selector covers the call); (c) ``@tool`` without enforcement;
   (d) (b) with ``TOOLTRAIL_REDACT=0``: the paired difference is what scrubbing values as
   they enter the span costs a call with nothing to scrub. All
   use one TracerProvider with the same no-op span processor (a span is built and ended;
   nothing is exported). Also shown, to say where the time goes: the bare span carrying the
   attributes one enforcing ``@tool`` call records (copied from a real call); an SDK span
   started, made current and ended the way ``@tool`` does it, without and with those
   attributes (the floor for any instrumentation that records them), and with only the
   ten SPEC §2 requires of an enforced call (with ``Policy.decide`` alone added: the floor
   for any instrumentation that enforces through the SDK's public API); and
   ``Policy.decide`` alone. The modes run in interleaved rounds, so drift on a shared
   machine hits every mode alike.
2. MCP client cost alone: ``call_tool`` of a trivial tool on an in-process server over
   memory streams (the same JSON-RPC client path as stdio), interleaved modes.
3. MCP: ``call_tool("git_status")`` over stdio to the real mcp-server-git: uninstrumented,
   instrumented, and instrumented enforcing the same policy, in interleaved batches so drift
   hits every mode alike. Reported: the median round trip, and the client process's CPU time
   per call (``time.process_time``), whose difference is the instrumentation's own work
   without the scheduling noise of two processes sharing a busy machine; both as a share of
   the uninstrumented round trip.

Figures are per call: median over repeats of (batch time / calls); the in-process
headline ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import tooltrail.instrumentation as tt
from tooltrail import semconv as sc
from tooltrail.config import ENV_REDACT
from tooltrail.policy import Decision, Policy, ToolCall, load_policy

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


class _LastAttributes(SpanProcessor):
    """Keeps the attributes of the last span ended (to copy what ``@tool`` records)."""

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}

    def on_end(self, span: ReadableSpan) -> None:
        self.attributes = dict(span.attributes or {})


class _Precomputed(Policy):
    """Answers every call with one decision computed beforehand: enforcing with it costs
    everything but the policy's evaluation, which the difference then measures in place
    (in a real call it costs more than alone: caches are shared with the rest)."""

    def __init__(self, policy: Policy, decision: Decision) -> None:  # no super(): no rules
        self.version = policy.version
        self.source = policy.source
        self._decision = decision

    def decide(self, call: ToolCall) -> Decision:
        return self._decision


def create_branch(repo_path: str, branch_name: str) -> str:
    return branch_name


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """One timed batch: microseconds per call."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def interleaved(
    modes: dict[str, tuple[Callable[[], object], Callable[[], object] | None]],
    calls: int,
    repeats: int,
) -> dict[str, list[float]]:
    """Per-call times of each mode, one per round (``repeats`` rounds). Every round runs
    every mode once, in turn, so drift on a shared machine (frequency, neighbours) hits
    every mode alike; each mode is warmed up first. A mode is (the call, a setup run before
    each of its batches, outside the timing: e.g. turning enforcement on)."""
    samples: dict[str, list[float]] = {name: [] for name in modes}
    for fn, setup in modes.values():
        if setup is not None:
            setup()
        for _ in range(min(calls, 2000)):
            fn()
    for _ in range(repeats):
        for name, (fn, setup) in modes.items():
            if setup is not None:
                setup()
            gc.collect()  # outside the timed batch, for every mode alike
            samples[name].append(per_call_us(fn, calls))
    return samples


BARE: Final = "bare SDK span"
ENFORCING: Final = "@tool, enforcing 20 rules"
NOT_ENFORCING: Final = "@tool, not enforcing"
SAME_ATTRS: Final = "bare SDK span + the same attributes"
MANUAL: Final = "SDK span started the way @tool does"
MANUAL_ATTRS: Final = "  ... + the same attributes"
MANUAL_MIN: Final = "  ... + only the 10 SPEC 2 requires"
PRECOMPUTED: Final = "@tool, enforcing a precomputed decision"
NO_SCRUB: Final = "@tool, enforcing, TOOLTRAIL_REDACT=0"
DECIDE: Final = "Policy.decide alone (20 rules)"
FUNCTION: Final = "the function alone"
# What SPEC §2 asks every enforced tool span to carry, whatever the implementation: the
# operation, tool, arguments, both session keys, the sequence and the decision's four
# attributes. The floor computed from it holds for any instrumentation using the SDK's
# public API.
SPEC_REQUIRED: Final = (
    sc.GEN_AI_OPERATION_NAME,
    sc.GEN_AI_TOOL_NAME,
    sc.GEN_AI_TOOL_CALL_ARGUMENTS,
    sc.SESSION_ID,
    sc.GEN_AI_CONVERSATION_ID,
    sc.TT_SEQUENCE,
    sc.TT_DECISION,
    sc.TT_POLICY_RULE,
    sc.TT_ENFORCED,
    sc.TT_BLAST_RADIUS,
)


def in_process(calls: int, repeats: int, policy_path: Path) -> None:
    provider = TracerProvider()
    provider.add_span_processor(_Noop())
    tracer = provider.get_tracer("bench")
    args = ("/srv/repos/payments", "feature/retry")
    span_name = "execute_tool create_branch"

    def bare() -> None:
        with tracer.start_as_current_span(span_name):
            create_branch(*args)

    decorated = tt.tool(create_branch)
    policy = load_policy(policy_path)
    call = ToolCall(
        tool="create_branch",
        arguments={"repo_path": args[0], "branch_name": args[1]},
        agent="bench-agent",
        session_id="s",
    )
    decision = policy.decide(call)
    assert decision.policy_rule == "pass", "the benchmarked call must match no rule"
    precomputed = _Precomputed(policy, decision)

    def decide() -> None:
        policy.decide(call)

    instrumentor = tt.McpInstrumentor()

    def enforcing() -> None:
        switch(instrumentor, tracer_provider=provider, enforce=True, policy=policy)

    def enforcing_precomputed() -> None:
        switch(instrumentor, tracer_provider=provider, enforce=True, policy=precomputed)

    def not_enforcing() -> None:
        switch(instrumentor, tracer_provider=provider, enforce=False)

    def enforcing_unscrubbed() -> None:
        # Scrubbing where values enter the span, turned off: what it costs a clean call.
        os.environ[ENV_REDACT] = "0"
        try:
            enforcing()
        finally:
            del os.environ[ENV_REDACT]

    with tt.session(agent_name="bench-agent"):
        same_attrs = recorded_attributes(decorated, args, policy)
        tool_tracer = provider.get_tracer("bench-manual")

        def manual(attributes: dict[str, Any] | None) -> Callable[[], None]:
            # What @tool does around the call: start_span, make it current, end it.
            def run() -> None:
                span = tool_tracer.start_span(span_name, attributes=attributes)
                token = otel_context.attach(trace.set_span_in_context(span))
                create_branch(*args)
                otel_context.detach(token)
                span.end()

            return run

        def bare_with_attrs() -> None:
            with tracer.start_as_current_span(span_name, attributes=same_attrs):
                create_branch(*args)

        samples = interleaved(
            {
                BARE: (bare, None),
                ENFORCING: (lambda: decorated(*args), enforcing),
                NOT_ENFORCING: (lambda: decorated(*args), not_enforcing),
                PRECOMPUTED: (lambda: decorated(*args), enforcing_precomputed),
                NO_SCRUB: (lambda: decorated(*args), enforcing_unscrubbed),
                SAME_ATTRS: (bare_with_attrs, None),
                MANUAL: (manual(None), None),
                MANUAL_ATTRS: (manual(same_attrs), None),
                MANUAL_MIN: (manual({k: same_attrs[k] for k in SPEC_REQUIRED}), None),
                DECIDE: (decide, None),
                FUNCTION: (lambda: create_branch(*args), None),
            },
            calls,
            repeats,
        )
        instrumentor.uninstrument()
    report_in_process(samples, calls, repeats, len(same_attrs))


def switch(instrumentor: tt.McpInstrumentor, **settings: Any) -> None:
    """(Re)install tooltrail with ``settings`` (outside the timed batches)."""
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    instrumentor.instrument(**settings)


def recorded_attributes(
    decorated: Callable[..., object], args: tuple[str, str], policy: Policy
) -> dict[str, Any]:
    """The attributes one enforcing ``@tool`` call of the benchmarked function records."""
    capture = _LastAttributes()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    instrumentor = tt.McpInstrumentor()
    switch(instrumentor, tracer_provider=provider, enforce=True, policy=policy)
    try:
        decorated(*args)
    finally:
        instrumentor.uninstrument()
    assert capture.attributes.get(sc.TT_DECISION) == "ALLOW", capture.attributes
    return capture.attributes


def report_in_process(
    samples: dict[str, list[float]], calls: int, repeats: int, n_attrs: int
) -> None:
    results = {name: statistics.median(v) for name, v in samples.items()}
    base = results[BARE]
    print(f"In-process tool call ({calls} calls x {repeats} interleaved rounds, median per call)")
    for name, us in results.items():
        print(f"  {name:<40} {us:8.2f} us   {us / base:5.2f}x bare span")
    # Paired per round: both sides of each ratio were timed a moment apart, so a busy
    # spell of the shared machine skews one round, not the headline.
    ratio = statistics.median(e / b for e, b in zip(samples[ENFORCING], samples[BARE], strict=True))
    fastest = min(samples[ENFORCING]) / min(samples[BARE])
    verdict = "meets" if ratio <= 1.3 else "MISSES"
    print(
        f"  ratio enforcing/bare = {ratio:.2f} ({verdict} the <= 1.3x target;"
        f" median of per-round ratios; fastest/fastest = {fastest:.2f})"
    )
    scrub = statistics.median(
        e - u for e, u in zip(samples[ENFORCING], samples[NO_SCRUB], strict=True)
    )
    print(f"  scrubbing as values enter the span: {scrub:.2f} us per clean call (paired per round)")
    span = results[MANUAL]
    attrs = results[MANUAL_ATTRS] - span
    policy = results[ENFORCING] - results[PRECOMPUTED]
    own = results[PRECOMPUTED] - results[MANUAL_ATTRS]
    print("  where the enforcing call's time goes:")
    print(f"    SDK span, started and ended as @tool does it  {span:8.2f} us")
    print(f"    SDK handling of its {n_attrs} attributes            {attrs:8.2f} us")
    print(
        f"    policy decision, in place                     {policy:8.2f} us"
        f"   (alone: {results[DECIDE]:.2f} us)"
    )
    print(f"    tooltrail's own code                          {own:8.2f} us")
    floor = results[MANUAL_ATTRS] / base
    print(
        f"  floor: the SDK span with the same attributes alone = {floor:.2f}x bare;"
        f" plus the policy decision = {(results[MANUAL_ATTRS] + policy) / base:.2f}x"
    )
    least = results[MANUAL_MIN] / base
    budget = 1.3 * base - results[MANUAL_MIN]
    print(
        f"  floor for any instrumentation: an SDK span with only the {len(SPEC_REQUIRED)}"
        f" attributes SPEC 2 requires = {least:.2f}x bare, leaving {budget:.2f} us under"
        f" 1.3x to decide {RULES} rules; + Policy.decide alone"
        f" = {least + results[DECIDE] / base:.2f}x"
    )


class _Samples:
    def __init__(self) -> None:
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []  # this process only: the client's own work


def _modes(
    instrumentor: tt.McpInstrumentor, provider: TracerProvider, policy: Policy
) -> dict[str, Callable[[], None] | None]:
    """The MCP client modes compared, each a way to switch it on (None: left off)."""
    return {
        "uninstrumented": None,
        "instrumented, not enforcing": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=False, skip_dep_check=True
        ),
        "instrumented, enforcing 20 rules": lambda: instrumentor.instrument(
            tracer_provider=provider, enforce=True, policy=policy, skip_dep_check=True
        ),
    }


async def mcp_round_trips(repo: Path, calls: int, policy_path: Path) -> dict[str, _Samples]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)]
    )
    instrumentor = tt.McpInstrumentor()
    provider = TracerProvider()
    provider.add_span_processor(_Noop())
    policy = load_policy(policy_path)  # once: re-parsing per batch would feed the GC
    modes = _modes(instrumentor, provider, policy)
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
    modes = _modes(instrumentor, provider, policy)
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


SECTIONS: Final = ("in-process", "memory", "mcp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mcp-calls", type=int, default=900)
    parser.add_argument("--memory-calls", type=int, default=6000)
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    ns = parser.parse_args()
    sections = ns.only or SECTIONS
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy_path = tmp / "policy.yaml"
        policy_path.write_text(policy_text())
        if "in-process" in sections:
            in_process(ns.calls, ns.repeats, policy_path)
        if "memory" in sections:
            in_memory(ns.memory_calls, policy_path)
        if "mcp" in sections:
            mcp(ns.mcp_calls, policy_path, tmp)


if __name__ == "__main__":
    main()
