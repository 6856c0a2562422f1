"""Approvals and session control on the embedded store, measured in one run on this machine.

    python bench/approvals.py [--approvals N] [--concurrent M] [--calls C]

1. Latency from ``approve`` to the agent's call proceeding (issue 5 target: median
   <= 250 ms). An async agent process (``@tool`` under enforcement, the default
   ``ControlStoreBroker``) makes N held calls one after another. This process plays the
   approver: it waits for each request to appear, notes the time and calls
   ``ControlStore.decide`` (what ``tooltrail approve`` does after starting up). The agent
   notes the time its tool body starts. Latency = start - decide (same clock, one
   machine). Also reported: the agent's CPU time per held call and as a share of one core
   over its whole run (it must sleep between polls, not spin), and the wall time of one
   ``tooltrail approve`` process for comparison (interpreter start-up dominates it).
2. Waiting cost with M calls held at once in one agent: agent CPU per second of waiting,
   measured over a window in which nothing is decided.
3. Session control's cost per tool call: ``@tool`` under enforcement with a one-rule policy
   that matches nothing, session control off vs on (one primary-key read of the store per
   call), median per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICY = """
version: 1
rules:
  - id: held
    when: {tool: release}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 10m}
"""
BIN = Path(sys.executable).parent


# --- the agent process ----------------------------------------------------------------------


def agent_main(data: str, policy: str, mode: str, count: int) -> None:
    """Run in the agent process: ``sequential`` held calls or ``concurrent`` ones."""
    import tooltrail.instrumentation as tt

    tt.configure(data_dir=data, policy=policy, enforce=True, agent_name="bench-agent")
    started: dict[int, float] = {}

    @tt.tool
    async def release(n: int) -> None:
        started[n] = time.time()

    async def sequential() -> None:
        for n in range(count):
            await release(n)

    async def concurrent() -> None:
        await asyncio.gather(*(release(n) for n in range(count)))

    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(sequential() if mode == "sequential" else concurrent())
    report = {
        "started": started,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }
    print(json.dumps(report), flush=True)


def start_agent(data: Path, policy: Path, mode: str, count: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
    return subprocess.Popen(
        [sys.executable, __file__, "agent", str(data), str(policy), mode, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def agent_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- 1. approve -> proceed latency --------------------------------------------------------


def latency(root: Path, count: int) -> None:
    from tooltrail.control import ControlStore

    data, policy = root / "latency", root / "policy.yaml"
    agent = start_agent(data, policy, "sequential", count)
    decided_at: dict[int, float] = {}
    with ControlStore(data) as store:
        while len(decided_at) < count:
            for rec in store.list_approvals("pending"):
                n = int(json.loads(rec.arguments)["n"])
                if n not in decided_at:
                    decided_at[n] = time.time()
                    store.decide(rec.approval_id, "approved", by="bench")
            time.sleep(0.002)  # the approver's own polling: fine-grained, so it adds little
    out, _ = agent.communicate(timeout=600)
    report = json.loads(out)
    lat = sorted((report["started"][str(n)] - decided_at[n]) * 1000 for n in range(count))
    p95 = lat[min(len(lat) - 1, round(0.95 * len(lat)) - 1)]
    print(f"1. approve -> call proceeds, {count} held calls in sequence (async agent)")
    print(f"   median {statistics.median(lat):7.1f} ms   p95 {p95:7.1f} ms   max {lat[-1]:7.1f} ms")
    print(
        f"   agent CPU {report['cpu_s'] * 1000 / count:6.2f} ms per held call;"
        f" {report['cpu_s'] / report['wall_s'] * 100:5.1f}% of one core over its"
        f" {report['wall_s']:.1f} s run (filing, spans and waiting)"
    )
    cli = [str(BIN / "tooltrail")] if (BIN / "tooltrail").exists() else None
    if cli is not None:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([*cli, "approvals", "--data", str(data)], capture_output=True)
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"   for comparison: one `tooltrail approvals` process {statistics.median(times):.0f} ms"
        )


# --- 2. the cost of waiting ---------------------------------------------------------------


def waiting(root: Path, count: int, window_s: float = 3.0) -> None:
    from tooltrail.control import ControlStore

    data, policy = root / f"waiting-{count}", root / "policy.yaml"
    agent = start_agent(data, policy, "concurrent", count)
    with ControlStore(data) as store:
        while len(store.list_approvals("pending")) < count:
            time.sleep(0.05)
        time.sleep(0.5)  # let filing and span work settle before measuring
        cpu0, t0 = agent_cpu_s(agent.pid), time.perf_counter()
        time.sleep(window_s)
        cpu = agent_cpu_s(agent.pid) - cpu0
        elapsed = time.perf_counter() - t0
        for rec in store.list_approvals("pending"):
            store.decide(rec.approval_id, "approved", by="bench")
    agent.communicate(timeout=600)
    print(
        f"2. {count:4d} calls held at once: agent CPU {cpu / elapsed * 1000:6.1f} ms per second"
        f" of waiting ({cpu / elapsed * 100:4.1f}% of one core;"
        f" {cpu / elapsed / count * 1e6:5.1f} us/s per held call)"
    )


# --- 3. session control per call ----------------------------------------------------------


def session_check(root: Path, calls: int, repeats: int = 7) -> None:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    import tooltrail.instrumentation as tt
    from tooltrail.instrumentation import _spans

    policy = root / "nomatch.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - id: r\n    when: {tool: other}\n    decision: DENY\n"
    )
    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())

    def status(target: str) -> str:
        return target

    decorated = tt.tool(status)
    results: dict[str, float] = {}
    for label, on in (("off", False), ("on", True)):
        _spans.install(
            tracer_provider=provider,
            enforce=True,
            policy=policy,
            data_dir=root / "session",
            session_control=on,
        )
        with tt.session(session_id="bench-session"):
            for _ in range(500):
                decorated("x")
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(calls):
                    decorated("x")
                samples.append((time.perf_counter() - t0) / calls * 1e6)
        results[label] = statistics.median(samples)
    _spans.reset()
    print(
        f"3. @tool call under enforcement: session control off {results['off']:6.1f} us,"
        f" on {results['on']:6.1f} us (+{results['on'] - results['off']:.1f} us per call)"
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["agent"]:
        agent_main(argv[1], argv[2], argv[3], int(argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--approvals", type=int, default=100)
    parser.add_argument("--concurrent", type=int, nargs="*", default=[1, 100])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tooltrail-bench-") as tmp:
        root = Path(tmp)
        (root / "policy.yaml").write_text(POLICY)
        print(f"tooltrail approvals bench ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        latency(root, args.approvals)
        for m in args.concurrent:
            waiting(root, m)
        session_check(root, args.calls)


if __name__ == "__main__":
    main(sys.argv[1:])
