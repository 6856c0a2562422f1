"""Dashboard page renders over a large compacted data directory, measured in one run.

    python bench/dashboard.py [--actions 1000000] [--sessions 10000] [--days 10]

Data: bench/queries.py's generator (vectorised numpy / pyarrow; one LLM and one agent span
per session) written as `tooltrail compact` leaves it (one sorted file per day), then
`analytics.build_session_index` (what compact runs), plus 20 pending approval requests in
a real control store and a policy file naming the generated rules.

Measured, each through `streamlit.testing.v1.AppTest` running the packaged app:

- first render of every page: all Streamlit caches cleared just before (a new shared
  connection, every query cold), the page rendered by `switch_page` + `run`;
- the same page again with warm caches (what a click or the auto-refresh costs while no
  file changed);
- a session-detail render (cold) for a typical session and for the largest one;
- where the time goes: each data call a page makes, timed cold on its own, and the
  remainder (Streamlit script + serialising tables and charts).

Target (issue 6): every first render <= 2 s. The data lives in a temporary directory
removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import streamlit as st
from queries import Generator, generate  # bench/queries.py: the same synthetic data
from streamlit.testing.v1 import AppTest

from tooltrail import analytics
from tooltrail.control import ApprovalRequest, ControlStore
from tooltrail.dashboard import ENTRY
from tooltrail.dashboard.data import Data, reader

TARGET_S = 2.0
PENDING = 20
POLICY = """\
version: 1
default: ALLOW
rules:
  - id: no-reset
    when: {tool: git_reset}
    decision: DENY
  - id: checkout-default-branch
    when: {tool: git_checkout, args: {branch_name: main}}
    decision: REWRITE
    rewrite: {set: {branch_name: "agent/{session_id}"}}
  - id: commit-to-default-branch
    when: {tool: git_commit, branch: [main]}
    decision: REQUIRE_APPROVAL
  - id: never-fires
    when: {tool: git_push}
    decision: DENY
"""
PAGES = {
    "overview": "page_overview.py",
    "sessions": "page_sessions.py",
    "approvals": "page_approvals.py",
    "blast radius": "page_blast_radius.py",
    "policy": "page_policy.py",
    "sql": "page_sql.py",
}


def _clear() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _render(at: AppTest, page: str, session: str | None = None) -> float:
    at.query_params.clear()
    if session is not None:
        at.query_params["session"] = session
    at.switch_page(page)
    seconds, _ = _timed(lambda: at.run(timeout=300))
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception[0].value}")
    return seconds


def _file_requests(root: Path, session_ids: list[str]) -> None:
    now = time.time()
    with ControlStore(root) as store:
        for i, session_id in enumerate(session_ids[:PENDING]):
            store.file_request(
                ApprovalRequest(
                    tool_name="git_commit",
                    arguments={"repo_path": f"/srv/repos/repo-{i:02d}", "message": f"fix {i}"},
                    timeout_s=86_400,
                    session_id=session_id,
                    agent_name="agent-00",
                    policy_rule="commit-to-default-branch",
                    blast_radius="Medium",
                ),
                now=now - 60 * (PENDING - i),
            )


def _breakdown(root: Path, session: str) -> dict[str, list[tuple[str, float]]]:
    """Each data call of each page, cold (fresh connection and caches for the first one
    of a page, as in the page render)."""

    def cold(calls: list[tuple[str, Callable[[Data], Any]]]) -> list[tuple[str, float]]:
        _clear()
        data = Data.current(root)
        opened = _timed(lambda: reader(str(root))(lambda con: None))[0]
        out = [("open connection + views", opened)]
        for name, call in calls:
            out.append((name, _timed(lambda call=call: call(data))[0]))
        return out

    since_30 = "30d"
    return {
        "overview": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("kpis (24h)", lambda d: d.kpis("24h")),
                ("active sessions", lambda d: d.active_sessions()),
                (
                    "decisions over time",
                    lambda d: d.decisions_over_time("24h", dt.timedelta(hours=1)),
                ),
                ("blast by day (mix)", lambda d: d.blast_stats("day", "24h")),
            ]
        ),
        "sessions": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("filter options", lambda d: d.filter_options()),
                ("count sessions", lambda d: d.count_sessions({})),
                ("sessions page (50)", lambda d: d.sessions({}, limit=50, offset=0)),
            ]
        ),
        "session detail": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("session header", lambda d: d.session(session)),
                ("session actions", lambda d: d.session_actions(session)),
                ("session links (tree)", lambda d: d.session_links()),
                ("LLM usage", lambda d: d.llm_usage(session)),
                ("control history", lambda d: d.control_history(session)),
            ]
        ),
        "approvals": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                (
                    "history (30d, newest 1,001)",
                    lambda d: d.approvals("all", since=since_30, limit=1001),
                ),
                ("stats by rule", lambda d: d.approval_stats("rule", since_30)),
                ("stats by approver", lambda d: d.approval_stats("approver", since_30)),
            ]
        ),
        "blast radius": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("blast by agent (30d)", lambda d: d.blast_stats("agent", since_30)),
                ("critical actions", lambda d: d.critical_actions(since_30, 200)),
            ]
        ),
        "policy": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("policy versions", lambda d: d.policy_versions()),
                ("rule hits", lambda d: d.rule_hits(None)),
            ]
        ),
        "sql": cold(
            [
                ("pending approvals", lambda d: d.pending()),
                ("view columns", lambda d: d.view_columns()),
            ]
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actions", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="warm renders per page (median)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tooltrail-dash-bench-"))
    root = tmp / "data"
    try:
        gen_s, (gen, rows) = _timed(lambda: _generate(root, args))
        index_s, _ = _timed(lambda: analytics.build_session_index(root))
        counts = np.bincount(gen.owner, minlength=args.sessions)
        median = int(np.median(counts))
        typical_i = int(np.flatnonzero(counts == median)[0])
        largest_i = int(np.argmax(counts))
        typical = gen.session_ids[typical_i].as_py()
        largest = gen.session_ids[largest_i].as_py()
        _file_requests(root, [gen.session_ids[i].as_py() for i in range(PENDING)])
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY, encoding="utf-8")
        size_mb = sum(p.stat().st_size for p in root.rglob("*.parquet")) / 1e6
        print(
            f"data: {args.actions:,} actions in {args.sessions:,} sessions, {rows:,} spans, "
            f"{size_mb:.0f} MB, generated in {gen_s:.1f} s; session index {index_s:.2f} s; "
            f"{PENDING} pending approvals"
        )
        os.environ["TOOLTRAIL_DATA"] = str(root)
        os.environ["TOOLTRAIL_POLICY"] = str(policy)

        # Imports and Streamlit's own start-up are paid once per server, not per page.
        _clear()
        warmup_s, at = _timed(lambda: AppTest.from_file(str(ENTRY), default_timeout=300).run())
        print(f"first script run of a fresh process (imports + Overview, cold): {warmup_s:.2f} s")
        print()
        print(f"{'page':<28}{'first render':>14}{'warm rerun':>12}   target <= {TARGET_S:.0f} s")
        results: dict[str, float] = {}
        for name, page in PAGES.items():
            _clear()
            first = _render(at, page)
            warm = statistics.median(_render(at, page) for _ in range(args.repeats))
            results[name] = first
            print(f"{name:<28}{first:>12.2f} s{warm:>10.2f} s   {_verdict(first)}")
        for label, session in (
            (f"session detail ({counts[typical_i]} actions)", typical),
            (f"session detail ({counts[largest_i]} actions)", largest),
        ):
            _clear()
            first = _render(at, "page_session.py", session)
            warm = statistics.median(
                _render(at, "page_session.py", session) for _ in range(args.repeats)
            )
            results[label] = first
            print(f"{label:<28}{first:>12.2f} s{warm:>10.2f} s   {_verdict(first)}")

        print()
        print("where the time goes (each data call cold, in page order):")
        for name, calls in _breakdown(root, typical).items():
            total = sum(s for _, s in calls)
            parts = ", ".join(f"{call} {s * 1000:.0f} ms" for call, s in calls)
            print(f"  {name:<16} {total * 1000:6.0f} ms: {parts}")
        worst = max(results, key=results.__getitem__)
        print()
        within = "all within" if results[worst] <= TARGET_S else "MISSES"
        print(
            f"slowest first render: {worst} {results[worst]:.2f} s -> "
            f"{within} the {TARGET_S:.0f} s target"
        )
    finally:
        _clear()
        shutil.rmtree(tmp, ignore_errors=True)


def _generate(root: Path, args: argparse.Namespace) -> tuple[Generator, int]:
    gen = Generator(args.actions, args.sessions, args.days)
    rows = generate(root, gen)
    return gen, rows


def _verdict(seconds: float) -> str:
    return "ok" if seconds <= TARGET_S else "SLOW"


if __name__ == "__main__":
    main()
