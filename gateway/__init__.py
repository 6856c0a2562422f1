"""The MCP gateway (``tooltrail proxy``): governs any MCP client from outside its process.

An MCP client starts ``tooltrail proxy ... -- COMMAND`` in place of the server; the gateway
starts COMMAND and relays JSON-RPC both ways, deciding each ``tools/call`` with the same
policy engine, approvals, session control and spans as the instrumentation
(docs/GATEWAY.md). It uses core, the collector's exporter and the instrumentation's span
making, nothing above them.
"""

from __future__ import annotations

from tooltrail.gateway.connection import ProxyOptions
from tooltrail.gateway.stdio import run_proxy

__all__ = ["ProxyOptions", "run_proxy"]
