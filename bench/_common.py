"""Shared helpers for the benchmarks: timing and realistic tool-span attributes."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from tooltrail import semconv as sc


def tool_attributes(i: int) -> dict[str, Any]:
    """Attributes of one instrumented MCP tool call, as the instrumentation sets them."""
    session = f"session-{i % 100:04d}"
    return {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "git_commit",
        sc.GEN_AI_TOOL_CALL_ID: f"call-{i}",
        sc.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps(
            {"repo_path": "/srv/repos/payments", "message": f"fix: handle retry {i}"}
        ),
        sc.MCP_METHOD_NAME: sc.MCP_METHOD_TOOLS_CALL,
        sc.MCP_SERVER_NAME: "mcp-git",
        sc.JSONRPC_REQUEST_ID: str(i),
        sc.SESSION_ID: session,
        sc.GEN_AI_CONVERSATION_ID: session,
        sc.TT_SESSION_ID: session,
        sc.GEN_AI_AGENT_NAME: "release-bot",
        sc.TT_SEQUENCE: i,
        sc.TT_DECISION: "ALLOW",
        sc.TT_POLICY_RULE: "pass",
        sc.TT_ENFORCED: True,
        sc.TT_BLAST_RADIUS: "Medium",
        sc.TT_TARGET_REPO: "/srv/repos/payments",
    }


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    """Minimum of ``repeats`` timings: the least noisy estimate on a shared machine."""
    return min(fn() for _ in range(repeats))


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
