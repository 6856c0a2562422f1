"""Retention beside landing (issue 17): how long a pass takes, and what it costs a writer
landing at the same time (the collector's `--retention` thread must never block landing).

    python bench/retention.py [--actions 200000] [--files 20] [--sessions 2000]

Lands ``--actions`` old tool rows (128 days old; the half of the sessions that hold a
call for approval are not terminal and stay) through the real ParquetSpanWriter, each
file with its signed chain record. Then a writer process (the collector lands in worker
processes) lands 50-row batches of a fresh session back to back, first alone for
``--quiet`` seconds, then while one retention pass (``RetentionLoop.run_once``, as
`tooltrail collect --retention 90d` runs it) deletes every old terminal session.
Prints the pass's time and what it deleted, and the writer's per-batch landing latency
(median, p99, max) in both phases, from the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from verify import batch

from tooltrail.collector.retention import RetentionLoop
from tooltrail.collector.verify import verify
from tooltrail.collector.writer import ParquetSpanWriter


def shifted(table: pa.Table, by: dt.timedelta, session: str | None = None) -> pa.Table:
    """``table`` moved in time by ``by`` (and all in ``session`` when given)."""
    for name in ("start_time", "end_time"):
        i = table.schema.get_field_index(name)
        moved = [t + by for t in table[name].to_pylist()]
        table = table.set_column(i, table.schema.field(i), pa.array(moved, table[name].type))
    if session is not None:
        i = table.schema.get_field_index("session_id")
        col = pa.array([session] * table.num_rows, table["session_id"].type)
        table = table.set_column(i, table.schema.field(i), col)
    return table


def latencies(data: Path, stop: Any, out: Any, start: int) -> None:
    """Land batches until ``stop`` is set; put the list of latencies (s) on ``out``."""
    done: list[float] = []
    writer = ParquetSpanWriter(data)
    base = batch(start, 50, 1)
    now = dt.datetime.now(dt.UTC)
    fresh = shifted(base, now - base["start_time"][0].as_py(), session="fresh-writer")
    k = 0
    while not stop.is_set():
        ids = pa.array([f"{start + k * 50 + j:016x}" for j in range(50)], pa.string())
        rows = fresh.set_column(fresh.schema.get_field_index("span_id"), "span_id", ids)
        t0 = time.perf_counter()
        writer.write_arrow(rows)
        done.append(time.perf_counter() - t0)
        k += 1
    out.put(done)


def measured(data: Path, start: int, during: Callable[[], object]) -> list[float]:
    """Latencies of a writer process landing while ``during()`` runs."""
    ctx = mp.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=latencies, args=(data, stop, out, start))
    proc.start()
    try:
        time.sleep(0.5)  # the writer is landing before the measured phase starts
        during()
        stop.set()
        found: list[float] = out.get(timeout=60)
    finally:
        proc.join(timeout=60)
    return found


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"n={len(ms):5d}  median {statistics.median(ms):6.2f} ms  p99 {p99:7.2f} ms"
        f"  max {ms[-1]:7.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--actions", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=2_000)
    ap.add_argument("--quiet", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tooltrail-bench-retention-"))
    os.environ.setdefault("TOOLTRAIL_CONFIG_DIR", str(tmp / "config"))
    os.environ.setdefault("TOOLTRAIL_DUCKDB_FILE", "0")
    try:
        data = tmp / "data"
        writer = ParquetSpanWriter(data)
        per = args.actions // args.files
        for k in range(args.files):
            table = batch(k * per, per, args.sessions)
            writer.write_arrow(shifted(table, dt.timedelta(days=-128)))

        counts: dict[str, float] = {}

        def count(name: str, n: float) -> None:
            counts[name] = counts.get(name, 0) + n

        loop = RetentionLoop(data, "90d", 3600.0, count)
        alone = measured(data, 10**9, lambda: time.sleep(args.quiet))
        timed: dict[str, Any] = {}

        def one_pass() -> None:
            t0 = time.perf_counter()
            timed["report"] = loop.run_once()
            timed["s"] = time.perf_counter() - t0

        beside = measured(data, 2 * 10**9, one_pass)
        report, pass_s = timed["report"], timed["s"]
        assert report is not None and counts.get("failures", 0) == 0
        checked = verify(data)
        assert checked.ok, checked.breaks[:3]
        print(
            f"retention pass: {pass_s:.2f} s, {len(report.sessions)} sessions,"
            f" {report.rows} rows, files removed {report.files_removed},"
            f" rewritten {report.files_rewritten}; verify ok ({checked.tombstones} tombstone)"
        )
        print(f"writer alone:            {summary(alone)}")
        print(f"writer beside retention: {summary(beside)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
