"""What SIGKILL costs the record: seconds of tool calls that ran but never landed.

    python bench/killwindow.py [--rates 300,3000,0] [--seconds 3] [--runs 3]
                               [--zero-code]

A real agent process (``configure()``, no enforcement, one ``@tool`` function) calls the
tool in a loop at a target rate (``0``: as fast as it can) for ``--seconds``, then is
killed with SIGKILL (nothing runs: no exit hook, no signal handler). The loss window of a
run is the kill time minus the end time of the newest tool span that landed in Parquet:
the calls of that last stretch ran and have no record. docs/INSTRUMENTATION.md promises
at most 0.5 s. Also shown: calls the agent made by the kill (its own counter, read from a
file it rewrites every 1,000 calls, so a lower bound) vs tool rows landed, holes in the
landed calls' sequence numbers (a call dropped before the last landed one), and the
longest pause between consecutive calls (back-pressure: the agent waited for landing).

Figures are medians over ``--runs`` runs per rate (and the worst run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

AGENT = textwrap.dedent(
    """
    import os, sys, time
    import tooltrail.instrumentation as tt

    data, rate, progress = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    if os.environ.get("OTEL_TRACES_EXPORTER") is None:
        tt.configure(data_dir=data, agent_name="killwindow")

    @tt.tool
    def act(n: int) -> int:
        return n

    print("ready", flush=True)
    start = time.monotonic()
    i = 0
    while True:
        if rate:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        act(i)
        i += 1
        if i % 1000 == 0:
            with open(progress + ".tmp", "w") as f:
                f.write(str(i))
            os.replace(progress + ".tmp", progress)
    """
)


def run_once(rate: float, seconds: float, zero_code: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tt-killwindow-") as tmp:
        data, progress = Path(tmp) / "data", Path(tmp) / "progress"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
        argv = [sys.executable, "-c", AGENT, str(data), str(rate), str(progress)]
        if zero_code:
            env |= {"TOOLTRAIL_DATA": str(data), "TOOLTRAIL_AGENT_NAME": "killwindow"}
            argv = [str(Path(sys.executable).parent / "opentelemetry-instrument"), *argv]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            time.sleep(seconds)
            killed_at = time.time()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        called = int(progress.read_text()) if progress.exists() else 0
        files = list((data / "spans").glob("date=*/*.parquet")) if data.exists() else []
        if not files:
            return {"window_s": seconds, "called": called, "landed": 0, "holes": 0, "gap_s": 0.0}
        table = pq.read_table(data / "spans", columns=["span_type", "end_time", "sequence"])
        tools = table.filter(pc.equal(table["span_type"], "tool"))
        times = sorted(t.timestamp() for t in tools["end_time"].to_pylist())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return {
            "window_s": killed_at - times[-1],
            "called": called,
            "landed": len(times),
            "holes": pc.max(tools["sequence"]).as_py() - len(times),
            "gap_s": max(gaps, default=0.0),
            "files": len(files),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="300,3000,0", help="calls/s, comma-separated; 0: max")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--zero-code", action="store_true", help="opentelemetry-instrument")
    args = ap.parse_args()
    print(
        f"{'rate':>11} {'window median':>14} {'worst':>7} {'called':>9} {'landed':>9}"
        f" {'holes':>6} {'max pause':>9} {'files':>6}"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        runs = [run_once(rate, args.seconds, args.zero_code) for _ in range(args.runs)]
        window = statistics.median(r["window_s"] for r in runs)
        worst = max(r["window_s"] for r in runs)
        last = runs[-1]
        label = f"{rate:,.0f}/s" if rate else "unthrottled"
        print(
            f"{label:>11} {window:>13.3f}s {worst:>6.3f}s {last['called']:>9,}"
            f" {last['landed']:>9,} {last['holes']:>6,} {last['gap_s']:>8.3f}s"
            f" {last.get('files', 0):>6}"
        )
        print("           runs:", json.dumps([round(r["window_s"], 3) for r in runs]))


if __name__ == "__main__":
    main()
