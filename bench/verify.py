"""`tooltrail verify` on one million landed actions (issue 17: target <= 10 s here).

    python bench/verify.py [--actions 1000000] [--files 20] [--sessions 10000]

Lands ``--actions`` tool rows (realistic columns: arguments JSON, decisions, repos) through
the real ParquetSpanWriter in ``--files`` files, each with its signed record in the ledger,
then times `verify` (every file's SHA-256 recomputed, every record's signature checked),
`verify --since` a day after landing (every file listed, none hashed) and `verify --deep`
(every file's rows recomputed). The landing time, which includes the chain, is printed
too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tooltrail.collector.verify import verify
from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.schema import SPAN_SCHEMA

DECISIONS = ("ALLOW", "ALLOW", "ALLOW", "DENY", "REWRITE", "REQUIRE_APPROVAL")


def batch(start: int, n: int, sessions: int) -> pa.Table:
    base = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    ids = range(start, start + n)
    values = {
        "trace_id": [f"{i // 50:032x}" for i in ids],
        "span_id": [f"{i:016x}" for i in ids],
        "name": ["execute_tool git_commit"] * n,
        "kind": ["INTERNAL"] * n,
        "span_type": ["tool"] * n,
        "start_time": [base + dt.timedelta(milliseconds=i) for i in ids],
        "end_time": [base + dt.timedelta(milliseconds=i + 7) for i in ids],
        "duration_ms": [7.0] * n,
        "status_code": ["OK"] * n,
        "session_id": [f"session-{i % sessions:06d}" for i in ids],
        "sequence": list(ids),
        "agent_name": ["release-bot"] * n,
        "service_name": ["bench"] * n,
        "tool_name": ["git_commit"] * n,
        "mcp_server": ["mcp-git"] * n,
        "arguments": [
            json.dumps({"repo_path": "/srv/repos/payments", "message": f"fix: retry {i}"})
            for i in ids
        ],
        "decision": [DECISIONS[i % len(DECISIONS)] for i in ids],
        "policy_rule": ["pass"] * n,
        "enforced": [True] * n,
        "blast_radius": ["Medium"] * n,
        "target_repo": ["/srv/repos/payments"] * n,
        "governed_by": ["instrumentation"] * n,
        "source": ["exporter"] * n,
        "verified": [True] * n,
        "resource": ['{"service.name":"bench"}'] * n,
    }
    arrays = [
        pa.array(values[f.name], f.type) if f.name in values else pa.nulls(n, f.type)
        for f in SPAN_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--actions", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=10_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tooltrail-bench-verify-"))
    os.environ.setdefault("TOOLTRAIL_CONFIG_DIR", str(tmp / "config"))
    try:
        data = tmp / "data"
        writer = ParquetSpanWriter(data)
        per = args.actions // args.files
        land_s = 0.0
        for k in range(args.files):
            table = batch(k * per, per, args.sessions)
            t0 = time.perf_counter()
            writer.write_arrow(table)
            land_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        report = verify(data)
        verify_s = time.perf_counter() - t0
        assert report.ok, report.breaks[:3]
        # --since the day after landing: every file listed, none hashed (all recorded
        # before that day), so this is the floor a --since run pays.
        tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        t0 = time.perf_counter()
        since = verify(data, since=tomorrow)
        since_s = time.perf_counter() - t0
        assert since.ok and since.skipped == args.files, since.breaks[:3]
        t0 = time.perf_counter()
        deep = verify(data, deep=True)
        deep_s = time.perf_counter() - t0
        assert deep.ok, deep.breaks[:3]
        print(f"actions={report.rows} files={report.files} records={report.records}")
        print(f"landing (Parquet + chain): {land_s:6.2f} s")
        print(f"verify:                    {verify_s:6.2f} s  (target <= 10 s)")
        print(f"verify --since tomorrow:   {since_s:6.2f} s  (every file listed, none hashed)")
        print(f"verify --deep:             {deep_s:6.2f} s  (every file's rows recomputed)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
