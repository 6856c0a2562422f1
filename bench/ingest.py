"""``tooltrail collect`` end to end: OTel SDK -> OTLP/HTTP -> collector -> queryable sessions.

    python bench/ingest.py [--spans 100000] [--sessions 1000] [--modes spool,direct]
                           [--access] [--baseline OTHER/.venv/bin/tooltrail]

For each durability mode, one run of each sender:

* ``sdk``: the OTel SDK makes N tool spans in S sessions and exports them with the
  official OTLP/HTTP exporter behind a BatchSpanProcessor (512-span batches), as an agent
  would. The clock runs from the first span created to the moment the ``sessions`` view
  counts all N actions.
* ``sink`` (reference, ``--sink``): the ``sdk`` senders posting to an endpoint that
  answers 200 and discards the body. No collector could be faster with these senders on
  this machine: it is the ceiling the SDK's own cost (span creation, protobuf encoding in
  Python) puts on the ``sdk`` runs.
* ``replay``: the same kind of spans, encoded beforehand by the SDK's own OTLP encoder
  into 512-span bodies, posted by two keep-alive connections. This takes the sender's
  CPU (span creation and protobuf encoding in Python, which cost more than the collector's
  own work per span) off the clock: it measures what the collector can take.

Figures per run: end-to-end spans/s, the tail (seconds from the last span sent to all
of them queryable), collector CPU seconds per span (from
/proc/<pid>/stat), bytes per span on disk (the Parquet files), drops (spans sent but not
landed, and failed exports), 503s. Reference (issue 8): Phoenix 20.26 on this machine,
same load: ~145 spans/s, 6.5 ms CPU/span, 820 B/span, 3.6 % dropped.

``--access``: the data directory has access control (an admin, one agent) and the senders
present the agent's ``tta_`` credential, so every span goes through the credential check
and the session-owner check at landing. ``--baseline BIN``: each run is made twice in this
one invocation, alternately, with another checkout's ``tooltrail`` (say, main's) and with
this one's, and the ratio of their figures is printed (timings on a shared machine are
noisy; runs side by side are comparable).

Just past 600 lines: one benchmark script with its senders, modes and report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from tooltrail import semconv as sc

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "policy-git.yaml"
PHOENIX = {"spans_s": 145.0, "cpu_ms": 6.5, "bytes": 820.0, "drops_pct": 3.6}
BATCH = 512
TOOLS = ("git_status", "git_diff", "git_add", "git_commit", "git_log", "git_checkout")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def attributes(i: int, sessions: int) -> dict[str, AttributeValue]:
    """One instrumented MCP tool call, decided at call time (as the instrumentation does)."""
    session = f"session-{i % sessions:05d}"
    tool = TOOLS[i % len(TOOLS)]
    return {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: tool,
        sc.GEN_AI_TOOL_CALL_ID: f"call-{i}",
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(
            {"repo_path": f"/srv/repos/r{i % 20}", "message": f"fix: handle retry {i}"}
        ),
        sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
        sc.MCP_SERVER_NAME: "mcp-git",
        sc.JSONRPC_REQUEST_ID: str(i),
        sc.SESSION_ID: session,
        sc.GEN_AI_CONVERSATION_ID: session,
        sc.TT_SESSION_ID: session,
        sc.GEN_AI_AGENT_NAME: f"agent-{i % 7}",
        sc.TT_SEQUENCE: i // sessions,
        sc.TT_DECISION: "ALLOW",
        sc.TT_POLICY_RULE: "pass",
        sc.TT_ENFORCED: True,
        sc.TT_BLAST_RADIUS: "Medium",
        sc.TT_TARGET_REPO: f"/srv/repos/r{i % 20}",
    }


def make_spans(provider: TracerProvider, n: int, sessions: int, start: int = 0) -> None:
    tracer = provider.get_tracer("bench-ingest")
    for i in range(start, start + n):
        attrs = attributes(i, sessions)
        name = f"tools/call {TOOLS[i % len(TOOLS)]}"
        with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs):
            pass


# --- the collector process ------------------------------------------------------------------


def this_tooltrail() -> Path:
    return Path(sys.executable).with_name("tooltrail")


def agent_credential(tooltrail: Path, data: Path) -> str:
    """Turn access control on in ``data`` (an admin) and add an agent: its credential."""

    def add(args: list[str], token: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "TOOLTRAIL_TOKEN"}
        if token:
            env["TOOLTRAIL_TOKEN"] = token
        done = subprocess.run(
            [str(tooltrail), *args[:2], "--data", str(data), *args[2:]],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        return done.stdout.rstrip("\n").splitlines()[-1]

    admin = add(["users", "add", "admin", "--role", "admin"], None)
    return add(["agents", "add", "bench-agent"], admin)


class Collector:
    def __init__(
        self,
        data: Path,
        mode: str,
        workers: int | None,
        extra: Sequence[str] = (),
        tooltrail: Path | None = None,
    ) -> None:
        argv = [str(tooltrail or this_tooltrail()), "collect"]
        self.proc = subprocess.Popen(
            [
                *argv,
                "--data",
                str(data),
                "--port",
                "0",
                "--durability",
                mode,
                "--policy",
                str(POLICY),
                *(["--workers", str(workers)] if workers is not None else []),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        line = self.proc.stdout.readline() if sel.select(timeout=60) else ""
        sel.close()
        if "listening on " not in line:
            self.stop()
            raise SystemExit(f"collector did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].split()[0]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def children_cpu_s(self) -> float:
        """CPU of the landing worker processes (children of the collector), so far."""
        total = 0.0
        for child in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                total += (int(stat[11]) + int(stat[12])) / CLK_TCK
        return total

    def metric(self, name: str) -> float:
        _, body = _get(self.url, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(f"tooltrail_collector_{name} "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _conn(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)


def _get(url: str, path: str) -> tuple[int, bytes]:
    conn = _conn(url)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Sink:
    """An OTLP/HTTP endpoint that reads each body, answers 200 and keeps nothing."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def run_sink(n: int, sessions: int, agents: int) -> tuple[float, float]:
    """(spans/s, sender CPU ms/span) of ``agents`` SDK senders into the sink."""
    sink = Sink()
    try:
        failed, sender_cpu, t0 = send_sdk(sink.url, n, sessions, agents, {})
        seconds = time.perf_counter() - t0
    finally:
        sink.close()
    if failed:
        raise SystemExit(f"the sink refused {failed} spans")
    return n / seconds, sender_cpu / n * 1000


# --- senders ----------------------------------------------------------------------------------


class _CountingExporter(SpanExporter):
    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.failed_spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed_spans += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]  # untyped upstream


def _agent(
    url: str, start: int, n: int, sessions: int, failed: Any, ready: Any, headers: dict[str, str]
) -> None:
    """One agent process: its own SDK, BatchSpanProcessor and OTLP/HTTP exporter."""
    exporter = _CountingExporter(OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=headers))
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    # The queue holds the whole run, so the SDK itself never drops (that would not be
    # the collector's doing); batches are the 512.
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=n + BATCH,
            max_export_batch_size=BATCH,
            schedule_delay_millis=200,
        )
    )
    ready.wait()  # every agent is up: the clock starts now, with the first span
    make_spans(provider, n, sessions, start)
    provider.force_flush(600_000)
    provider.shutdown()
    with failed.get_lock():
        failed.value += exporter.failed_spans


def send_sdk(
    url: str, n: int, sessions: int, agents: int, headers: dict[str, str]
) -> tuple[int, float, float]:
    """``agents`` processes send n spans between them.

    Returns (failed spans, the agents' CPU seconds, the clock's start: the moment every
    agent process has started and set up its SDK, so interpreter start-up and imports,
    which an agent pays once, not per span, are off the clock).
    """
    ctx = get_context("spawn")
    failed = ctx.Value("i", 0)
    ready = ctx.Barrier(agents + 1)
    share = n // agents
    procs = [
        ctx.Process(
            target=_agent,
            args=(
                url,
                k * share,
                share if k < agents - 1 else n - k * share,
                sessions,
                failed,
                ready,
                headers,
            ),
        )
        for k in range(agents)
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p in procs:
        p.start()
    ready.wait(timeout=120)
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(failed.value), cpu, t0


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def encoded_bodies(n: int, sessions: int) -> list[bytes]:
    keep = _Keep()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent"}))
    provider.add_span_processor(keep)
    make_spans(provider, n, sessions)
    return [
        encode_spans(keep.spans[i : i + BATCH]).SerializeToString()
        for i in range(0, len(keep.spans), BATCH)
    ]


def send_replay(
    url: str, bodies: list[bytes], headers: dict[str, str], connections: int = 2
) -> int:
    """Post pre-encoded bodies on keep-alive connections, honouring 503 Retry-After."""
    failed = 0
    lock = threading.Lock()
    work = iter(bodies)

    def worker() -> None:
        nonlocal failed
        conn = _conn(url)
        try:
            while True:
                with lock:
                    body = next(work, None)
                if body is None:
                    return
                for _ in range(20):
                    conn.request(
                        "POST",
                        "/v1/traces",
                        body,
                        {"Content-Type": "application/x-protobuf", **headers},
                    )
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 503:
                        break
                    time.sleep(float(resp.getheader("Retry-After") or 1))
                if resp.status != 200:
                    with lock:
                        failed += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed * BATCH


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    mode: str
    sender: str
    seconds: float
    spans_s: float
    cpu_ms: float
    sender_cpu_ms: float
    bytes_per_span: float
    files: int
    landed: int
    drops: int
    shed: float
    tail: float


def queryable(data: Path) -> int:
    from tooltrail import analytics

    con = analytics.connect(data)
    try:
        row = con.execute("SELECT coalesce(sum(action_count), 0) FROM sessions").fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def run(
    mode: str,
    sender: str,
    n: int,
    sessions: int,
    bodies: list[bytes],
    workers: int | None,
    agents: int,
    extra: Sequence[str] = (),
    access: bool = False,
    tooltrail: Path | None = None,
) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="tt-ingest-"))
    data = tmp / "data"
    headers: dict[str, str] = {}
    if access:
        data.mkdir(parents=True)
        credential = agent_credential(tooltrail or this_tooltrail(), data)
        headers["Authorization"] = f"Bearer {credential}"
    col = Collector(data, mode, workers, extra, tooltrail)
    try:
        time.sleep(2.0)  # the collector's landing workers finish starting (they warm up)
        cpu0 = col.cpu_s() + col.children_cpu_s()
        t0 = time.perf_counter()
        if sender.startswith("sdk"):
            failed, sender_cpu, t0 = send_sdk(col.url, n, sessions, agents, headers)
        else:
            failed, sender_cpu = send_replay(col.url, bodies, headers), 0.0
        sent = time.perf_counter()
        deadline = time.monotonic() + 600
        while col.metric("spans_landed_total") < n - failed and time.monotonic() < deadline:
            time.sleep(0.05)
        while queryable(data) < n - failed and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        tail = time.perf_counter() - sent
        cpu = col.cpu_s() + col.children_cpu_s() - cpu0
        shed = col.metric("requests_shed_total")
    finally:
        col.stop()
    files = list((data / "spans").glob("date=*/*.parquet"))
    size = sum(f.stat().st_size for f in files)
    landed = queryable(data)
    shutil.rmtree(tmp, ignore_errors=True)
    return Result(
        mode,
        sender if sender == "replay" else f"sdk x{agents}",
        seconds,
        n / seconds,
        cpu / n * 1000,
        sender_cpu / n * 1000,
        size / n,
        len(files),
        landed,
        n - landed + failed,
        shed,
        tail,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=1_000)
    ap.add_argument("--modes", default="spool,direct")
    ap.add_argument("--senders", default="sdk,replay")
    ap.add_argument("--workers", type=int, default=None, help="collector --workers")
    ap.add_argument("--agents", default="1,4", help="SDK sender processes, per sdk run")
    ap.add_argument(
        "--sink",
        action="store_true",
        help="also run the sdk senders into a discarding endpoint (their ceiling here)",
    )
    ap.add_argument(
        "--collector-args", default="", help="more `tooltrail collect` options, space-separated"
    )
    ap.add_argument(
        "--access",
        action="store_true",
        help="access control on; the senders present an agent's credential",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout's `tooltrail` executable: each run is made with it too, and"
        " the ratio printed",
    )
    args = ap.parse_args()
    n = args.spans
    senders = args.senders.split(",")
    bodies = encoded_bodies(n, args.sessions) if "replay" in senders else []
    # The reader is an analyst's process already running (the dashboard, a DuckDB shell):
    # its one-time imports and DuckDB start-up (~0.6 s) are not part of the ingest path.
    warm = Path(tempfile.mkdtemp(prefix="tt-ingest-warm-"))
    try:
        queryable(warm)
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    print(
        f"{n} tool spans in {args.sessions} sessions, {BATCH}-span batches, "
        f"{os.cpu_count()} cores; policy {POLICY.name}"
    )
    header = (
        f"{'mode':7} {'sender':8} {'seconds':>8} {'spans/s':>9} {'x Phoenix':>9} "
        f"{'collector CPU ms/span':>21} {'sender CPU ms/span':>18} {'B/span':>7} "
        f"{'files':>6} {'landed':>7} {'drops':>6} {'503s':>5} {'tail s':>6}"
    )
    print(header)
    runs = [(s, 1) for s in senders if s == "replay"]
    if "sdk" in senders:
        runs = [("sdk", int(k)) for k in args.agents.split(",")] + runs
    binaries: list[Path | None] = [None] if args.baseline is None else [args.baseline, None]
    for mode in args.modes.split(","):
        for sender, agents in runs:
            results: list[Result] = []
            for tooltrail in binaries:
                r = run(
                    mode,
                    sender,
                    n,
                    args.sessions,
                    bodies,
                    args.workers,
                    agents,
                    args.collector_args.split(),
                    args.access,
                    tooltrail,
                )
                results.append(r)
                label = "" if args.baseline is None else (" base" if tooltrail else " this")
                print(
                    f"{r.mode:7} {r.sender:8} {r.seconds:8.2f} {r.spans_s:9.0f} "
                    f"{r.spans_s / PHOENIX['spans_s']:9.1f} {r.cpu_ms:21.4f} "
                    f"{r.sender_cpu_ms:18.4f} {r.bytes_per_span:7.1f} {r.files:6d} "
                    f"{r.landed:7d} {r.drops:6d} {r.shed:5.0f} {r.tail:6.2f}{label}",
                    flush=True,
                )
            if len(results) == 2:
                base, this = results
                print(
                    f"{'':7} {'ratio':8} this/base: spans/s x{this.spans_s / base.spans_s:.3f}, "
                    f"collector CPU/span x{this.cpu_ms / base.cpu_ms:.3f}",
                    flush=True,
                )
    if args.sink and "sdk" in senders:
        for agents in (int(k) for k in args.agents.split(",")):
            spans_s, sender_ms = run_sink(n, args.sessions, agents)
            print(
                f"{'sink':7} {f'sdk x{agents}':8} {n / spans_s:8.2f} {spans_s:9.0f} "
                f"{spans_s / PHOENIX['spans_s']:9.1f} {'-':>21} {sender_ms:18.4f}",
                flush=True,
            )
    print(
        f"Phoenix reference: {PHOENIX['spans_s']:.0f} spans/s, {PHOENIX['cpu_ms']} ms CPU/span, "
        f"{PHOENIX['bytes']:.0f} B/span, {PHOENIX['drops_pct']}% dropped. "
        f"Targets: >= {100 * PHOENIX['spans_s']:.0f} spans/s, 0 drops, "
        f"<= {PHOENIX['bytes'] / 4:.0f} B/span."
    )


if __name__ == "__main__":
    main()
