"""A plain MCP agent with no tooltrail code: it asks mcp-server-git for the status of a
repository and to create the branches named on the command line, then prints each
result as a JSON line. The zero-code test runs it under ``opentelemetry-instrument``.

Usage: python git_agent.py REPO BRANCH...
"""

from __future__ import annotations

import json
import sys

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client


async def main(repo: str, new_branches: list[str]) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", repo]
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        calls = [("git_status", {"repo_path": repo})] + [
            ("git_create_branch", {"repo_path": repo, "branch_name": b}) for b in new_branches
        ]
        for tool, arguments in calls:
            result = await session.call_tool(tool, arguments)
            text = "".join(getattr(c, "text", "") for c in result.content)
            print(json.dumps({"tool": tool, "is_error": result.is_error, "text": text}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2:])
