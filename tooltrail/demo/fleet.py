"""The demo's agent fleet: one process, instrumented, enforcing the policy at call time.

    python -m tooltrail.demo.fleet DATA_DIR --sessions N --seed S --policy FILE

Starts one real ``mcp-server-git`` per sandbox repository over stdio (each confined to its
repository with ``--repository``) and runs scripted agent sessions through instrumented
``ClientSession``s: sessions on one repository run one after another, repositories in
parallel. Progress goes to stdout as JSON lines for the ``tooltrail demo`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooltrail.demo.sandbox import RELEASE_REPO, Repo, ensure_sandbox
from tooltrail.demo.scenarios import AGENT_OF, PARENT_AGENT, SCENARIOS, AgentContext

# After a first release (3 sessions), every decision kind occurs within 5 sessions; a
# release (two held calls) recurs so that the approver has calls to approve, deny and leave.
_CYCLE = ("feature", "cleanup", "inspect", "release", "feature", "cleanup", "inspect")


@dataclass(frozen=True, slots=True)
class Job:
    """One top-level session: a scenario, or a release with sub-agent sessions."""

    kind: str  # a SCENARIOS key, or "release" (parent + release-notes + cut-release)
    repo: Repo

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
    return jobs


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def run_job(job: Job, client: Any, rng: random.Random) -> list[str]:
    import tooltrail.instrumentation as tt

    ran: list[str] = []

    async def scenario(kind: str, agent: str) -> None:
        with tt.session(agent_name=agent, trigger="agent" if ran else "manual") as s:
            ctx = AgentContext(client.call_tool, job.repo.path, s.session_id, rng)
            await SCENARIOS[kind](ctx)
            ran.append(s.session_id)
            held = sum(o.held_too_long for o in ctx.outcomes)
            emit("session", session_id=s.session_id, agent=agent, scenario=kind, held=held)

    if job.kind != "release":
        await scenario(job.kind, AGENT_OF[job.kind])
        return ran
    with tt.session(agent_name=PARENT_AGENT, trigger="schedule") as parent:
        ctx = AgentContext(client.call_tool, job.repo.path, parent.session_id, rng)
        await ctx.call("git_status")
        await ctx.call("git_log", max_count=10)
        # The captain hands work to two sub-agents; their sessions record it as parent.
        await scenario("release-notes", AGENT_OF["release-notes"])
        await scenario("cut-release", AGENT_OF["cut-release"])
        # The captain bumps the version itself: a third held call in the release repo.
        version = ctx.write("VERSION", f"2.{rng.randint(8, 30)}.0\n")
        await ctx.call("git_add", files=[version])
        await ctx.call("git_commit", message="Bump version")
        await ctx.call("git_branch", branch_type="local")
        ran.append(parent.session_id)
        emit("session", session_id=parent.session_id, agent=PARENT_AGENT, scenario="release")
    return ran


async def run_lane(repo: Repo, jobs: list[Job], rng: random.Random) -> None:
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
                await run_job(job, client, rng)


async def run_fleet(data_dir: Path, sessions: int, seed: int, policy: Path) -> None:
    import tooltrail.instrumentation as tt

    cfg = tt.configure(data_dir=data_dir, policy=policy, enforce=True, service_name="demo-fleet")
    if cfg.policy_error:
        raise SystemExit(f"tooltrail demo: the policy did not load: {cfg.policy_error}")
    rng = random.Random(seed)
    repos = ensure_sandbox(data_dir)
    jobs = plan(sessions, repos, rng)
    emit("plan", sessions=sum(j.sessions for j in jobs), jobs=len(jobs))
    lanes: dict[Path, list[Job]] = {}
    for job in jobs:
        lanes.setdefault(job.repo.path, []).append(job)
    by_path = {r.path: r for r in repos}
    # One RNG per lane: the outcome does not depend on how the lanes interleave.
    await asyncio.gather(
        *(
            run_lane(by_path[path], lane, random.Random(f"{seed}-{path.name}"))
            for path, lane in lanes.items()
        )
    )
    with contextlib.suppress(Exception):
        cfg.tracer_provider.force_flush()
    emit("done")


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
