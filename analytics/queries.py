"""Query functions returning polars DataFrames: what the CLI and the dashboard call.

Each function takes a *source*: a connection from :func:`~tooltrail.analytics.connect`
(reused; its views are refreshed first), any DuckDB connection that has the views (e.g.
one opened on ``tooltrail.duckdb``), or a data directory (a read-only connection is opened
and closed around the call; None means ``$TOOLTRAIL_DATA`` / ./tooltrail-data).
Filters are bound as query parameters; bad arguments and DuckDB failures raise
:class:`~tooltrail.errors.QueryError`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import duckdb
import polars as pl

from tooltrail.analytics.db import connect, data_dir_of, refresh
from tooltrail.analytics.engine import raise_query_error, vanished_file
from tooltrail.analytics.guard import check_read_only
from tooltrail.analytics.sqlfiles import load, render
from tooltrail.analytics.trace import TRACE_FILTERS as TRACE_FILTERS
from tooltrail.analytics.trace import build_trace
from tooltrail.errors import QueryError
from tooltrail.schema import BLAST_RADII, DECISIONS

Source: TypeAlias = duckdb.DuckDBPyConnection | str | os.PathLike[str] | None
Since: TypeAlias = dt.timedelta | dt.datetime | str | None

SESSION_STATUSES: Final = (
    "active",
    "waiting_approval",
    "paused",
    "canceled",
    "failed",
    "completed",
    "abandoned",
)
BLAST_RADIUS_GROUPS: Final = ("agent", "tool", "repo", "day")
APPROVAL_GROUPS: Final = ("rule", "agent", "approver", "tool")
SESSION_ACTION_EXTRA_COLUMNS: Final = ("outcome", "approval_outcome", "approval_reason")
# Who governed a session's calls (the `governed_by` filter): the MCP gateway, tooltrail's
# in-process instrumentation, or neither ('other': third-party spans only).
GOVERNED_BY: Final = ("gateway", "instrumentation", "other")
APPROVAL_STATUSES: Final = (
    "all",
    "pending",
    "approved",
    "denied",
    "expired",
    "abandoned",
    "not_requested",
)


def parse_since(since: Since, *, now: dt.datetime | None = None) -> dt.datetime | None:
    """The UTC instant a ``since`` filter means (None: no filter).

    A ``timedelta`` or a duration string counts back from now: the same syntax as
    ``tooltrail policy replay --since`` (``30m``, ``2h``, ``1h30m``, ``7d``, ``1w`` or
    ``all``; a bare number, with no unit, is refused); an aware ``datetime`` is taken as
    is (a naive one is read as UTC).
    """
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        return since if since.tzinfo is not None else since.replace(tzinfo=dt.UTC)
    if isinstance(since, str):
        from tooltrail.errors import BadInputError
        from tooltrail.policy.durations import parse_since_seconds

        try:
            seconds = parse_since_seconds(since, option="since")
        except BadInputError as e:
            raise QueryError(str(e)) from e
        if seconds is None:
            return None
        since = dt.timedelta(seconds=seconds)
    if since < dt.timedelta(0):
        raise QueryError(f"since must not be negative, got {since}")
    try:
        return (now or dt.datetime.now(dt.UTC)) - since
    except OverflowError:
        raise QueryError(f"since={since} reaches before the year 1") from None


@contextmanager
def borrow(source: Source) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection for ``source``: the given one (refreshed), or a new read-only one."""
    if isinstance(source, duckdb.DuckDBPyConnection):
        refresh(source)
        yield source
        return
    con = connect(source)
    try:
        yield con
    finally:
        con.close()


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any], what: str
) -> pl.DataFrame:
    def result() -> pl.DataFrame:
        frame: pl.DataFrame = con.sql(sql, params=dict(params)).pl()
        return frame

    try:
        return _replanned(con, result)
    except duckdb.Error as e:
        raise_query_error(e, what)


T = TypeVar("T")


def _replanned(con: duckdb.DuckDBPyConnection, run: Callable[[], T]) -> T:
    """``run()``, again on views re-planned if a span file they list vanished before it
    was read: compaction swaps a partition's files for merged ones (the rows are the
    same), and a query planned just before the swap would otherwise fail."""
    for _ in range(_RUN_ATTEMPTS - 1):
        try:
            return run()
        except duckdb.IOException as e:
            if not vanished_file(e):
                raise
            refresh(con, replan=True)
    return run()


# A query re-planned this often met a compaction swap each time: let the error through.
_RUN_ATTEMPTS: Final = 4


def _choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise QueryError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _count(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or value < 0):
        raise QueryError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _tags(tags: Sequence[str] | None) -> list[str] | None:
    if tags is None or isinstance(tags, str):
        tags = [tags] if isinstance(tags, str) else []
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise QueryError(f"tag={tag!r}: a tag is a non-empty string")
    return list(tags) or None


def _session_filters(
    *,
    agent: str | None,
    status: str | None,
    since: Since,
    search: str | None,
    repo: str | None,
    decision: str | None,
    blast_radius: str | None,
    governed_by: str | None,
    tags: Sequence[str] | None = None,
) -> dict[str, Any]:
    return {
        "tags": _tags(tags),
        "governed_by": _choice("governed_by", governed_by, GOVERNED_BY),
        "agent": agent,
        "status": _choice("status", status, SESSION_STATUSES),
        "since": parse_since(since),
        "search": search or None,
        "repo": repo,
        "decision": _choice("decision", decision, DECISIONS),
        "blast_radius": _choice("blast_radius", blast_radius, BLAST_RADII),
    }


def sessions(
    source: Source = None,
    *,
    agent: str | None = None,
    status: str | None = None,
    since: Since = None,
    limit: int | None = None,
    offset: int = 0,
    search: str | None = None,
    repo: str | None = None,
    decision: str | None = None,
    blast_radius: str | None = None,
    governed_by: str | None = None,
    tags: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Sessions (the ``sessions`` view's columns), most recent activity first.

    Filters: exact ``agent`` name; ``status`` (one of SESSION_STATUSES); ``since``
    (last activity at or after); ``search`` (case-insensitive substring of the session
    id); ``repo`` (touched this repo); ``decision`` / ``blast_radius`` (has at least one
    action with it); ``governed_by`` (one of GOVERNED_BY: who governed its calls);
    ``tags`` (has every one of these tags).
    ``limit`` / ``offset`` page through the result.
    """
    params = _session_filters(
        agent=agent,
        status=status,
        since=since,
        search=search,
        repo=repo,
        decision=decision,
        blast_radius=blast_radius,
        governed_by=governed_by,
        tags=tags,
    )
    params["limit"] = _count("limit", limit)
    params["offset"] = _count("offset", offset) or 0
    sql = render("sessions_list", filtered=render("sessions_filtered"))
    with borrow(source) as con:
        return _frame(con, sql, params, "listing sessions")


def count_sessions(
    source: Source = None,
    *,
    agent: str | None = None,
    status: str | None = None,
    since: Since = None,
    search: str | None = None,
    repo: str | None = None,
    decision: str | None = None,
    blast_radius: str | None = None,
    governed_by: str | None = None,
    tags: Sequence[str] | None = None,
) -> int:
    """How many sessions :func:`sessions` would list without ``limit`` (for paging)."""
    params = _session_filters(
        agent=agent,
        status=status,
        since=since,
        search=search,
        repo=repo,
        decision=decision,
        blast_radius=blast_radius,
        governed_by=governed_by,
        tags=tags,
    )
    sql = render("sessions_count", filtered=render("sessions_filtered"))
    with borrow(source) as con:
        frame = _frame(con, sql, params, "counting sessions")
    return int(frame.item())


def session(source: Source, session_id: str) -> pl.DataFrame | None:
    """The header of one session (one ``sessions`` row), or None if it is unknown."""
    with borrow(source) as con:
        frame = _frame(
            con, load("session_header"), {"session_id": session_id}, f"reading session {session_id}"
        )
    return frame if frame.height else None


TERMINAL_STATUSES: Final = ("completed", "failed", "canceled", "abandoned")


def terminal_sessions(
    source: Source, *, before: dt.datetime | None = None, session_id: str | None = None
) -> pl.DataFrame:
    """Sessions in a terminal status (TERMINAL_STATUSES) whose last activity is before
    ``before`` (any age when None), optionally one ``session_id``: what retention may
    delete (terminal_sessions.sql)."""
    with borrow(source) as con:
        return _frame(
            con,
            load("terminal_sessions"),
            {"before": before, "session_id": session_id},
            "reading terminal sessions",
        )


def session_actions(source: Source, session_id: str) -> pl.DataFrame:
    """One session's actions by sequence, unnumbered ones last: the ``actions`` columns,
    then ``SESSION_ACTION_EXTRA_COLUMNS`` (how the call ended in words, and a held call's
    approval outcome and reason from the ``approvals`` view; session_actions.sql)."""
    with borrow(source) as con:
        return _frame(
            con,
            load("session_actions"),
            {"session_id": session_id},
            f"reading the actions of session {session_id}",
        )


def session_control_history(source: Source, session_id: str) -> pl.DataFrame:
    """One session's pause / resume / cancel events in order: action, changed_by,
    changed_at, reason."""
    with borrow(source) as con:
        return _frame(
            con,
            load("session_control_history"),
            {"session_id": session_id},
            f"reading the control history of session {session_id}",
        )


def session_trace(source: Source, session_id: str, only: str = "all") -> pl.DataFrame:
    """One session's activity in order: LLM steps (model, tokens, prompt and output where
    recorded), agent invocations, tool calls, pause / resume / cancel / complete, the
    final output and the session's end (analytics/trace.py). ``only``: one of
    TRACE_FILTERS (all, reasoning: the model's steps and the final output; tools: the
    tool calls); control events and the end are kept by every filter.

    Example::

        analytics.session_trace("tooltrail-data", "sess-42", only="reasoning")
    """
    _choice("only", only, TRACE_FILTERS)
    with borrow(source) as con:
        frame = _frame(
            con,
            load("session_trace"),
            {"session_id": session_id},
            f"reading the trace of session {session_id}",
        )
    return build_trace(frame, only)


def blast_radius_stats(
    source: Source = None, by: str = "agent", *, since: Since = None
) -> pl.DataFrame:
    """Actions per blast-radius class grouped ``by`` agent, tool, repo or day.

    Columns: ``<by>`` (the group; ``day`` is a UTC ``YYYY-MM-DD``), actions, low, medium,
    high, critical, unrated, max_blast_radius. Days in order; other groups busiest first.
    """
    _choice("by", by, BLAST_RADIUS_GROUPS)
    params = {"by": by, "since": parse_since(since)}
    with borrow(source) as con:
        frame = _frame(con, load("blast_radius_stats"), params, f"blast radius by {by}")
    return frame.rename({"key": by})


TOOL_CHANGE_COLUMNS: Final = (
    "server",
    "tool",
    "definition_hash",
    "first_call_at",
    "last_call_at",
    "calls",
    "sessions",
    "clients",
    "allows",
    "denies",
    "rewrites",
    "approvals",
    "undecided",
    "got",
    "pin_status",
)


def tool_changes(
    source: Source = None, *, since: Since = None, server: str | None = None
) -> pl.DataFrame:
    """Calls to tools whose definition changed since they were pinned (the gateway's flag
    on landed actions), one row per server, tool and definition hash, latest first:
    ``TOOL_CHANGE_COLUMNS`` (sql/tool_changes.sql). ``pin_status`` says what the data
    directory's pins (``tool-pins.sqlite``, read only) hold for that definition now:
    ``changed`` (not accepted yet), ``accepted`` (pinned since), ``superseded`` (another
    definition followed) or null (no pins here, or the server's tools are not pinned).

    Example: ``tool_changes("tooltrail-data", since="7d")``.
    """
    params = {"since": parse_since(since), "server": server}
    with borrow(source) as con:
        frame = _frame(con, load("tool_changes"), params, "reading tool-definition changes")
        root = data_dir_of(con)
    return frame.with_columns(pl.Series("pin_status", _pin_status(root, frame), dtype=pl.String))


def _pin_status(root: Path | None, frame: pl.DataFrame) -> list[str | None]:
    """Each change's state in the pins the gateway keeps (tooltrail.gateway.pins)."""
    from tooltrail.errors import StoreError
    from tooltrail.gateway.pins import PINS_FILE, PinStore

    if root is None or frame.height == 0 or not (root / PINS_FILE).exists():
        return [None] * frame.height
    try:
        store = PinStore(root, create=False)
    except StoreError:
        return [None] * frame.height  # unreadable pins: the landed record still stands
    try:
        pins = {(p.server, p.tool): p for p in store.rows()}
    except StoreError:
        pins = {}
    finally:
        store.close()
    out: list[str | None] = []
    for server, tool, digest in frame.select("server", "tool", "definition_hash").iter_rows():
        pin = pins.get((server, tool))
        if pin is None or digest is None:
            out.append(None)
        elif pin.changed_to == digest:
            out.append("changed")
        elif pin.hash == digest:
            out.append("accepted")
        else:
            out.append("superseded")
    return out


def approval_history(
    source: Source = None,
    status: str = "all",
    *,
    since: Since = None,
    session_id: str | None = None,
    limit: int | None = None,
) -> pl.DataFrame:
    """Approval requests (``approvals`` columns), newest first.

    ``status``: ``all`` or one outcome (pending, approved, denied, expired,
    not_requested); ``since``: requested at or after; ``session_id``: one session's.
    """
    _choice("status", status, APPROVAL_STATUSES)
    params = {
        "outcome": None if status == "all" else status,
        "since": parse_since(since),
        "session_id": session_id,
        "limit": _count("limit", limit),
    }
    with borrow(source) as con:
        return _frame(con, load("approval_history"), params, "reading approval history")


def approval_stats(source: Source = None, by: str = "rule", *, since: Since = None) -> pl.DataFrame:
    """Requests, outcomes, share expired, median and p95 time to decision (ms) per
    ``by`` = rule, agent, approver or tool."""
    _choice("by", by, APPROVAL_GROUPS)
    params = {"by": by, "since": parse_since(since)}
    with borrow(source) as con:
        frame = _frame(con, load("approval_stats"), params, f"approval statistics by {by}")
    return frame.rename({"key": by})


def run_query(source: Source, sql: str, *, limit: int | None = None) -> pl.DataFrame:
    """Run one read-only query over the views (see guard.py for what is allowed)."""
    statement = check_read_only(sql)
    _count("limit", limit)
    with borrow(source) as con:

        def result() -> pl.DataFrame:
            relation = con.sql(statement)
            if relation is None:  # pragma: no cover - the guard admits only queries
                raise QueryError("the statement returned no rows")
            if limit is not None:
                relation = relation.limit(limit)
            frame: pl.DataFrame = _showable(relation).pl()
            return frame

        try:
            return _replanned(con, result)
        except QueryError:
            raise
        except duckdb.Error as e:
            raise_query_error(e, "the query")
        except Exception as e:  # a result type polars cannot hold: say so, no traceback
            raise QueryError(f"the query's result cannot be shown: {e}") from e


def landed_span_ids(source: Source, span_ids: list[str]) -> set[tuple[str, str]]:
    """The ``(trace_id, span_id)`` pairs among ``span_ids`` already landed."""
    if not span_ids:
        return set()
    with borrow(source) as con:
        try:
            rows = con.sql(load("landed_span_ids"), params={"span_ids": span_ids}).fetchall()
        except duckdb.Error as e:
            raise_query_error(e, "reading the landed span ids")
    return {(str(t), str(s)) for t, s in rows}


def _showable(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """INTERVAL columns as text ("00:00:05.25"): polars cannot read Arrow's interval type,
    and an interval is what ``last_action_at - started_at`` gives."""
    types = [str(t) for t in relation.types]
    if not any(t == "INTERVAL" for t in types):
        return relation
    columns = []
    for name, kind in zip(relation.columns, types, strict=True):
        quoted = '"' + name.replace('"', '""') + '"'
        columns.append(f"CAST({quoted} AS VARCHAR) AS {quoted}" if kind == "INTERVAL" else quoted)
    return relation.project(", ".join(columns))


__all__ = [
    "APPROVAL_GROUPS",
    "APPROVAL_STATUSES",
    "BLAST_RADIUS_GROUPS",
    "GOVERNED_BY",
    "SESSION_ACTION_EXTRA_COLUMNS",
    "SESSION_STATUSES",
    "TOOL_CHANGE_COLUMNS",
    "Since",
    "Source",
    "approval_history",
    "approval_stats",
    "blast_radius_stats",
    "borrow",
    "count_sessions",
    "landed_span_ids",
    "parse_since",
    "run_query",
    "session",
    "session_actions",
    "session_control_history",
    "sessions",
    "tool_changes",
]
