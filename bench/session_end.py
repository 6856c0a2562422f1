"""What session ends, tags and the activity trace cost the `sessions` view, in one run.

    python bench/session_end.py [--actions 2000000] [--sessions 20000] [--days 3] [--old REV]

Generates bench/queries.py's data (N actions in M sessions, one agent root span and one
LLM span per session, one large file per day), then on one connection times the latest
50 sessions computed from all spans (no session index: the aggregation every new column
adds to) with the views of this tree and with the views of ``--old`` (default: the
commit before session ends, read with ``git show``), interleaved round by round so the
shared machine's load falls on both alike. Also times one session's activity trace
(``analytics.session_trace``). Reports medians and the ratio new / old.
The data lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from queries import Generator, generate

from tooltrail import analytics
from tooltrail.analytics.index import NO_COPIES, unique_spans
from tooltrail.analytics.sqlfiles import load

OLD_REV = "5af80fc"
LATEST = "SELECT * FROM sessions ORDER BY last_activity_at DESC NULLS LAST LIMIT 50"
REPO = Path(__file__).resolve().parent.parent


def _old(rev: str, name: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:analytics/sql/{name}.sql"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _views(con: object, macros: str, partials: str, sessions: str) -> None:
    """(Re)define the session views from these texts, over all spans (no index)."""
    body = partials.replace("{{unique}}", unique_spans("spans", NO_COPIES))
    con.execute(macros)  # type: ignore[attr-defined]
    con.execute(f"CREATE OR REPLACE VIEW _session_totals AS {body}")  # type: ignore[attr-defined]
    con.execute(sessions)  # type: ignore[attr-defined]


def _time(con: object) -> float:
    start = time.perf_counter()
    con.sql(LATEST).fetchall()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actions", type=int, default=2_000_000)
    ap.add_argument("--sessions", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--old", default=OLD_REV, help="the revision whose views to compare with")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tt-bench-end-"))
    try:
        root = tmp / "data"
        gen = Generator(args.actions, args.sessions, args.days)
        spans = generate(root, gen)
        print(f"data: {args.actions:,} actions in {args.sessions:,} sessions, {spans:,} spans")
        new = (load("macros"), load("session_partials"), load("sessions_view"))
        old = tuple(_old(args.old, n) for n in ("macros", "session_partials", "sessions_view"))
        con = analytics.connect(root, read_only=False)
        try:
            times: dict[str, list[float]] = {"new": [], "old": []}
            for _ in range(args.rounds):
                for label, texts in (("old", old), ("new", new)):
                    _views(con, *texts)
                    _time(con)  # warm: the plan and the file metadata
                    times[label].append(_time(con))
            _views(con, *new)
            session_id = str(con.sql(LATEST).fetchall()[0][0])  # type: ignore[attr-defined]
            trace = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                analytics.session_trace(con, session_id)
                trace.append((time.perf_counter() - start) * 1000)
        finally:
            con.close()
        old_ms, new_ms = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"latest 50 sessions, no index, views of {args.old}: {old_ms:8.1f} ms median")
        print(f"latest 50 sessions, no index, this tree's views:  {new_ms:8.1f} ms median")
        print(f"  -> new / old = {new_ms / old_ms:.2f}x")
        trace_ms = statistics.median(trace)
        print(f"one session's activity trace:                  {trace_ms:8.1f} ms median")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
