"""Latency from a tool call's end to its event on the live stream (issue 17, "Live").

    python bench/events.py [--calls 60] [--gap 0.1]

Two paths, each with real processes:

* ``embedded``: an agent process (``tt.configure(data_dir)``, ``@tt.tool``) lands its calls
  through the real exporter into a data directory; ``tooltrail tail --follow --format json
  --data DIR`` follows the directory.
* ``collector``: an agent process sends the same calls with the official OTLP/HTTP
  exporter (BatchSpanProcessor, schedule delay 100 ms: the SDK's default of 5 s would be
  most of the figure) to ``tooltrail collect``; ``tooltrail tail --follow --format json
  --url URL`` reads ``GET /v1/events``.

Each event's latency is the wall-clock time the reader got its line minus the call's end
time (the span's end, which the event carries), on one machine's clock. The agent makes a
call every ``--gap`` seconds. Median and p95 are printed; target: median <= 1 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent

AGENT = """
import sys, time
import tooltrail.instrumentation as tt

calls, gap, local = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
endpoint = sys.argv[4] if len(sys.argv) > 4 else None
if endpoint:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(sampler=tt.ToolSpanSampler())
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=100)
    )
    trace.set_tracer_provider(provider)
tt.configure(data_dir=local, agent_name="bench-bot")

@tt.tool
def deploy(target: str) -> str:
    return target

with tt.session(session_id="bench"):
    for i in range(calls):
        deploy(f"web-{i}")
        time.sleep(gap)
"""


def _reader(
    argv: list[str], got: list[float], want: int, done: threading.Event
) -> subprocess.Popen[str]:
    tail = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def read() -> None:
        assert tail.stdout is not None
        for line in tail.stdout:
            now = time.time()
            doc = json.loads(line)
            if doc.get("kind") == "action":
                ended = dt.datetime.fromisoformat(doc["time"]).timestamp()
                got.append(now - ended)
                if len(got) >= want:
                    done.set()

    threading.Thread(target=read, daemon=True).start()
    return tail


def _run_agent(calls: int, gap: float, local: Path, endpoint: str | None = None) -> None:
    argv = [sys.executable, "-c", textwrap.dedent(AGENT), str(calls), str(gap), str(local)]
    subprocess.run(argv + ([endpoint] if endpoint else []), check=True, timeout=600)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def embedded(root: Path, calls: int, gap: float) -> list[float]:
    data = root / "embedded"
    data.mkdir()
    got: list[float] = []
    done = threading.Event()
    argv = [str(BIN / "tooltrail"), "tail", "--data", str(data), "--follow", "--format", "json"]
    tail = _reader(argv, got, calls, done)
    try:
        time.sleep(1.5)  # the follower is up
        _run_agent(calls, gap, data)
        done.wait(30)
    finally:
        _stop(tail)
    return got


def collector(root: Path, calls: int, gap: float) -> list[float]:
    data = root / "collected"
    collect = subprocess.Popen(
        [str(BIN / "tooltrail"), "collect", "--data", str(data), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert collect.stdout is not None
        line = collect.stdout.readline()
        url = line.split("listening on ", 1)[1].split()[0]
        got: list[float] = []
        done = threading.Event()
        argv = [str(BIN / "tooltrail"), "tail", "--url", url, "--follow", "--format", "json"]
        tail = _reader(argv, got, calls, done)
        try:
            time.sleep(1.5)
            _run_agent(calls, gap, root / "agent-local", f"{url}/v1/traces")
            done.wait(30)
        finally:
            _stop(tail)
    finally:
        _stop(collect)
        if collect.stdout is not None:
            collect.stdout.close()
    return got


def _summary(name: str, latencies: list[float], calls: int) -> str:
    if not latencies:
        return f"{name:10s} no events received"
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{name:10s} events {len(latencies)}/{calls}  median {statistics.median(ordered):.3f} s"
        f"  p95 {p95:.3f} s  max {ordered[-1]:.3f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between calls")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tt-bench-events-"))
    try:
        print(f"cpus {os.cpu_count()}, {args.calls} calls, one every {args.gap} s")
        print(_summary("embedded", embedded(root, args.calls, args.gap), args.calls))
        print(_summary("collector", collector(root, args.calls, args.gap), args.calls))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
