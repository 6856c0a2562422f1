"""The landed row (SPEC §3): one row per span, as a pyarrow schema.

Hot fields are real columns; everything else stays queryable in the ``attributes`` and
``resource`` JSON columns. The column order here is the order on disk.
"""

from __future__ import annotations

from typing import Any, Final

import pyarrow as pa

# Re-exported: the landed columns hold these values.
from tooltrail.semconv import BLAST_RADII as BLAST_RADII
from tooltrail.semconv import DECISIONS as DECISIONS

SPAN_TYPES: Final = ("tool", "llm", "agent", "other")

_TS = pa.timestamp("us", tz="UTC")

SPAN_SCHEMA: Final = pa.schema(
    [
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("span_id", pa.string(), nullable=False),
        pa.field("parent_span_id", pa.string()),
        pa.field("name", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("span_type", pa.string()),
        pa.field("start_time", _TS),
        pa.field("end_time", _TS),
        pa.field("duration_ms", pa.float64()),
        pa.field("status_code", pa.string()),
        pa.field("status_message", pa.string()),
        pa.field("error_type", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("parent_session_id", pa.string()),
        pa.field("sequence", pa.int64()),
        pa.field("agent_name", pa.string()),
        pa.field("agent_id", pa.string()),
        pa.field("service_name", pa.string()),
        pa.field("trigger", pa.string()),
        pa.field("tool_name", pa.string()),
        pa.field("mcp_server", pa.string()),
        pa.field("arguments", pa.string()),
        pa.field("arguments_rewritten", pa.string()),
        pa.field("result_preview", pa.string()),
        pa.field("action_summary", pa.string()),
        pa.field("decision", pa.string()),
        pa.field("policy_rule", pa.string()),
        pa.field("policy_matched", pa.list_(pa.string())),
        pa.field("policy_version", pa.string()),
        pa.field("enforced", pa.bool_()),
        pa.field("blast_radius", pa.string()),
        pa.field("target_repo", pa.string()),
        pa.field("target_branch", pa.string()),
        pa.field("target_path", pa.string()),
        pa.field("approval_id", pa.string()),
        pa.field("approval_status", pa.string()),
        pa.field("approval_decided_by", pa.string()),
        pa.field("approval_wait_ms", pa.float64()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("model", pa.string()),
        pa.field("redactions", pa.int32()),
        # Added with the MCP gateway: files landed before it lack these (the views read
        # them as null).
        pa.field("governed_by", pa.string()),
        pa.field("mcp_client_name", pa.string()),
        pa.field("mcp_client_version", pa.string()),
        pa.field("tool_definition_changed", pa.bool_()),
        pa.field("tool_definition_hash", pa.string()),
        pa.field("attributes", pa.string()),
        pa.field("resource", pa.string()),
    ]
)

COLUMNS: Final[tuple[str, ...]] = tuple(SPAN_SCHEMA.names)

Row = dict[str, Any]
"""A normalized span: keys are ``COLUMNS``; timestamps are ``datetime`` (UTC) or int
nanoseconds since the epoch; JSON columns are already-serialized strings."""


def empty_row() -> Row:
    """A row with every column present and null."""
    return dict.fromkeys(COLUMNS)


def blast_rank(radius: str | None) -> int:
    """Rank of a blast-radius class (Low=0 … Critical=3); -1 for null/unknown."""
    try:
        return BLAST_RADII.index(radius) if radius is not None else -1
    except ValueError:
        return -1
