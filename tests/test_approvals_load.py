"""Concurrent agent, deciders and command line on one control store: nothing is lost.

One agent process holds N calls at once (tests/agents/approval_load_agent.py). Two decider
processes and the real ``tooltrail`` command line (many processes, some in parallel) decide
them at the same time, while ``tooltrail approvals`` lists them. Every request must be filed
once, decided once by its owner, reach the call that filed it (approved: it ran; denied: it
was refused naming the decider), and land as a span joined to its store record.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
from approval_support import run_cli
from git_support import clean_env

from tooltrail import analytics
from tooltrail.control import ControlStore

AGENT = Path(__file__).parent / "agents" / "approval_load_agent.py"
N = 200
DEADLINE_S = 120.0
POLICY = """
version: 1
rules:
  - id: releases-need-a-human
    when: {tool: release}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 10m, approvers: ["*"]}
"""


VERB = {"approved": "approve", "denied": "deny"}


def owner(n: int) -> str:
    """Who decides request n: the command line for every tenth, else one of two deciders."""
    return "cli-op" if n % 10 == 0 else f"decider-{(n // 10) % 2}"


def outcome(n: int) -> str:
    return "approved" if n % 2 == 0 else "denied"


def _n(arguments: str) -> int:
    return int(json.loads(arguments)["n"])


def decider(data: str, name: str, expected: int) -> None:
    """Decide the requests this decider owns as they appear (a separate process)."""
    decided: set[str] = set()
    deadline = time.monotonic() + DEADLINE_S
    with ControlStore(data) as store:
        while len(decided) < expected and time.monotonic() < deadline:
            for rec in store.list_approvals("pending"):
                n = _n(rec.arguments)
                if owner(n) == name and rec.approval_id not in decided:
                    store.decide(rec.approval_id, outcome(n), by=name)  # type: ignore[arg-type]
                    decided.add(rec.approval_id)
            time.sleep(0.02)
    if len(decided) != expected:
        raise SystemExit(f"{name} decided {len(decided)} of {expected}")


def cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(data, *args, timeout=DEADLINE_S)


def cli_decisions(data: Path) -> list[str]:
    """Decide the command line's share with ``tooltrail approve|deny``, four at a time, and
    list pending requests between rounds; returns the CLI outputs."""
    mine = {n for n in range(N) if owner(n) == "cli-op"}
    outputs: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    with ThreadPoolExecutor(4) as pool:
        while mine and time.monotonic() < deadline:
            listed = cli(data, "approvals", "--format", "json")
            assert listed.returncode == 0, listed.stderr
            with ControlStore(data) as store:
                ready = {
                    _n(r.arguments): r.approval_id
                    for r in store.list_approvals("pending")
                    if _n(r.arguments) in mine
                }
            runs = pool.map(
                lambda item: cli(data, VERB[outcome(item[0])], item[1], "--by", "cli-op"),
                ready.items(),
            )
            for done in runs:
                assert done.returncode == 0, done.stderr
                outputs.append(done.stdout)
            mine -= set(ready)
    assert not mine, f"the command line never saw requests {sorted(mine)}"
    return outputs


def test_hundreds_of_requests_with_concurrent_cli_and_deciders_lose_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    ControlStore(data).close()
    ctx = multiprocessing.get_context("spawn")
    expected = {
        name: sum(owner(n) == name for n in range(N)) for name in ("decider-0", "decider-1")
    }
    deciders = [
        ctx.Process(target=decider, args=(str(data), name, count))
        for name, count in expected.items()
    ]
    for p in deciders:
        p.start()
    agent = subprocess.Popen(
        [sys.executable, str(AGENT), str(data), str(policy), str(N)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        outputs = cli_decisions(data)
        out, err = agent.communicate(timeout=DEADLINE_S)
        assert agent.returncode == 0, err
        for p in deciders:
            p.join(DEADLINE_S)
            assert p.exitcode == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for p in deciders:
            if p.is_alive():
                p.kill()
                p.join()
    assert len(outputs) == N // 10

    # Every call got the decision made on its own request.
    results = json.loads(out)["results"]
    assert len(results) == N
    for n in range(N):
        got, reason = results[str(n)]
        if outcome(n) == "approved":
            assert got == "ran", (n, reason)
        else:
            assert (got, reason) == ("denied", f"approval denied by {owner(n)}"), n

    # Every request filed once and decided once, by its owner.
    with ControlStore(data) as store:
        records = store.list_approvals("all")
    assert len(records) == N
    assert sorted(_n(r.arguments) for r in records) == list(range(N))
    for r in records:
        n = _n(r.arguments)
        assert (r.status, r.decided_by) == (outcome(n), owner(n)), n

    # Every call landed as a span joined to its request, and the views agree.
    rows = [r for r in pq.read_table(data / "spans").to_pylist() if r["span_type"] == "tool"]
    assert len(rows) == N
    store_status = {r.approval_id: r.status for r in records}
    assert {r["approval_id"]: r["approval_status"] for r in rows} == store_status
    stats = analytics.approval_stats(data, by="approver")
    counts = dict(zip(stats["approver"].to_list(), stats["requests"].to_list(), strict=True))
    assert counts == {"cli-op": N // 10, **expected}
