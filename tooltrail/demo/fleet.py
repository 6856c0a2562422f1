"""The demo's agent fleet: one process, instrumented, enforcing the policy at call time.

    python -m tooltrail.demo.fleet DATA_DIR --sessions N --seed S --policy FILE

Starts one real ``mcp-server-git`` per sandbox repository over stdio (each confined to its
repository with ``--repository``) and runs scripted agent sessions through instrumented
``ClientSession``s: sessions on one repository run one after another, repositories in
parallel. Progress goes to stdout as JSON lines for the ``tooltrail demo`` command.

The last job is a release whose held calls are the operator's: its agents keep waiting
for a decision (up to the policy rule's approval timeout) after the other sessions are done
(event ``ready``), so approving one in the dashboard or with ``tooltrail approve`` really
runs the git call. The fleet stops on SIGTERM, SIGINT or when its stdin closes (the demo
command ends or dies): the waiting agents give up, their brokers mark the requests
``abandoned``, and what they recorded lands before the process exits (event ``stopped``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltrail.demo.sandbox import RELEASE_REPO, Repo, ensure_sandbox
from tooltrail.demo.scenarios import (
    AGENT_OF,
    HOLD_LIMIT_S,
    PARENT_AGENT,
    SCENARIOS,
    AgentContext,
)

# After a first release (3 sessions), every decision kind occurs within 5 sessions; a
# release (two held calls) recurs so that the approver has calls to approve, deny and leave.
_CYCLE = ("feature", "cleanup", "inspect", "release", "feature", "cleanup", "inspect")


@dataclass(frozen=True, slots=True)
class Job:
    """One top-level session: a scenario, or a release with sub-agent sessions."""

    kind: str  # a SCENARIOS key, or "release" (parent + release-notes + cut-release)
    repo: Repo
    # The operator's job: nobody but a person decides its held calls, and its agents wait
    # for that (no demo hold limit); its two sub-agents work at once, so two calls wait.
    for_operator: bool = False

    @property
    def sessions(self) -> int:
        return 3 if self.kind == "release" else 1


def plan(total: int, repos: list[Repo], rng: random.Random) -> list[Job]:
    """At least ``total`` sessions: a release (3 sessions) first, then the cycle."""
    release = next(r for r in repos if r.name == RELEASE_REPO)
    work = [r for r in repos if r.name != RELEASE_REPO]
    jobs = [Job("release", release)]
    count = jobs[0].sessions
    i = 0
    while count < total:
        kind = _CYCLE[i % len(_CYCLE)]
        job = Job(kind, release if kind == "release" else rng.choice(work))
        jobs.append(job)
        count += job.sessions
        i += 1
    # Last in the release lane: it starts when that lane's other work is done, so its
    # waiting calls never hold up a session the demo approver is deciding.
    jobs.append(Job("release", release, for_operator=True))
    return jobs


OPERATOR_HOLDS = 2
"""Calls of the operator's release held at once: the release notes' commit and the release
branch cut (the captain's version bump is held next, once both are decided)."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def run_job(job: Job, client: Any, rng: random.Random) -> list[str]:
    import tooltrail.instrumentation as tt

    ran: list[str] = []
    limit = None if job.for_operator else HOLD_LIMIT_S

    def context(session_id: str, agent: str) -> AgentContext:
        # Announced before the session's first call: the demo approver decides only the
        # held calls of sessions it knows are not the operator's.
        emit("started", session_id=session_id, agent=agent, for_operator=job.for_operator)
        return AgentContext(client.call_tool, job.repo.path, session_id, rng, hold_limit_s=limit)

    async def scenario(kind: str, agent: str, trigger: str = "manual") -> None:
        with tt.session(agent_name=agent, trigger=trigger) as s:
            ctx = context(s.session_id, agent)
            await SCENARIOS[kind](ctx)
            ran.append(s.session_id)
            held = sum(o.held_too_long for o in ctx.outcomes)
            emit("session", session_id=s.session_id, agent=agent, scenario=kind, held=held)

    if job.kind != "release":
        await scenario(job.kind, AGENT_OF[job.kind])
        return ran
    with tt.session(agent_name=PARENT_AGENT, trigger="schedule") as parent:
        ctx = context(parent.session_id, PARENT_AGENT)
        await ctx.call("git_status")
        await ctx.call("git_log", max_count=10)
        # The captain hands work to two sub-agents; their sessions record it as parent.
        subagents = (
            scenario("release-notes", AGENT_OF["release-notes"], "agent"),
            scenario("cut-release", AGENT_OF["cut-release"], "agent"),
        )
        if job.for_operator:  # both wait for the operator at once
            await asyncio.gather(*subagents)
        else:
            for sub in subagents:
                await sub
        # The captain bumps the version itself: a third held call in the release repo.
        version = ctx.write("VERSION", f"2.{rng.randint(8, 30)}.0\n")
        await ctx.call("git_add", files=[version])
        await ctx.call("git_commit", message="Bump version")
        await ctx.call("git_branch", branch_type="local")
        ran.append(parent.session_id)
        emit("session", session_id=parent.session_id, agent=PARENT_AGENT, scenario="release")
    return ran


async def run_lane(
    repo: Repo, jobs: list[Job], rng: random.Random, approver_work_done: Callable[[], None]
) -> None:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo.path)]
    )
    logs = repo.path.parents[1] / "logs"  # <data>/sandbox/logs: the servers' stderr
    logs.mkdir(exist_ok=True)
    with open(logs / f"mcp-server-git-{repo.name}.log", "a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            await client.list_tools()  # tool annotations (readOnlyHint...) for the policy
            for job in jobs:
                if job.for_operator:
                    approver_work_done()
                await run_job(job, client, rng)
            if not any(job.for_operator for job in jobs):
                approver_work_done()


async def run_fleet(data_dir: Path, sessions: int, seed: int, policy: Path) -> None:
    import tooltrail.instrumentation as tt

    cfg = tt.configure(data_dir=data_dir, policy=policy, enforce=True, service_name="demo-fleet")
    if cfg.policy_error:
        raise SystemExit(f"tooltrail demo: the policy did not load: {cfg.policy_error}")
    work = asyncio.ensure_future(run_sessions(data_dir, sessions, seed))
    stop = asyncio.Event()
    _stop_on_request(stop)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopped = not work.done()
        if stopped:
            # The waiting agents give up: each held call's broker marks its request
            # abandoned, the sessions end, the MCP servers are closed.
            work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
    finally:
        stopping.cancel()
        with contextlib.suppress(Exception):
            cfg.tracer_provider.force_flush()
    emit("stopped" if stopped else "done")


def _stop_on_request(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT, or when stdin closes: the demo command holds
    its other end, so the fleet never outlives it, even if it is killed."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def watch_stdin() -> None:
        with contextlib.suppress(Exception):
            while sys.stdin.buffer.read(4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="fleet-stdin", daemon=True).start()


async def run_sessions(data_dir: Path, sessions: int, seed: int) -> None:
    rng = random.Random(seed)
    repos = ensure_sandbox(data_dir)
    jobs = plan(sessions, repos, rng)
    # The operator's release is not counted: its sessions end when a person has decided.
    emit("plan", sessions=sum(j.sessions for j in jobs if not j.for_operator), jobs=len(jobs))
    lanes: dict[Path, list[Job]] = {}
    for job in jobs:
        lanes.setdefault(job.repo.path, []).append(job)
    by_path = {r.path: r for r in repos}
    busy = [len(lanes)]

    def approver_work_done() -> None:
        busy[0] -= 1
        if busy[0] == 0:  # every session the demo approver decides has ended
            waiting = OPERATOR_HOLDS * sum(job.for_operator for job in jobs)
            emit("ready", waiting=waiting)

    # One RNG per lane: the outcome does not depend on how the lanes interleave.
    await asyncio.gather(
        *(
            run_lane(by_path[path], lane, random.Random(f"{seed}-{path.name}"), approver_work_done)
            for path, lane in lanes.items()
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tooltrail.demo.fleet", description=__doc__)
    ap.add_argument("data", type=Path)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", type=Path, required=True)
    args = ap.parse_args(argv)
    asyncio.run(run_fleet(args.data, args.sessions, args.seed, args.policy))


if __name__ == "__main__":
    main()
