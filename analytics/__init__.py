"""tooltrail.analytics: DuckDB / polars queries over the landed data.

``connect()`` gives a DuckDB connection with the SPEC §3 views (spans, actions, sessions,
approvals); the query functions return polars DataFrames; ``build_duckdb_file()`` writes
``<data>/tooltrail.duckdb`` for analysts; ``build_session_index()`` writes the session
index that keeps session listings fast (called by ``tooltrail compact``).
Column reference: docs/DATA.md.
"""

from __future__ import annotations

from tooltrail.analytics.control import (
    CONTROL_APPROVALS_SCHEMA,
    CONTROL_EVENTS_SCHEMA,
    CONTROL_SESSIONS_SCHEMA,
    ControlLoader,
    ControlTables,
    control_tables,
    default_control_loader,
    empty_control,
)
from tooltrail.analytics.db import (
    APPROVALS_COLUMNS,
    IDLE_WINDOW,
    SESSIONS_COLUMNS,
    build_duckdb_file,
    connect,
    refresh,
)
from tooltrail.analytics.guard import check_read_only
from tooltrail.analytics.index import SESSION_INDEX_FILE, build_session_index
from tooltrail.analytics.queries import (
    APPROVAL_GROUPS,
    APPROVAL_STATUSES,
    BLAST_RADIUS_GROUPS,
    GOVERNED_BY,
    SESSION_ACTION_EXTRA_COLUMNS,
    SESSION_STATUSES,
    TOOL_CHANGE_COLUMNS,
    TRACE_FILTERS,
    Since,
    Source,
    approval_history,
    approval_stats,
    blast_radius_stats,
    count_sessions,
    landed_span_ids,
    parse_since,
    run_query,
    session,
    session_actions,
    session_control_history,
    session_trace,
    sessions,
    terminal_sessions,
    tool_changes,
)

__all__ = [
    "APPROVALS_COLUMNS",
    "APPROVAL_GROUPS",
    "APPROVAL_STATUSES",
    "BLAST_RADIUS_GROUPS",
    "CONTROL_APPROVALS_SCHEMA",
    "CONTROL_EVENTS_SCHEMA",
    "CONTROL_SESSIONS_SCHEMA",
    "GOVERNED_BY",
    "IDLE_WINDOW",
    "SESSIONS_COLUMNS",
    "SESSION_ACTION_EXTRA_COLUMNS",
    "SESSION_INDEX_FILE",
    "SESSION_STATUSES",
    "TOOL_CHANGE_COLUMNS",
    "TRACE_FILTERS",
    "ControlLoader",
    "ControlTables",
    "Since",
    "Source",
    "approval_history",
    "approval_stats",
    "blast_radius_stats",
    "build_duckdb_file",
    "build_session_index",
    "check_read_only",
    "connect",
    "control_tables",
    "count_sessions",
    "default_control_loader",
    "empty_control",
    "landed_span_ids",
    "parse_since",
    "refresh",
    "run_query",
    "session",
    "session_actions",
    "session_control_history",
    "session_trace",
    "sessions",
    "terminal_sessions",
    "tool_changes",
]
