"""Exporter cost vs span creation cost, measured in one run.

    python bench/exporter.py [--spans N] [--batch 512]

Creation: N tool spans (the instrumentation's attribute set) with the bare SDK, no
processor. Export: the same N spans, already ended, landed by TooltrailSpanExporter in
BatchSpanProcessor-sized batches (batch normalize + redact + Arrow + zstd Parquet + fsync
+ atomic link). Target from issue 2: export cost <= 0.5x creation cost.

The chain (issue 17: each landed file's signed, chained record) is measured in the same
run: the export is timed with the chain and with the writer's record step skipped, in
alternating rounds. Target: <= 10% more exporter time per span.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_of, timed, tool_attributes

from tooltrail.collector import writer
from tooltrail.collector.columnar import columns_to_table
from tooltrail.collector.exporter import TooltrailSpanExporter


class _Keep(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def create_spans(n: int, provider: TracerProvider) -> None:
    tracer = provider.get_tracer("bench")
    attrs = [tool_attributes(i) for i in range(n)]
    for a in attrs:
        with tracer.start_as_current_span("tools/call git_commit", attributes=a):
            pass


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def batches(spans: Sequence[ReadableSpan], size: int) -> list[Sequence[ReadableSpan]]:
    return [spans[i : i + size] for i in range(0, len(spans), size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spans", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.spans

    bare = TracerProvider()
    create_s = best_of(args.repeats, lambda: timed(lambda: create_spans(n, bare)))

    keep = _Keep()
    recording = TracerProvider()
    recording.add_span_processor(keep)
    create_spans(n, recording)
    parts = batches(keep.spans, args.batch)

    tmp = Path(tempfile.mkdtemp(prefix="tooltrail-bench-"))
    try:
        exporter = TooltrailSpanExporter(data_dir=tmp / "data", policy=None)

        def export_all() -> None:
            for part in parts:
                exporter.export(part)
            exporter.force_flush()  # everything landed, as after the queue drains

        export_s = best_of(args.repeats, lambda: timed(export_all))
        # Wall and CPU time: on a shared machine the CPU time of this process is the
        # steadier measure of what the chain costs.
        with_chain: list[tuple[float, float]] = []
        without_chain: list[tuple[float, float]] = []
        record = writer._record
        in_chain: list[float] = []  # seconds spent recording, per "with" round

        def timed_record(path: Path, table: object) -> None:
            start = time.perf_counter()
            record(path, table)
            in_chain[-1] += time.perf_counter() - start

        shares: list[float] = []
        for _ in range(max(args.repeats, 5)):
            in_chain.append(0.0)
            writer._record = timed_record
            try:
                with_chain.append(timed_both(export_all))
            finally:
                writer._record = record
            shares.append(in_chain[-1] / (with_chain[-1][0] - in_chain[-1]))
            writer._record = lambda *_args: None  # the same landing, no chain record
            try:
                without_chain.append(timed_both(export_all))
            finally:
                writer._record = record
        columns = [exporter.to_columns(p) for p in parts]
        normalize_s = best_of(
            args.repeats, lambda: timed(lambda: [exporter.to_columns(p) for p in parts])
        )
        arrow_s = best_of(
            args.repeats,
            lambda: timed(
                lambda: [columns_to_table(c, len(p)) for c, p in zip(columns, parts, strict=True)]
            ),
        )
        # The per-span reference path (what a span needing redaction takes), for scale.
        normalize_one = exporter.normalizer.normalize_readable
        per_span_s = best_of(
            args.repeats, lambda: timed(lambda: [normalize_one(s) for s in keep.spans])
        )
        exporter.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    per = 1e6 / n
    print(f"spans={n} batch={args.batch} (best of {args.repeats})")
    print(f"create (bare SDK, no processor): {create_s * per:8.2f} us/span")
    print(f"export (tooltrail, end to end):  {export_s * per:8.2f} us/span")
    print(f"  normalize+redact (batch):      {normalize_s * per:8.2f} us/span")
    print(f"  columns -> Arrow:              {arrow_s * per:8.2f} us/span")
    rest = export_s - normalize_s - arrow_s
    print(f"  Parquet write+fsync+link:      {rest * per:8.2f} us/span")
    print(f"(per-span normalize, for scale:  {per_span_s * per:8.2f} us/span)")
    print(f"ratio export/create = {export_s / create_s:.2f}  (target <= 0.5)")
    print(
        f"time inside the chain's record step / the rest of the export (wall, median of"
        f" {len(shares)} rounds): {statistics.median(shares) * 100:+.1f}%  (target <= +10%)"
    )
    for i, what in ((0, "wall"), (1, "CPU")):
        chained = min(t[i] for t in with_chain)
        bare = min(t[i] for t in without_chain)
        print(
            f"export {what:4s} with / without the chain: {chained * per:7.2f} /"
            f" {bare * per:7.2f} us/span = {(chained / bare - 1) * 100:+.1f}%  (target <= +10%)"
        )


if __name__ == "__main__":
    main()
