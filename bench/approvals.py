"""Approvals and session control on the embedded store, measured in one run on this machine.

    python bench/approvals.py [--approvals N] [--concurrent M] [--calls C]

1. Latency from ``approve`` to the agent's call proceeding (issue 5 target: median <=
   250 ms), in single-user mode (unsigned) and with access control on (issue 16: the
   decision signed with the approver's Ed25519 key, the agent verifying it against a
   pinned trust root before the call runs). An async agent process (``@tool`` under
   enforcement, the default ``ControlStoreBroker``) makes N held calls one after
   another. This process plays the approver: it sees each request appear, "thinks" for
   a random 0-200 ms (seeded; a person's decision lands at a random point of the
   agent's polling interval, not right after its first look), notes the time and calls
   ``ControlStore.decide`` (what ``tooltrail approve`` does after starting up). The
   agent notes the time its tool body starts. Latency = start - decide (same clock, one
   machine). Also reported: the agent's CPU time per held call, all threads, and the
   wall time of one ``tooltrail approvals`` process for comparison (interpreter
   start-up dominates it).
2. Waiting cost with M calls held at once in one agent: agent CPU per second of waiting,
   measured over a window in which nothing is decided (M = 0: the configured agent idle).
   For scale, the cost of a bare ``asyncio.sleep`` loop waking as often as a waiter polls
   (every 50 ms) on this machine.
3. Session control's cost per tool call: ``@tool`` under enforcement with a one-rule policy
   that matches nothing, session control off vs on (one primary-key read of the store per
   call), median per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

    async def idle() -> None:  # the baseline: configured, nothing held, until stdin closes
        await asyncio.to_thread(sys.stdin.read)

    runs = {"sequential": sequential, "concurrent": concurrent, "idle": idle}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    asyncio.run(runs[mode]())
    report = {
        "started": started,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
    }
    print(json.dumps(report), flush=True)


def start_agent(
    data: Path, policy: Path, mode: str, count: int, extra: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
    env.update(extra or {})
    return subprocess.Popen(
        [sys.executable, __file__, "agent", str(data), str(policy), mode, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def agent_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a running process, all threads, in nanoseconds'
    resolution (Linux ``/proc/PID/task/*/schedstat``; ``stat`` counts 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that just ended
            continue
    return total / 1e9


# --- 1. approve -> proceed latency --------------------------------------------------------


def signed_setup(data: Path, trust: Path) -> Any:
    """Access control on ``data`` (an admin, and the approver "bench" with a decider key),
    the keys pinned in ``trust``; returns bench's signer (what `tooltrail approve` builds
    from the credential it is given)."""
    from tooltrail.access import AccessStore
    from tooltrail.signing import decider_signer, write_trust_file

    with AccessStore(data) as store:
        admin, _ = store.add("admin", "user", "admin", by=None)
        _, credential = store.add("bench", "user", "approver", by=admin)
        write_trust_file(trust, store.decider_keys())
    return decider_signer(data, credential)


def latency(root: Path, count: int, signed: bool = False) -> None:
    from tooltrail.control import ControlStore

    data, policy = root / ("latency-signed" if signed else "latency"), root / "policy.yaml"
    signer, extra = None, {}
    if signed:
        trust = root / "trust" / "trust-root.json"
        signer = signed_setup(data, trust)
        extra = {"TOOLTRAIL_TRUST_ROOT": str(trust)}
        os.environ["TOOLTRAIL_TRUST_ROOT"] = str(trust)  # this process verifies with it too
    agent = start_agent(data, policy, "sequential", count, extra)
    decided_at: dict[int, float] = {}
    think = random.Random(5)
    with ControlStore(data) as store:
        while len(decided_at) < count:
            for rec in store.list_approvals("pending"):
                n = int(json.loads(rec.arguments)["n"])
                if n not in decided_at:
                    time.sleep(think.uniform(0.0, 0.2))
                    decided_at[n] = time.time()
                    store.decide(rec.approval_id, "approved", by="bench", signer=signer)
            time.sleep(0.002)  # the approver's own polling: fine-grained, so it adds little
    out, _ = agent.communicate(timeout=600)
    os.environ.pop("TOOLTRAIL_TRUST_ROOT", None)
    report = json.loads(out)
    lat = sorted((report["started"][str(n)] - decided_at[n]) * 1000 for n in range(count))
    p95 = lat[min(len(lat) - 1, round(0.95 * len(lat)) - 1)]
    share = report["cpu_s"] / report["wall_s"] * 100
    how = "signed (Ed25519, pinned trust root)" if signed else "single-user mode, unsigned"
    print(f"1. approve -> call proceeds, {count} held calls in sequence (async agent), {how}")
    print(f"   median {statistics.median(lat):7.1f} ms   p95 {p95:7.1f} ms   max {lat[-1]:7.1f} ms")
    print(
        f"   agent CPU {report['cpu_s'] * 1000 / count:6.2f} ms per held call, all threads"
        f" (filing, waiting, span export to Parquet): {share:.1f}% of one core over its"
        f" {report['wall_s']:.1f} s run"
    )
    cli = [str(BIN / "tooltrail")] if (BIN / "tooltrail").exists() else None
    if cli is not None and not signed:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([*cli, "approvals", "--data", str(data)], capture_output=True)
            times.append((time.perf_counter() - t0) * 1000)
        median_ms = statistics.median(times)
        print(f"   for comparison: one `tooltrail approvals` process takes {median_ms:.0f} ms")


# --- 2. the cost of waiting ---------------------------------------------------------------


def waiting(root: Path, count: int, window_s: float = 3.0) -> None:
    """Agent CPU over a quiet window with ``count`` calls held (0: the idle baseline)."""
    from tooltrail.control import ControlStore

    data, policy = root / f"waiting-{count}", root / "policy.yaml"
    agent = start_agent(data, policy, "concurrent" if count else "idle", count)
    with ControlStore(data) as store:
        while len(store.list_approvals("pending")) < count:
            time.sleep(0.05)
        time.sleep(1.0)  # let start-up, filing and span export settle before measuring
        cpu0, t0 = agent_cpu_s(agent.pid), time.perf_counter()
        time.sleep(window_s)
        cpu = agent_cpu_s(agent.pid) - cpu0
        elapsed = time.perf_counter() - t0
        for rec in store.list_approvals("pending"):
            store.decide(rec.approval_id, "approved", by="bench")
    agent.communicate("", timeout=600)
    per_s = cpu / elapsed
    what = f"{count:4d} calls held at once" if count else "idle agent (baseline) "
    extra = f"; {per_s / count * 1e6:6.1f} us/s per held call" if count else ""
    print(
        f"2. {what}: agent CPU {per_s * 1000:6.1f} ms per second"
        f" ({per_s * 100:4.1f}% of one core{extra})"
    )


def bare_wakeups(seconds: float = 3.0) -> None:
    async def loop() -> float:
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await asyncio.sleep(0.05)
        return (time.process_time() - cpu0) / (time.perf_counter() - t0)

    per_s = asyncio.run(loop())
    print(f"   for scale: a bare asyncio.sleep(0.05) loop costs {per_s * 1000:.1f} ms per second")


# --- 3. session control per call ----------------------------------------------------------


def session_check(root: Path, calls: int, repeats: int = 7) -> None:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    import tooltrail.instrumentation as tt
    from tooltrail.instrumentation import _settings

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
        _settings.install(
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
    _settings.reset()
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
    parser.add_argument("--concurrent", type=int, nargs="*", default=[0, 1, 100])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tooltrail-bench-") as tmp:
        root = Path(tmp)
        (root / "policy.yaml").write_text(POLICY)
        print(f"tooltrail approvals bench ({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        latency(root, args.approvals)
        latency(root, args.approvals, signed=True)
        for m in args.concurrent:
            waiting(root, m)
        bare_wakeups()
        session_check(root, args.calls)


if __name__ == "__main__":
    main(sys.argv[1:])
