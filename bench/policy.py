"""Policy engine benchmarks, measured in one run (issue 3).

1. ``Policy.decide`` with a 100-rule policy over realistic calls, against creating one bare
   OpenTelemetry SDK span (TracerProvider without processors, ``start_as_current_span``
   with a few attributes) in the same process. Target: decide <= 0.25 x span.
2. ``policy replay`` over N landed actions (default 1,000,000) written as real Parquet
   under a temporary data directory. Target: <= 10 s. Two policies: one whose conditions
   read low-cardinality arguments (the common case), and examples/policy-git.yaml, whose
   regex on commit messages makes every commit a distinct input (the worst case).

Usage: .venv/bin/python bench/policy.py [--rows 1000000] [--skip-replay]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from opentelemetry.sdk.trace import TracerProvider

from tooltrail.collector.writer import write_table_atomic
from tooltrail.config import SPANS_DIR
from tooltrail.policy import Policy, ToolCall, load_policy
from tooltrail.policy.replay import replay
from tooltrail.schema import SPAN_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
DECIDE_TARGET_RATIO = 0.25
REPLAY_TARGET_S = 10.0

GIT_TOOLS = [
    "git_status", "git_diff", "git_diff_staged", "git_log", "git_show", "git_branch",
    "git_commit", "git_add", "git_checkout", "git_create_branch", "git_reset",
]  # fmt: skip
GITHUB_TOOLS = [
    "get_file_contents", "list_commits", "search_code", "push_files", "create_or_update_file",
    "delete_file", "create_branch", "create_pull_request", "merge_pull_request",
    "create_repository", "delete_branch", "create_issue", "add_issue_comment",
]  # fmt: skip


def hundred_rule_policy() -> Policy:
    """100 rules spread over ~24 tools the way a real policy grows: exact tool rules with
    argument conditions, glob rules, agent and branch conditions, all four decisions."""
    rules: list[dict[str, Any]] = []
    decisions = ["DENY", "REQUIRE_APPROVAL", "ALLOW", "REWRITE"]
    tools = GIT_TOOLS + GITHUB_TOOLS
    for i in range(100):
        tool = tools[i % len(tools)]
        decision = decisions[i % 4]
        when: dict[str, Any] = {"tool": tool}
        kind = i % 6
        if kind == 0:
            when["branch"] = ["main", "master", f"release/{i}*"]
        elif kind == 1:
            when["args"] = {"message": {"regex": f"(?i)secret-{i}|token_[0-9]{{{i % 5 + 3}}}"}}
        elif kind == 2:
            when["agent"] = [f"agent-{i % 7}*", "ci-*"]
        elif kind == 3:
            when["args"] = {"max_count": {"gt": 100 + i}}
        elif kind == 4:
            when = {"tool": "git_*" if i % 2 else "*_pull_request", "repo": f"*/repo{i % 10}"}
        else:
            when["args"] = {"files": [f"*.{ext}{i}" for ext in ("pem", "key", "env")]}
        rule: dict[str, Any] = {"id": f"rule-{i:03d}", "when": when, "decision": decision}
        if decision == "REWRITE":
            rule["rewrite"] = {"set": {"branch_name": "agent/{session_id}"}}
        rules.append(rule)
    return load_policy(
        {
            "version": 1,
            "targets": [
                {"tools": ["git_*"], "repo": "{repo_path}", "branch": "{branch_name|target}"},
                {"repo": "{owner}/{repo}", "branch": "{branch|base}", "path": "{path}"},
            ],
            "blast_radius": [
                {"tools": ["git_reset", "delete_*"], "radius": "Critical"},
                {"tools": ["git_commit", "push_files"], "branch": ["main"], "radius": "High"},
                {"tools": ["git_*"], "radius": "Medium"},
                {"destructiveHint": True, "radius": "High"},
            ],
            "rules": rules,
        }
    )


def realistic_calls() -> list[ToolCall]:
    calls = []
    for i in range(64):
        repo = f"/src/repo{i % 10}"
        tool = (GIT_TOOLS + GITHUB_TOOLS)[i % 24]
        args: dict[str, Any]
        if tool.startswith("git_"):
            args = {"repo_path": repo}
            if tool == "git_commit":
                args["message"] = f"fix: handle edge case {i} in the parser"
            elif tool in ("git_checkout", "git_create_branch"):
                args["branch_name"] = ["main", "dev", f"feature/{i}"][i % 3]
            elif tool == "git_log":
                args["max_count"] = [10, 50, 500][i % 3]
            elif tool == "git_add":
                args["files"] = ["src/app.py", f"tests/test_{i}.py"]
        else:
            args = {"owner": "acme", "repo": f"repo{i % 10}", "branch": ["main", "dev"][i % 2]}
            if tool == "push_files":
                args["files"] = [{"path": "a.py", "content": "print(1)"}]
                args["message"] = "update"
        calls.append(
            ToolCall(tool, args, agent=f"agent-{i % 9}", session_id=f"s-{i % 4}", server="git")
        )
    return calls


def per_op_seconds(fn: Callable[[], None], ops_per_call: int, repeats: int = 7) -> float:
    """Median seconds per operation over ``repeats`` timed runs (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / ops_per_call)
    return statistics.median(samples)


def bench_decide() -> None:
    policy = hundred_rule_policy()
    calls = realistic_calls()
    rounds = 300
    n_decide = rounds * len(calls)

    def run_decide() -> None:
        decide = policy.decide
        for _ in range(rounds):
            for call in calls:
                decide(call)

    provider = TracerProvider()  # no span processor: the bare SDK cost of a span
    tracer = provider.get_tracer("bench")
    n_spans = 20_000

    def run_spans() -> None:
        for i in range(n_spans):
            with tracer.start_as_current_span(
                "execute_tool git_commit",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "git_commit",
                    "session.id": "s-1",
                    "gen_ai.tool.call.id": str(i),
                },
            ):
                pass

    # Alternate the two so both see the same machine load (2 shared cores); the fastest
    # round of each is the least disturbed one.
    decide_runs, span_runs = [], []
    for _ in range(5):
        decide_runs.append(per_op_seconds(run_decide, n_decide, 1))
        span_runs.append(per_op_seconds(run_spans, n_spans, 1))
    decide_s, span_s = min(decide_runs), min(span_runs)
    ratio = decide_s / span_s
    verdict = "ok" if ratio <= DECIDE_TARGET_RATIO else "OVER TARGET"
    print(f"decide(): 100-rule policy, {len(calls)} realistic calls")
    print(f"  decide          {decide_s * 1e6:8.2f} us/call")
    print(f"  bare OTel span  {span_s * 1e6:8.2f} us/span")
    print(f"  ratio           {ratio:8.3f}  (target <= {DECIDE_TARGET_RATIO}: {verdict})")


# --- replay -----------------------------------------------------------------------------

_ACTIONS_SQL = """
WITH base AS (SELECT range AS i, (hash(range) >> 1)::BIGINT AS h FROM range(?)),
t AS (
    SELECT i, h,
        ['git_status', 'git_diff', 'git_log', 'git_commit', 'git_add', 'git_checkout',
         'git_create_branch', 'git_reset', 'git_show', 'git_branch'][1 + h % 10] AS tool,
        'agent-' || ((h >> 8) % 20) AS agent,
        's-' || ((h >> 16) % 20000) AS session,
        '/src/repo' || ((h >> 24) % 10) AS repo,
        ['main', 'dev', 'feature/a', 'feature/b', 'release/1'][1 + (h >> 32) % 5] AS branch,
        [10, 50, 500][1 + (h >> 40) % 3] AS max_count,
        ['a.py', 'b.py', 'prod.env', 'README.md'][1 + (h >> 44) % 4] AS file
    FROM base
)
SELECT
    'trace-' || (i // 8) AS trace_id,
    'span-' || i AS span_id,
    'tool' AS span_type,
    (?::TIMESTAMPTZ - to_seconds((h >> 20) % (20 * 86400))) AS start_time,
    session AS session_id,
    agent AS agent_name,
    tool AS tool_name,
    CASE tool
        WHEN 'git_commit' THEN json_object('repo_path', repo, 'message', 'change ' || i)
        WHEN 'git_checkout' THEN json_object('repo_path', repo, 'branch_name', branch)
        WHEN 'git_create_branch' THEN
            json_object('repo_path', repo, 'branch_name', 'agent/' || i % 50, 'base_branch', branch)
        WHEN 'git_log' THEN json_object('repo_path', repo, 'max_count', max_count)
        WHEN 'git_add' THEN json_object('repo_path', repo, 'files', [file, 'src/main.py'])
        WHEN 'git_diff' THEN json_object('repo_path', repo, 'target', branch)
        ELSE json_object('repo_path', repo)
    END::VARCHAR AS arguments,
    'ALLOW' AS decision,
    'pass' AS policy_rule,
    'Low' AS blast_radius
FROM t
"""

# The common case: conditions on repo, branch, files and numbers, not on free text.
TYPICAL_POLICY = """
version: 1
targets:
  - {tools: ["git_*"], repo: "{repo_path}", branch: "{branch_name|target|base_branch}"}
blast_radius:
  - {tools: [git_commit, git_add, git_checkout, git_create_branch], radius: Medium}
  - {tools: [git_reset], radius: High}
rules:
  - {id: no-reset, when: {tool: git_reset}, decision: DENY}
  - {id: no-env, when: {tool: git_add, args: {files: "*.env"}}, decision: DENY}
  - id: own-branch
    when: {tool: git_checkout, args: {branch_name: [main, release/*]}}
    decision: REWRITE
    rewrite: {set: {branch_name: "agent/{session_id}"}}
  - {id: big-logs, when: {tool: git_log, args: {max_count: {gt: 100}}},
     decision: REQUIRE_APPROVAL}
  - {id: repo9, when: {repo: "*/repo9", tool: [git_commit, git_checkout]},
     decision: REQUIRE_APPROVAL}
"""


def land_actions(data_dir: Path, rows: int) -> None:
    """Write ``rows`` tool actions as real landed Parquet (4 files, 4 date partitions)."""
    now = dt.datetime.now(dt.UTC)
    con = duckdb.connect()
    table = con.sql(_ACTIONS_SQL, params=[rows, now]).to_arrow_table()
    assert table is not None
    columns = []
    for field in SPAN_SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    full = pa.Table.from_arrays(columns, schema=SPAN_SCHEMA)
    step = -(-full.num_rows // 4)
    for part in range(4):
        day = (now - dt.timedelta(days=part)).strftime("%Y-%m-%d")
        chunk = full.slice(part * step, step)
        write_table_atomic(chunk, data_dir / SPANS_DIR / f"date={day}" / f"bench-{part}.parquet")


def bench_replay(rows: int) -> None:
    import tooltrail.policy.loader as loader

    with tempfile.TemporaryDirectory(prefix="tooltrail-bench-") as tmp:
        data = Path(tmp)
        start = time.perf_counter()
        land_actions(data, rows)
        print(f"\nreplay: {rows:,} landed actions (written in {time.perf_counter() - start:.1f} s)")
        cases = [
            ("typical policy (low-cardinality conditions)", loader.loads_policy(TYPICAL_POLICY)),
            (
                "examples/policy-git.yaml (regex on unique commit messages)",
                load_policy(ROOT / "examples" / "policy-git.yaml"),
            ),
        ]
        for label, policy in cases:
            report = replay(policy, data, since_s=None)
            verdict = "ok" if report.elapsed_s <= REPLAY_TARGET_S else "OVER TARGET"
            print(f"  {label}")
            print(
                f"    {report.elapsed_s:6.2f} s  ({report.actions / report.elapsed_s:,.0f} "
                f"actions/s; {report.distinct_inputs:,} distinct inputs decided; "
                f"{report.changed:,} changed)  target <= {REPLAY_TARGET_S:.0f} s: {verdict}"
            )
            print(
                f"    of which DuckDB scan + group {report.scan_s:.2f} s, "
                f"Python decide + fold {report.decide_s:.2f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000, help="landed actions to replay")
    parser.add_argument("--skip-replay", action="store_true")
    args = parser.parse_args()
    bench_decide()
    if not args.skip_replay:
        bench_replay(args.rows)


if __name__ == "__main__":
    main()
