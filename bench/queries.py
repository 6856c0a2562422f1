"""Dashboard queries over a compacted data directory, measured in one run.

    python bench/queries.py [--actions 10000000] [--sessions 100000] [--days 10]

Generates N synthetic actions (tool spans) in M sessions, plus one agent root span and one
LLM span per session, vectorised with numpy / pyarrow, and writes them as `tooltrail
compact` leaves them: one large file per day partition, sorted by session_id and
start_time, zstd, session_id bloom filter (collector.writer.write_table_atomic). Then:

- naive: a plain full GROUP BY over the raw files (fewer aggregates than the view), and
  the `sessions` view without the session index (the same aggregation, complete columns),
  each ordered by last activity, top 50;
- index: build_session_index (what `tooltrail compact` runs after compacting), then the
  dashboard's "latest 50 sessions with aggregates" = sessions(con, limit=50), on a
  connection that is reused (as the dashboard does) and on a fresh one, and again after
  new small files landed (index + delta merge);
- one session: session_actions(con, id) for random sessions (median, p95).

Targets (issue 2): latest-sessions <= 0.5x naive; one session <= 50 ms median.
The data lives in a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed

from tooltrail import analytics
from tooltrail.collector.writer import ParquetSpanWriter, write_table_atomic
from tooltrail.schema import BLAST_RADII, DECISIONS, SPAN_SCHEMA
from tooltrail.semconv import TRIGGERS

TOOLS = (
    "git_status",
    "git_diff",
    "git_log",
    "git_add",
    "git_commit",
    "git_checkout",
    "git_create_branch",
    "git_reset",
)
TOOL_WEIGHTS = (0.25, 0.2, 0.15, 0.12, 0.12, 0.08, 0.05, 0.03)
DECISION_WEIGHTS = (0.85, 0.05, 0.05, 0.05)  # ALLOW, DENY, REWRITE, REQUIRE_APPROVAL
RULES = ("pass", "no-reset", "checkout-default-branch", "commit-to-default-branch")
RADIUS_WEIGHTS = (0.60, 0.25, 0.12, 0.03)  # Low .. Critical
APPROVAL_OUTCOMES = ("approved", "denied", "expired")
N_AGENTS, N_REPOS, N_BRANCHES, N_APPROVERS = 20, 50, 5, 5
ACTION_GAP_S = 3.0
NAIVE_SQL = """
SELECT
    session_id,
    min(agent_name) AS agent_name,
    count(*) FILTER (WHERE span_type = 'tool') AS actions,
    count(*) FILTER (WHERE decision = 'ALLOW') AS allows,
    count(*) FILTER (WHERE decision = 'DENY') AS denies,
    count(*) FILTER (WHERE decision = 'REWRITE') AS rewrites,
    count(*) FILTER (WHERE decision = 'REQUIRE_APPROVAL') AS approvals,
    max(CASE blast_radius WHEN 'Low' THEN 0 WHEN 'Medium' THEN 1 WHEN 'High' THEN 2
        WHEN 'Critical' THEN 3 END) AS max_blast_rank,
    list(DISTINCT target_repo) AS repos,
    min(start_time) AS started_at,
    max(start_time) AS last_action_at
FROM read_parquet(?, hive_partitioning = true)
GROUP BY session_id
ORDER BY last_action_at DESC
LIMIT 50
"""


def _hex_ids(rng: np.random.Generator, n: int, prefix: str) -> pa.Array:
    # Random (not time-ordered) ids, so sorting by session_id scatters sessions over time.
    values = rng.integers(0, 2**62, size=n, dtype=np.int64)
    return pa.array(np.char.add(prefix, np.char.mod("%016x", values)))


def _take(choices: list[Any], idx: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.array(choices, type=type_).take(pa.array(idx))


def _pick(rng: np.random.Generator, n: int, weights: tuple[float, ...]) -> np.ndarray:
    return rng.choice(len(weights), size=n, p=np.array(weights) / sum(weights))


class Generator:
    """Synthetic sessions; actions are generated for one day partition at a time."""

    def __init__(self, n_actions: int, n_sessions: int, days: int, seed: int = 7) -> None:
        rng = self.rng = np.random.default_rng(seed)
        m = n_sessions
        self.session_ids = _hex_ids(rng, m, "sess-")
        self.trace_ids = _hex_ids(rng, m, "0000000000000000")
        self.root_span_ids = _hex_ids(rng, m, "")
        self.agent = rng.integers(0, N_AGENTS, m)
        self.trigger = rng.integers(0, len(TRIGGERS), m)
        self.repo = rng.integers(0, N_REPOS, m)
        has_parent = rng.random(m) < 0.1
        parent_idx = rng.integers(0, m, m)
        self.parent = pc.if_else(pa.array(has_parent), self.session_ids.take(parent_idx), None)
        # every session has one action, the rest are spread at random
        owner = np.concatenate([np.arange(m), rng.integers(0, m, n_actions - m)])
        owner.sort(kind="stable")
        counts = np.bincount(owner, minlength=m)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.owner = owner
        self.sequence = np.arange(n_actions) - np.repeat(first, counts)
        end = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)
        self.end_us = int(end.timestamp() * 1e6)
        window_us = days * 86_400_000_000
        self.session_start_us = self.end_us - rng.integers(0, window_us, m)
        jitter = rng.integers(0, 2_000_000, n_actions)
        self.start_us = (
            self.session_start_us[owner]
            + (self.sequence * ACTION_GAP_S * 1e6).astype(np.int64)
            + jitter
        )
        self.duration_ms = rng.gamma(2.0, 40.0, n_actions)
        self.last_us = np.zeros(m, dtype=np.int64)
        np.maximum.at(self.last_us, owner, self.start_us)

    def days(self) -> list[int]:
        return sorted(set((self.start_us // 86_400_000_000).tolist()))

    def actions(self, day: int) -> pa.Table:
        rng = self.rng
        rows = np.nonzero(self.start_us // 86_400_000_000 == day)[0]
        n = len(rows)
        s = self.owner[rows]
        sid = pa.array(s)
        start = self.start_us[rows]
        dur = self.duration_ms[rows]
        tool = _pick(rng, n, TOOL_WEIGHTS)
        decision = _pick(rng, n, DECISION_WEIGHTS)
        radius = _pick(rng, n, RADIUS_WEIGHTS)
        repo = (self.repo[s] + rng.integers(0, 3, n)) % N_REPOS
        branch = rng.integers(0, N_BRANCHES, n)
        error = rng.random(n) < 0.01
        held = decision == 3
        outcome = _pick(rng, n, (0.8, 0.15, 0.05))
        combos = [
            (t, r) for t in TOOLS for r in range(N_REPOS)
        ]  # arguments / summaries per (tool, repo)
        combo = tool * N_REPOS + repo
        ts = pa.timestamp("us", tz="UTC")
        span_ids = pc.utf8_lpad(pc.cast(pa.array(rows), pa.string()), 16, "0")
        approval_status = _take(list(APPROVAL_OUTCOMES), outcome, pa.string())
        decided_by = _take(
            [f"approver-{i}" for i in range(N_APPROVERS)],
            rng.integers(0, N_APPROVERS, n),
            pa.string(),
        )
        held_mask = pa.array(held)
        cols: dict[str, Any] = {
            "trace_id": self.trace_ids.take(sid),
            "span_id": span_ids,
            "parent_span_id": self.root_span_ids.take(sid),
            "name": _take([f"execute_tool {t}" for t in TOOLS], tool, pa.string()),
            "kind": pa.repeat("INTERNAL", n),
            "span_type": pa.repeat("tool", n),
            "start_time": pa.array(start, ts),
            "end_time": pa.array(start + (dur * 1000).astype(np.int64), ts),
            "duration_ms": pa.array(dur),
            "status_code": pc.if_else(pa.array(error), "ERROR", "OK"),
            "error_type": pc.if_else(pa.array(error), "tool_error", None),
            "session_id": self.session_ids.take(sid),
            "parent_session_id": self.parent.take(sid),
            "sequence": pa.array(self.sequence[rows]),
            "agent_name": _take(
                [f"agent-{i:02d}" for i in range(N_AGENTS)], self.agent[s], pa.string()
            ),
            "service_name": pa.repeat("bench-agent", n),
            "trigger": _take(list(TRIGGERS), self.trigger[s], pa.string()),
            "tool_name": _take(list(TOOLS), tool, pa.string()),
            "mcp_server": pa.repeat("git", n),
            "arguments": _take(
                [
                    json.dumps({"repo_path": f"/srv/repos/repo-{r:02d}", "tool": t})
                    for t, r in combos
                ],
                combo,
                pa.string(),
            ),
            "arguments_rewritten": pc.if_else(
                pa.array(decision == 2), '{"branch_name": "agent/rewritten"}', None
            ),
            "action_summary": _take(
                [f"{t} in repo-{r:02d}" for t, r in combos], combo, pa.string()
            ),
            "decision": _take(list(DECISIONS), decision, pa.string()),
            "policy_rule": _take(list(RULES), decision, pa.string()),
            "policy_matched": _take(
                [[r] if r != "pass" else [] for r in RULES], decision, pa.list_(pa.string())
            ),
            "policy_version": pa.repeat("bench-v1", n),
            "enforced": pa.repeat(True, n),
            "blast_radius": _take(list(BLAST_RADII), radius, pa.string()),
            "target_repo": _take(
                [f"/srv/repos/repo-{r:02d}" for r in range(N_REPOS)], repo, pa.string()
            ),
            "target_branch": _take([f"branch-{b}" for b in range(N_BRANCHES)], branch, pa.string()),
            "approval_id": pc.if_else(
                held_mask, pc.binary_join_element_wise("apr-", span_ids, ""), None
            ),
            "approval_status": pc.if_else(held_mask, approval_status, None),
            "approval_decided_by": pc.if_else(
                pc.and_(held_mask, pa.array(outcome != 2)), decided_by, None
            ),
            "approval_wait_ms": pc.if_else(held_mask, pa.array(rng.gamma(2.0, 30_000.0, n)), None),
            "redactions": pa.repeat(pa.scalar(0, pa.int32()), n),
            "attributes": pa.repeat("{}", n),
            "resource": pa.repeat('{"service.name": "bench-agent"}', n),
        }
        return _table(cols, n)

    def other_spans(self, day: int) -> pa.Table:
        """The agent root span and one LLM span of each session starting that day."""
        s = np.nonzero(self.session_start_us // 86_400_000_000 == day)[0]
        n = len(s)
        sid = pa.array(s)
        ts = pa.timestamp("us", tz="UTC")
        start = self.session_start_us[s]
        agent_names = [f"agent-{i:02d}" for i in range(N_AGENTS)]
        common = {
            "trace_id": self.trace_ids.take(sid),
            "kind": pa.repeat("INTERNAL", n),
            "start_time": pa.array(start, ts),
            "status_code": pa.repeat("OK", n),
            "session_id": self.session_ids.take(sid),
            "parent_session_id": self.parent.take(sid),
            "agent_name": _take(agent_names, self.agent[s], pa.string()),
            "service_name": pa.repeat("bench-agent", n),
            "trigger": _take(list(TRIGGERS), self.trigger[s], pa.string()),
        }
        root = _table(
            common
            | {
                "span_id": self.root_span_ids.take(sid),
                "name": pa.repeat("invoke_agent", n),
                "span_type": pa.repeat("agent", n),
                "end_time": pa.array(self.last_us[s] + 500_000, ts),
            },
            n,
        )
        llm = _table(
            common
            | {
                "span_id": pc.utf8_lpad(pc.cast(pa.array(s), pa.string()), 15, "0"),
                "parent_span_id": self.root_span_ids.take(sid),
                "name": pa.repeat("chat", n),
                "span_type": pa.repeat("llm", n),
                "end_time": pa.array(start + 800_000, ts),
                "input_tokens": pa.array(self.rng.integers(100, 5000, n)),
                "output_tokens": pa.array(self.rng.integers(10, 800, n)),
                "model": pa.repeat("bench-model", n),
            },
            n,
        )
        return pa.concat_tables([root, llm])


def _table(cols: dict[str, Any], n: int) -> pa.Table:
    arrays = [
        cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in SPAN_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def generate(root: Path, gen: Generator) -> int:
    rows = 0
    for day in gen.days():
        table = pa.concat_tables([gen.actions(day), gen.other_spans(day)])
        name = dt.datetime.fromtimestamp(day * 86_400, dt.UTC).strftime("%Y-%m-%d")
        write_table_atomic(table, root / "spans" / f"date={name}" / "compact-bench-0000.parquet")
        rows += table.num_rows
    return rows


def late_batch(root: Path, gen: Generator, n: int = 500) -> None:
    """A few small exporter files landed after compaction (live sessions)."""
    writer = ParquetSpanWriter(root)
    latest = np.argsort(gen.last_us)[-20:]
    now = dt.datetime.now(dt.UTC)
    for batch in range(5):
        rows = []
        for i in range(n // 5):
            s = int(latest[i % len(latest)])
            rows.append(
                {
                    "trace_id": gen.trace_ids[s].as_py(),
                    "span_id": f"late-{batch}-{i}",
                    "span_type": "tool",
                    "start_time": now,
                    "end_time": now,
                    "session_id": gen.session_ids[s].as_py(),
                    "tool_name": "git_status",
                    "decision": "ALLOW",
                    "blast_radius": "Low",
                    "status_code": "OK",
                }
            )
        writer.write(rows)


def median_ms(repeats: int, fn: Callable[[], object]) -> tuple[float, float]:
    samples = sorted(timed(fn) * 1000 for _ in range(repeats))
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actions", type=int, default=10_000_000)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lookups", type=int, default=30, help="one-session queries to time")
    args = ap.parse_args()
    if args.sessions > args.actions:
        ap.error("--sessions must not exceed --actions")

    tmp = Path(tempfile.mkdtemp(prefix="tooltrail-bench-"))
    try:
        t0 = time.perf_counter()
        gen = Generator(args.actions, args.sessions, args.days)
        rows = generate(tmp, gen)
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in tmp.rglob("*.parquet")) / 1e6
        print(
            f"data: {args.actions:,} actions in {args.sessions:,} sessions, {rows:,} spans, "
            f"{len(gen.days())} partitions, {size_mb:.0f} MB; generated in {gen_s:.1f} s"
        )

        glob = str(tmp / "spans" / "date=*" / "*.parquet")
        con = analytics.connect(tmp)
        # Warm the OS cache and DuckDB's metadata cache alike for every contender.
        con.sql(NAIVE_SQL, params=[glob]).to_arrow_table()
        naive_plain, _ = median_ms(
            args.repeats, lambda: con.sql(NAIVE_SQL, params=[glob]).to_arrow_table()
        )
        naive_view, _ = median_ms(args.repeats, lambda: analytics.sessions(con, limit=50))
        naive = min(naive_plain, naive_view)
        print(
            f"naive full GROUP BY over raw files, top 50:  {naive_plain:8.1f} ms (plain SQL)"
            f"  {naive_view:8.1f} ms (sessions view, no index)"
        )

        index_s = timed(lambda: analytics.build_session_index(tmp))
        print(f"build_session_index (at compaction):          {index_s * 1000:8.1f} ms")
        latest, latest95 = median_ms(args.repeats * 4, lambda: analytics.sessions(con, limit=50))
        fresh, _ = median_ms(args.repeats, lambda: analytics.sessions(tmp, limit=50))
        late_batch(tmp, gen)
        analytics.sessions(con, limit=50)  # first call after new files re-plans the views
        delta, _ = median_ms(args.repeats * 4, lambda: analytics.sessions(con, limit=50))
        print(
            f"latest 50 sessions (index), reused conn:      {latest:8.1f} ms median "
            f"(p95 {latest95:.1f})  -> {latest / naive:.3f}x naive (target <= 0.5x)"
        )
        print(
            f"latest 50 sessions (index), fresh conn:       {fresh:8.1f} ms median "
            f"-> {fresh / naive:.3f}x naive"
        )
        print(
            f"latest 50 sessions (index + 5 new files):     {delta:8.1f} ms median "
            f"-> {delta / naive:.3f}x naive"
        )

        picks = gen.rng.choice(args.sessions, size=args.lookups, replace=False)
        ids = [gen.session_ids[int(i)].as_py() for i in picks]
        it = iter(ids * (args.repeats + 1))
        analytics.session_actions(con, ids[0])
        one, one95 = median_ms(len(ids), lambda: analytics.session_actions(con, next(it)))
        header, _ = median_ms(len(ids), lambda: analytics.session(con, next(it)))
        print(
            f"one session's actions:                        {one:8.1f} ms median "
            f"(p95 {one95:.1f}, {len(ids)} sessions; target <= 50 ms)"
        )
        print(f"one session's header:                         {header:8.1f} ms median")
        con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
