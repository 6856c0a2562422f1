"""A tiny MCP server (stdio) whose one tool returns the ``_meta`` of the request it got.

Used by the context-propagation test: the client's trace context must arrive here.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("echo-meta")


@server.tool(name="echo_meta", structured_output=False)
async def echo_meta(ctx: Context[Any, Any]) -> str:
    """Return the request's ``_meta`` as JSON."""
    meta = ctx.request_context.meta or {}
    return json.dumps(dict(meta), default=str)


if __name__ == "__main__":
    server.run("stdio")
