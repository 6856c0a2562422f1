"""The dashboard's own read queries over the analytics views (no Streamlit here).

Most pages call ``tooltrail.analytics`` directly (sessions, session_actions,
approval_history, ...). The few aggregates below have no analytics function yet
(decisions over time, KPIs for a time range, the critical-actions list, policy rule hit
counts, a session's family tree and LLM usage); they are fixed SQL texts over the same
views, on a connection from :func:`tooltrail.analytics.connect`, with every value bound
as a parameter. Each text passes :func:`tooltrail.analytics.check_read_only` before it
runs, and the connection is refreshed first, exactly as the analytics functions do.

Time filters come in two fixed variants (with and without ``since``) instead of
``$since IS NULL OR ...``: a plain comparison on the ``date`` partition column lets
DuckDB skip whole day partitions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

import duckdb
import polars as pl

from tooltrail import analytics
from tooltrail.analytics.engine import raise_query_error

# `date` is the UTC day partition of start_time: filtering on it prunes files.
_SINCE: Final = "date >= CAST($since AS DATE) AND start_time >= $since"


def select(
    con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Run one read-only statement on an analytics connection (views refreshed first)."""
    statement = analytics.check_read_only(sql)
    analytics.refresh(con)
    try:
        frame: pl.DataFrame = con.sql(statement, params=dict(params or {})).pl()
    except duckdb.Error as e:
        raise_query_error(e, "dashboard query")
    return frame


def _where(since: dt.datetime | None, *clauses: str) -> tuple[str, dict[str, Any]]:
    parts = [c for c in clauses if c]
    params: dict[str, Any] = {}
    if since is not None:
        parts.append(_SINCE)
        params["since"] = since
    return ("WHERE " + " AND ".join(parts)) if parts else "", params


def kpis(con: duckdb.DuckDBPyConnection, since: dt.datetime | None) -> dict[str, int]:
    """Actions, denies, rewrites, approvals, critical actions and sessions since ``since``."""
    where, params = _where(since)
    frame = select(
        con,
        f"""
        SELECT count(*) AS actions,
               count(*) FILTER (WHERE decision = 'ALLOW') AS allows,
               count(*) FILTER (WHERE decision = 'DENY') AS denies,
               count(*) FILTER (WHERE decision = 'REWRITE') AS rewrites,
               count(*) FILTER (WHERE decision = 'REQUIRE_APPROVAL') AS approvals,
               count(*) FILTER (WHERE blast_radius = 'Critical') AS critical,
               count(DISTINCT session_id) AS sessions
        FROM actions {where}
        """,  # noqa: S608 - fixed clauses only; values are bound
        params,
    )
    row = frame.row(0, named=True)
    return {k: int(v or 0) for k, v in row.items()}


def decisions_over_time(
    con: duckdb.DuckDBPyConnection, since: dt.datetime | None, bucket: dt.timedelta
) -> pl.DataFrame:
    """Columns bucket (start of the interval, UTC), decision (``undecided`` for null), actions."""
    where, params = _where(since)
    params["width"] = bucket
    return select(
        con,
        f"""
        SELECT time_bucket(CAST($width AS INTERVAL), start_time) AS bucket,
               coalesce(decision, 'undecided') AS decision,
               count(*) AS actions
        FROM actions {where}
        GROUP BY ALL
        ORDER BY bucket, decision
        """,  # noqa: S608 - fixed clauses only; values are bound
        params,
    )


def critical_actions(
    con: duckdb.DuckDBPyConnection, since: dt.datetime | None, limit: int
) -> pl.DataFrame:
    """The newest Critical actions."""
    where, params = _where(since, "blast_radius = 'Critical'")
    params["limit"] = limit
    return select(
        con,
        f"""
        SELECT start_time, session_id, agent_name, tool_name, action_summary, decision,
               policy_rule, target_repo, target_branch, status_code
        FROM actions {where}
        ORDER BY start_time DESC, span_id
        LIMIT $limit
        """,  # noqa: S608 - fixed clauses only; values are bound
        params,
    )


def rule_hits(con: duckdb.DuckDBPyConnection, policy_version: str | None) -> pl.DataFrame:
    """Per rule id seen in landed actions: matched (in ``policy_matched``), decided (the
    verdict), last_matched. ``policy_version``: only actions decided by that version."""
    where, params = _where(None, "policy_version = $version" if policy_version else "")
    if policy_version:
        params["version"] = policy_version
    return select(
        con,
        f"""
        WITH scoped AS (SELECT policy_matched, policy_rule, start_time FROM actions {where}),
        matched AS (
            SELECT rule, count(*) AS matched, max(start_time) AS last_matched
            FROM (SELECT unnest(policy_matched) AS rule, start_time FROM scoped)
            GROUP BY rule
        ),
        decided AS (
            SELECT policy_rule AS rule, count(*) AS decided
            FROM scoped WHERE policy_rule IS NOT NULL GROUP BY policy_rule
        )
        SELECT coalesce(m.rule, d.rule) AS rule,
               coalesce(m.matched, 0) AS matched,
               coalesce(d.decided, 0) AS decided,
               m.last_matched
        FROM matched AS m FULL OUTER JOIN decided AS d ON d.rule = m.rule
        ORDER BY matched DESC, rule
        """,  # noqa: S608 - fixed clauses only; values are bound
        params,
    )


def policy_versions(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Landed policy versions: actions, first and last seen (null version = undecided)."""
    return select(
        con,
        """
        SELECT policy_version, count(*) AS actions,
               min(start_time) AS first_seen, max(start_time) AS last_seen
        FROM actions GROUP BY policy_version ORDER BY last_seen DESC NULLS LAST
        """,
    )


def session_llm_usage(con: duckdb.DuckDBPyConnection, session_id: str) -> pl.DataFrame:
    """One session's LLM spans per model: calls, input and output tokens."""
    return select(
        con,
        """
        SELECT coalesce(model, '(unknown model)') AS model, count(*) AS calls,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens
        FROM spans WHERE session_id = $session_id AND span_type = 'llm'
        GROUP BY ALL ORDER BY model
        """,
        {"session_id": session_id},
    )


def session_links(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Every parent -> sub-agent session link, with what the tree shows of each child."""
    return select(
        con,
        """
        SELECT session_id, parent_session_id, agent_name, status, total_actions
        FROM sessions WHERE parent_session_id IS NOT NULL
        ORDER BY started_at, session_id
        """,
    )


def filter_options(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
    """The agent names and repositories the session filters offer."""
    agents = select(
        con,
        "SELECT DISTINCT agent_name FROM sessions WHERE agent_name IS NOT NULL ORDER BY 1",
    )
    repos = select(
        con,
        "SELECT DISTINCT repo FROM (SELECT unnest(repos) AS repo FROM sessions) "
        "WHERE repo IS NOT NULL ORDER BY 1",
    )
    return agents.to_series().to_list(), repos.to_series().to_list()


def tag_options(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Every tag of a session, for the tag filter."""
    tags = select(
        con,
        "SELECT DISTINCT tag FROM (SELECT unnest(tags) AS tag FROM sessions) "
        "WHERE tag IS NOT NULL ORDER BY 1",
    )
    out: list[str] = tags.to_series().to_list()
    return out


VIEWS: Final = ("sessions", "actions", "approvals", "spans")


def view_columns(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """view, column, type of every column of the views analysts query."""
    return select(
        con,
        """
        SELECT table_name AS view, column_name AS column, data_type AS type
        FROM information_schema.columns
        WHERE list_contains($views, table_name)
        ORDER BY list_position($views, table_name), ordinal_position
        """,
        {"views": list(VIEWS)},
    )


__all__ = [
    "VIEWS",
    "critical_actions",
    "decisions_over_time",
    "filter_options",
    "kpis",
    "policy_versions",
    "rule_hits",
    "select",
    "session_links",
    "session_llm_usage",
    "view_columns",
]
