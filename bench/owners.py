"""The session-owner check's cost at landing: the collector's pipeline with and without it.

    python bench/owners.py [--batches 40] [--sessions 1000] [--rounds 5] [--trace-sessions]

One process, one machine state: the same 512-span requests, stamped as sent with an
agent's credential (``agent:bench-agent``), land through ``RequestPipeline`` (normalizer,
policy, provenance, Arrow) without the owner check (what main does) and with it (a data
directory whose ``access.sqlite`` binds the sessions), alternately, ``--rounds`` times;
the median seconds per batch of each and their ratio are printed. The first pass of the
checked pipeline binds the sessions and fills its cache (one store read per batch at
most); it is left out, as a collector pays it once per session id.

``--trace-sessions``: the spans name no session, so each lands in its trace's (one trace
per span here, the worst case): such ids are never bound nor cached, and every batch asks
the store about its 512 ids in one read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tooltrail import semconv as sc
from tooltrail.collector.landing import RequestPipeline

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "policy-git.yaml"
BATCH = 512


def request(first: int, sessions: int, named: bool = True) -> ExportTraceServiceRequest:
    """512 tool spans as the collector spools them (stamped with their sender)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for key, value in ((sc.TT_COLLECTOR_SENDER, "agent:bench-agent"), ("service.name", "b")):
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    scope = rs.scope_spans.add()
    for i in range(first, first + BATCH):
        span = scope.spans.add()
        span.trace_id, span.span_id = (i + 1).to_bytes(16, "big"), (i + 1).to_bytes(8, "big")
        span.name = "execute_tool git_commit"
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
        span.end_time_unix_nano = span.start_time_unix_nano + 500
        attrs = {
            sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: "git_commit",
            sc.TT_SESSION_ID: f"session-{i % sessions:05d}",
            sc.GEN_AI_TOOL_CALL_ARGUMENTS: '{"repo_path": "/srv/app", "message": "ship"}',
        }
        if not named:
            del attrs[sc.TT_SESSION_ID]
        for key, text in attrs.items():
            kv = span.attributes.add()
            kv.key, kv.value.string_value = key, text
    return req


def seconds(pipeline: RequestPipeline, requests: list[ExportTraceServiceRequest]) -> float:
    t0 = time.perf_counter()
    for req in requests:
        pipeline.result(req)
    return (time.perf_counter() - t0) / len(requests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trace-sessions", action="store_true", help="spans name no session")
    args = ap.parse_args()
    named = not args.trace_sessions
    requests = [request(k * BATCH, args.sessions, named) for k in range(args.batches)]
    with tempfile.TemporaryDirectory(prefix="tt-owners-") as tmp:
        plain = RequestPipeline(str(POLICY), True)
        checked = RequestPipeline(str(POLICY), True, Path(tmp))
        seconds(plain, requests[:2])  # warm-up: imports, the policy's first run
        first = seconds(checked, requests)  # binds every session, fills the cache
        base: list[float] = []
        this: list[float] = []
        for _ in range(args.rounds):
            base.append(seconds(plain, requests))
            this.append(seconds(checked, requests))
        assert checked.owners is not None
        reads = checked.owners.store_reads
    b, t = statistics.median(base), statistics.median(this)
    where = f"{args.sessions} sessions" if named else "their traces' sessions"
    print(
        f"{args.batches} batches of {BATCH} tool spans in {where}, "
        f"{args.rounds} rounds; policy {POLICY.name}"
    )
    print(
        f"without the owner check (main): {b * 1000:8.2f} ms/batch {b / BATCH * 1e6:7.2f} µs/span"
    )
    print(
        f"with it, cache warm:            {t * 1000:8.2f} ms/batch {t / BATCH * 1e6:7.2f} µs/span"
    )
    print(f"with it, first pass (binding):  {first * 1000:8.2f} ms/batch")
    print(f"ratio with/without: x{t / b:.3f}; access store reads: {reads} in all passes")


if __name__ == "__main__":
    main()
