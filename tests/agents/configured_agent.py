"""An agent that turns tooltrail on with one line, ``configure(...)``, then calls a local
``@tool`` function and mcp-server-git. Prints one JSON object: what each call returned and
which heavy modules were imported (the agent side must not load duckdb, polars, streamlit).

Usage: python configured_agent.py DATA_DIR POLICY REPO
"""

from __future__ import annotations

import json
import sys

import tooltrail.instrumentation as tt

HEAVY = ("duckdb", "polars", "streamlit")


@tt.tool
def plan(goal: str) -> str:
    return f"plan for {goal}"


async def use_git(repo: str) -> list[dict[str, object]]:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", repo]
    )
    out: list[dict[str, object]] = []
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for branch in ("feature-ok", "forbidden-one"):
            result = await session.call_tool(
                "git_create_branch", {"repo_path": repo, "branch_name": branch}
            )
            out.append({"branch": branch, "is_error": result.is_error})
    return out


def main(data_dir: str, policy: str, repo: str) -> None:
    import anyio

    configuration = tt.configure(
        data_dir=data_dir, policy=policy, enforce=True, agent_name="configured-agent"
    )
    loaded_after_configure = sorted(m for m in HEAVY if m in sys.modules)
    with tt.session(session_id="configured-session", trigger="manual"):
        planned = plan("ship it")
        git = anyio.run(use_git, repo)
    print(
        json.dumps(
            {
                "planned": planned,
                "git": git,
                "created_provider": configuration.created_provider,
                "mcp_instrumented": configuration.mcp_instrumented,
                "policy_version": configuration.policy_version,
                "heavy_after_configure": loaded_after_configure,
                "heavy_at_exit": sorted(m for m in HEAVY if m in sys.modules),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
