"""An MCP agent driven line by line from stdin, governed by tooltrail.

It turns tooltrail on with ``configure(data_dir, policy, enforce=True)`` (so held calls wait
in ``<data>/control.sqlite`` and session control is on), opens one session with the given
id, and starts mcp-server-git on REPO. Then, for each JSON line read from stdin,
``{"id": ..., "tool": ..., "args": {...}}``, it starts the call at once in its own task, so
several calls can be held at the same time. It prints ``{"ready": true}`` once the MCP
session is up, and one line per finished call: ``{"id", "is_error", "text"}``; a command
with ``"give_up_after": S`` stops waiting after S seconds (its call is cancelled, as an
agent's own timeout does) and prints ``{"id", "gave_up": true}``. At the end
of stdin it waits for the calls still running and exits (spans are flushed at exit).

Usage: python approval_agent.py DATA_DIR POLICY REPO SESSION_ID
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp import ClientSession, StdioServerParameters, stdio_client

import tooltrail.instrumentation as tt


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def run_call(session: ClientSession, command: dict[str, Any]) -> None:
    with anyio.move_on_after(command.get("give_up_after", float("inf"))) as scope:
        result = await session.call_tool(command["tool"], command.get("args") or {})
    if scope.cancelled_caught:
        emit({"id": command["id"], "gave_up": True})
        return
    text = "".join(getattr(c, "text", "") for c in result.content)
    emit({"id": command["id"], "is_error": bool(result.is_error), "text": text})


async def serve(session: ClientSession, tg: TaskGroup) -> None:
    while True:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        if line.strip():
            tg.start_soon(run_call, session, json.loads(line))


async def main(repo: str, session_id: str) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", repo]
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        with tt.session(session_id=session_id, trigger="manual"):
            emit({"ready": True})
            async with anyio.create_task_group() as tg:
                await serve(session, tg)


if __name__ == "__main__":
    data_dir, policy, repo, session_id = sys.argv[1:5]
    tt.configure(data_dir=data_dir, policy=policy, enforce=True, agent_name="approval-agent")
    anyio.run(main, repo, session_id)
