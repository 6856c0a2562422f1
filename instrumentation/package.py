"""The library versions ``McpInstrumentor`` supports (checked by ``instrument()``)."""

from __future__ import annotations

from typing import Final

# The mcp 2.x client API: ClientSession.call_tool(name, arguments, ..., *, meta=...),
# ClientSession.list_tools() and the JSON-RPC dispatcher; 2.3 is pinned in requirements.lock.
_instruments: Final = ("mcp >= 2.0, < 3",)
