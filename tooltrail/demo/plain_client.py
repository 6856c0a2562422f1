"""A demo MCP client that knows nothing of tooltrail, governed by the gateway.

    python -m tooltrail.demo.plain_client REPO -- COMMAND [ARG...]

A plain MCP Python SDK client (nothing of tooltrail imported, nothing instrumented): it
starts COMMAND (in the demo, ``tooltrail proxy ... -- python -m mcp_server_git``) as its
server and does what a desktop or IDE agent might do to a repository: look around, then
try to reset it. The gateway decides each call; the client only sees MCP results. One
JSON line per call on stdout: ``{"tool", "is_error"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

CLIENT_NAME = "desktop-assistant"


async def run(repo: str, command: list[str]) -> None:
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.types import Implementation

    params = StdioServerParameters(command=command[0], args=command[1:])
    info = Implementation(name=CLIENT_NAME, version="1.0")
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, client_info=info) as client,
    ):
        await client.initialize()
        await client.list_tools()
        calls: list[tuple[str, dict[str, Any]]] = [
            ("git_status", {}),
            ("git_log", {"max_count": 5}),
            ("git_branch", {"branch_type": "local"}),
            ("git_reset", {}),  # refused by the gateway: the server never sees it
        ]
        for tool, arguments in calls:
            result = await client.call_tool(tool, {"repo_path": repo, **arguments})
            print(json.dumps({"tool": tool, "is_error": bool(result.is_error)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        raise SystemExit("usage: python -m tooltrail.demo.plain_client REPO -- COMMAND [ARG...]")
    asyncio.run(run(args[0], args[2:]))


if __name__ == "__main__":
    main()
