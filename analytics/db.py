"""DuckDB connections with the SPEC §3 views over a data directory, and ``tooltrail.duckdb``.

Views (documented column by column in docs/DATA.md):

- ``spans``: ``read_parquet(<data>/spans/date=*/*.parquet)`` with hive partitioning and
  union_by_name, every landed row, times a producer cannot have meant made null
  (sql/span_columns.sql, ``time_flag``); a typed zero-row table while no file exists
  (DuckDB errors on a glob that matches nothing);
- ``actions``: tool-call spans, one row per (session_id, trace_id, span_id): copies
  landed more than once are reduced to the winning one (sql/unique_spans.sql);
- ``sessions``: per-session totals, each span once (from the session index plus newer
  files when a valid index exists, else from all spans) joined with the live control
  store;
- ``approvals``: REQUIRE_APPROVAL actions (one row per span) joined with the control
  store's requests;
- ``control_approvals`` / ``control_sessions`` / ``control_events``: the control store's
  rows (see control.py).

A connection from :func:`connect` is in memory; its views follow the files on disk:
every query function calls :func:`refresh`, which re-plans the views when files were
landed or compacted (or the index rebuilt) since, and reloads the control store.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import duckdb

from tooltrail import config
from tooltrail.analytics.control import (
    CONTROL_APPROVALS_SCHEMA,
    CONTROL_EVENTS_SCHEMA,
    CONTROL_SESSIONS_SCHEMA,
    ControlLoader,
    conform,
    default_control_loader,
)
from tooltrail.analytics.engine import (
    SPANS_VIEW_SCHEMA,
    base_connection,
    copy_arrow,
    create_empty_spans,
    data_root,
    raise_query_error,
    span_files,
    spans_glob,
    vanished_file,
)
from tooltrail.analytics.index import (
    NO_COPIES,
    SESSION_INDEX_FILE,
    SessionIndex,
    delta_spans_view,
    read_index,
    session_partials,
    unique_spans,
)
from tooltrail.analytics.sqlfiles import Fragment, ident, literal, literal_list, load, render
from tooltrail.collector.duckdb_file import STAMP_FILE, views_stamp
from tooltrail.collector.writer import fsync_path
from tooltrail.errors import QueryError

IDLE_WINDOW: Final = dt.timedelta(minutes=5)
# Re-planning after a span file vanished under compaction (see refresh).
_REPLAN_ATTEMPTS: Final = 8
_REPLAN_PAUSE_S: Final = 0.01
# Temp files of a build killed midway are hidden; older ones are swept by the next build.
_STALE_TEMP_S: Final = 3600.0

SESSIONS_COLUMNS: Final = (
    "session_id",
    "agent_name",
    "status",
    "action_count",
    "started_at",
    "last_action_at",
    "last_activity_at",
    "repos",
    "allows",
    "denies",
    "rewrites",
    "approvals",
    "undecided",
    "total_actions",
    "max_blast_radius",
    "low",
    "medium",
    "high",
    "critical",
    "errors",
    "input_tokens",
    "output_tokens",
    "parent_session_id",
    "trigger",
    "governed_by",
    "mcp_client_name",
    "mcp_client_version",
    "changed_tool_calls",
    "claimed_calls",
    "pending_approvals",
    "span_count",
    "foreign_spans",
    "control_state",
    "control_changed_by",
    "control_changed_at",
    "status_basis",
    "tags",
    "ended_at",
    "end_outcome",
    "end_source",
    "end_reason",
    "completed_by",
    "completed_at",
    "completion_reason",
)
APPROVALS_COLUMNS: Final = (
    "approval_id",
    "session_id",
    "agent_name",
    "tool_name",
    "outcome",
    "requested_at",
    "expires_at",
    "decided_at",
    "decided_by",
    "reason",
    "wait_ms",
    "policy_rule",
    "policy_reason",
    "blast_radius",
    "enforced",
    "target_repo",
    "target_branch",
    "action_summary",
    "arguments",
    "trace_id",
    "span_id",
    "landed",
    "in_store",
)


@dataclass
class _State:
    """What :func:`refresh` needs to keep a connection's views current."""

    root: Path
    control: ControlLoader
    plan: object = field(default=None)  # the files / index the views were planned for


# Per connection opened by connect(); weak, so a dropped connection leaves nothing behind.
_STATES: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, _State] = weakref.WeakKeyDictionary()


def idle_window_from_env() -> dt.timedelta:
    """``$TOOLTRAIL_IDLE_WINDOW`` as a duration, else the default 5 minutes."""
    from tooltrail.policy.durations import parse_duration

    text = os.environ.get(config.ENV_IDLE_WINDOW, "").strip()
    if not text:
        return IDLE_WINDOW
    try:
        return dt.timedelta(seconds=parse_duration(text))
    except (ValueError, OverflowError) as e:
        raise QueryError(f"${config.ENV_IDLE_WINDOW}: {e}") from None


def connect(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = True,
    idle_window: dt.timedelta | None = None,
    control: ControlLoader | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the views over ``data_dir``.

    ``read_only`` (the default) locks the connection down after the views exist: no file
    outside the data directory can be read or written, no extension installed or loaded,
    no setting changed back. Refusing write *statements* is :func:`run_query`'s job.
    ``idle_window``: how long after its last activity a session still counts as active
    (and one that promised an end record and has none is abandoned after it); default
    ``$TOOLTRAIL_IDLE_WINDOW`` (a duration: 30s, 10m), else 5 minutes.
    ``control``: where approvals / session controls come from (default: control.sqlite).
    """
    if idle_window is None:
        idle_window = idle_window_from_env()
    if idle_window <= dt.timedelta(0):
        raise QueryError(f"idle_window must be positive, got {idle_window}")
    root = data_root(data_dir)
    con = base_connection()
    try:
        con.execute(load("idle_window"), {"idle_window": idle_window})
        create_empty_spans(con)
        _STATES[con] = _State(root, control or default_control_loader)
        refresh(con)
        if read_only:
            # A trailing separator: allow the directory's contents, not its name as a prefix.
            # Only the landed record: the stores beside it hold secrets (webhook secrets,
            # credential hashes, sealed keys) that a dashboard viewer must not query.
            spans = f"{root / config.SPANS_DIR}{os.sep}"
            index = str(root / SESSION_INDEX_FILE)
            con.execute(
                render(
                    "harden",
                    allowed=literal_list([spans]),
                    allowed_files=literal_list([index]),
                )
            )
    except duckdb.Error as e:
        con.close()
        raise_query_error(e, f"opening the views over {root}")
    except BaseException:
        con.close()
        raise
    return con


def data_dir_of(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The data directory a :func:`connect` connection reads (None for any other)."""
    state = _STATES.get(con)
    return state.root if state is not None else None


def refresh(con: duckdb.DuckDBPyConnection, *, replan: bool = False) -> None:
    """Bring the views of a :func:`connect` connection up to date with the files on disk
    and the control store (``replan``: define them again even if no file changed). A
    connection opened otherwise (e.g. on ``tooltrail.duckdb``) has fixed views and is left
    alone.

    Planning reads the files it lists (DuckDB opens them to bind a view), and compaction
    may replace one between the listing and the read: then the files are listed again and
    the views planned anew, as a query does (queries.py), a few times before giving up.
    """
    state = _STATES.get(con)
    if state is None:
        return
    if replan:
        state.plan = None
    for attempt in range(_REPLAN_ATTEMPTS):
        try:
            _refresh_once(con, state)
            return
        except duckdb.Error as e:
            # Views may be half-defined now: the next attempt (or refresh) defines them all.
            state.plan = None
            if not vanished_file(e) or attempt == _REPLAN_ATTEMPTS - 1:
                raise_query_error(e, f"refreshing the views over {state.root}")
            time.sleep(_REPLAN_PAUSE_S * attempt)  # another swap under way: let it finish


def _refresh_once(con: duckdb.DuckDBPyConnection, state: _State) -> None:
    files = span_files(state.root)
    index = read_index(state.root) if files else None
    delta = index.delta(state.root, files) if index is not None else None
    usable = index if delta is not None else None
    plan = (tuple(files), usable.stamp if usable is not None else None)
    _load_control(con, state)
    if plan != state.plan:
        _define_views(con, state.root, files, usable, delta or [])
        state.plan = plan


def build_duckdb_file(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``<data>/tooltrail.duckdb``: the same views, with absolute paths, for analysts.

    Open it read-only from anywhere: ``duckdb.connect(path, read_only=True)``. Its views
    read the span files live (new files show up), but compute sessions from all spans (no
    index) and hold no control-store rows (the live store is joined by :func:`connect`
    only). Built on an empty directory, its ``spans`` view stays empty until rebuilt,
    which the first landing starts (collector/duckdb_file.py, with the stamp written
    here). The file is written under a temporary name and renamed over the old one.
    """
    root = data_root(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    target = root / config.DUCKDB_FILE
    _sweep_stale_temps(root, target.name)
    tmp = root / f".{target.name}.{secrets.token_hex(4)}.tmp"
    files = span_files(root)
    try:
        con = base_connection(str(tmp))
        try:
            create_empty_spans(con)
            copy_arrow(con, "control_approvals", CONTROL_APPROVALS_SCHEMA.empty_table())
            copy_arrow(con, "control_sessions", CONTROL_SESSIONS_SCHEMA.empty_table())
            copy_arrow(con, "control_events", CONTROL_EVENTS_SCHEMA.empty_table())
            _define_views(con, root, files, None, [], materialize=False)
            con.execute("CHECKPOINT")
        except duckdb.Error as e:
            raise_query_error(e, f"building {target}")
        finally:
            con.close()
        fsync_path(tmp)
        tmp.replace(target)
        fsync_path(root)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    # Built over the glob, the file is current until the SQL or the directory changes.
    # Built before any span file existed, its `spans` is a fixed empty table: no stamp,
    # so the first landing rebuilds it (collector/duckdb_file.py).
    if files:
        _write_small_atomic(root / STAMP_FILE, views_stamp(root))
    else:
        (root / STAMP_FILE).unlink(missing_ok=True)
    return target


def _write_small_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _define_views(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    files: list[tuple[Path, int]],
    index: SessionIndex | None,
    delta: list[Path],
    *,
    materialize: bool = True,
) -> None:
    """Define every view. ``materialize``: keep the spans landed more than once in a
    table of this connection, found once per plan (the files are immutable) instead of on
    every query; tooltrail.duckdb (``False``) cannot, its views must follow new files."""
    columns = render("span_columns")
    if files:
        con.execute(render("spans_view", columns=columns, spans_glob=literal(spans_glob(root))))
    else:
        con.execute(render("spans_view_empty", columns=columns))
    con.execute(load("span_subsets_view"))
    if index is not None and delta:
        con.execute(delta_spans_view(str(p) for p in delta))
        touched_copies = render("span_copies", input=ident("_touched_spans"))
        con.execute(render("touched_spans_view", copies=touched_copies))
    copies = _copies_body(index, delta)
    if materialize:
        con.execute(render("copies_table", body=copies))
        known = render("copies_table_keys")
        if not con.sql(load("copies_table_any")).fetchall():
            known = NO_COPIES  # the usual case: the views read the spans as they are
    else:
        con.execute(render("span_copies_view", body=copies))
        known = render("span_copies_known")
    con.execute(render("session_totals_view", body=_totals_body(con, index, delta, known)))
    con.execute(render("actions_view", unique=unique_spans("_tool_spans", known)))
    con.execute(load("sessions_view"))
    con.execute(render("approvals_view", unique=unique_spans("_held_spans", known)))


def _totals_body(
    con: duckdb.DuckDBPyConnection,
    index: SessionIndex | None,
    delta: list[Path],
    known: Fragment,
) -> Fragment:
    """Session totals: from all spans (``known``: their copies), the index, or the index
    and the sessions that the files landed since touch."""
    if index is None:
        return session_partials("spans", known)
    index_file = literal(str(index.path))
    if not delta:
        return render("session_index_scan", index_file=index_file)
    # Decided once per plan (the files are immutable): in the usual case no touched
    # session has copies, and the totals do not read `spans` at all.
    recount = [str(r[0]) for r in con.sql(load("touched_copy_sessions")).fetchall()]
    if any("\x00" in sid for sid in recount):  # an id no SQL literal can hold:
        return session_partials("spans", known)  # without the index (slower, never wrong)
    merged = render(
        "session_merge",
        index_file=index_file,
        # no copies among them outside the sessions recounted below (`recount` covers
        # every touched session with one, and the merge leaves those out)
        delta=session_partials("_delta_spans", NO_COPIES),
        recount=literal_list(recount),
    )
    if not recount:
        return merged
    con.execute(render("recount_spans_view", ids=literal_list(recount)))
    return render("session_recount", merged=merged, recounted=session_partials("_recount_spans"))


def _copies_body(index: SessionIndex | None, delta: list[Path]) -> Fragment:
    """The spans landed more than once: found among all spans without an index; else
    recorded in the index, and among all spans of the sessions touched since."""
    if index is None:
        return render("span_copies", input=ident("spans"))
    indexed = render("index_copies", index_file=literal(str(index.path)))
    if not delta:
        return indexed
    return render("span_copies_merge", indexed=indexed)


def _load_control(con: duckdb.DuckDBPyConnection, state: _State) -> None:
    tables = state.control(state.root)
    # Registered Arrow tables: replaced on every refresh, so the views see the live store.
    con.register("control_approvals", conform(tables.approvals, CONTROL_APPROVALS_SCHEMA))
    con.register("control_sessions", conform(tables.sessions, CONTROL_SESSIONS_SCHEMA))
    con.register("control_events", conform(tables.events, CONTROL_EVENTS_SCHEMA))


def _sweep_stale_temps(root: Path, name: str) -> None:
    cutoff = time.time() - _STALE_TEMP_S
    for stale in root.glob(f".{name}.*.tmp*"):
        try:
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
        except FileNotFoundError:
            continue


__all__ = [
    "APPROVALS_COLUMNS",
    "IDLE_WINDOW",
    "SESSIONS_COLUMNS",
    "SPANS_VIEW_SCHEMA",
    "build_duckdb_file",
    "connect",
    "data_dir_of",
    "refresh",
]
