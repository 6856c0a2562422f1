"""Following a data directory's events (the model: :mod:`tooltrail.events`).

:class:`EventSource` follows one data directory by polling what lands there:

* actions: new Parquet files under ``<data>/spans/date=*/``. Files are immutable once
  visible, so a file is read once; the position is the file's (mtime, name) and the row
  index in it. Partitions are listed again only when their directory changed. Files a
  compaction wrote (``compact-*``) are skipped: their rows landed, and were sent, before.
* session control: ``control_events`` rows in ``<data>/control.sqlite`` (an increasing id),
  and operators' completions, ``session_completions`` rows (an increasing id) that the
  store believes (``ControlStore.completions``: a row equal to its signed ledger entry; a
  row written by hand is not sent).
* approvals: the ``approvals`` table, by ``requested_at`` (requested) and ``decided_at``
  (decided, expired, abandoned). Rows are read again over a short window below the
  position, so a row whose commit came a little after its own timestamp is not missed.
* tools: ``tool_pins.pinned_at`` and ``tool_changes.seen_at`` in ``<data>/tool-pins.sqlite``.

Nothing here opens a store for writing, except that a source made with ``settle=True``
(the collector's stream, the webhook deliverer) settles requests past their deadline once
a second (what ``tooltrail approvals`` does on every read), so "expired" is sent when it
happens rather than when someone next looks.

:func:`follow` turns a source into an iterator of events (and ``None`` heartbeat ticks);
:func:`sse_stream` into Server-Sent Events bytes, for any HTTP server (the collector's
``GET /v1/events``; an ASGI app can iterate it in a thread) to write.

One file past 600 lines: the source follows four kinds of record (span files, control
events and completions, approvals, tool pins) behind one cursor whose fields advance together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from tooltrail.config import CONTROL_FILE, SPANS_DIR
from tooltrail.events import Cursor, Event, EventFilter, iso

PINS_FILE: Final = "tool-pins.sqlite"  # gateway.pins.PINS_FILE (not imported: no gateway dep)
COMPACTED_PREFIX: Final = "compact-"
# A row is read again while its timestamp is this close below the position: a commit can
# come after the timestamp its writer took (busy retries), and must not be skipped.
SLACK_S: Final = 5.0
# A partition directory changed this recently is listed again even when its mtime looks
# unchanged (mtime has the kernel clock's coarse resolution).
_RECENT_DIR_NS: Final = 2_000_000_000
_WHOLE_FILE: Final = 1 << 62
_SETTLE_EVERY_S: Final = 1.0
_PAST_ALL_KEYS: Final = "\U0010ffff"
_ACTION_COLUMNS: Final = (
    "span_type",
    "end_time",
    "start_time",
    "session_id",
    "agent_name",
    "tool_name",
    "mcp_server",
    "action_summary",
    "decision",
    "policy_rule",
    "enforced",
    "blast_radius",
    "status_code",
    "approval_id",
    "trace_id",
    "span_id",
    "sequence",
)
# Read when the file has them (landed before they existed: absent).
_OPTIONAL_COLUMNS: Final = ("source", "verified")
_SESSION_KINDS: Final = {"pause": "session.paused", "resume": "session.resumed"}


def owned_sessions(data_dir: Path, agent: str) -> frozenset[str]:
    """The session keys ``agent`` holds (``<data>/access.sqlite``), read-only."""
    from tooltrail.access import access_path

    rows = _read_rows(
        access_path(data_dir), "SELECT session_id FROM session_owners WHERE agent = ?", (agent,)
    )
    return frozenset(str(r[0]) for r in rows)


# --- reading the stores -------------------------------------------------------------------


def _read_rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Rows of one query on a store opened read-only for it (see _StoreReader)."""
    reader = _StoreReader(path)
    try:
        return reader.rows(sql, params)
    finally:
        reader.close()


class _StoreReader:
    """A SQLite store read by a follower: one read-only connection kept open, and queries
    skipped while the store's files are unchanged (a poll of an idle store costs a stat,
    not a query). Asked again at least once a second whatever the files say: a commit
    into a reset WAL can leave its size, and its mtime within the clock's tick, as they
    were. No rows when the store (or its table) is not there yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._con: sqlite3.Connection | None = None
        self._signature: tuple[int, ...] | None = None
        self._asked = 0.0

    def changed(self) -> bool:
        signature: tuple[int, ...] = ()
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = path.stat()
            except FileNotFoundError:
                signature += (0, 0, 0)
                continue
            signature += (st.st_ino, st.st_mtime_ns, st.st_size)
        now = time.monotonic()
        if signature == self._signature and now - self._asked < 1.0:
            return False
        self._signature, self._asked = signature, now
        return True

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self._con is None:
            if not self.path.exists():
                return []
            try:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._con = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
            except sqlite3.Error:
                return []
            self._con.row_factory = sqlite3.Row
        try:
            return list(self._con.execute(sql, params))
        except sqlite3.OperationalError as e:
            if "no such table" in str(e) or "no such column" in str(e):
                self.close()  # not made yet: ask again with a fresh connection
                return []
            raise

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class _Watermark:
    """Rows ordered by (timestamp, key) past a position, each returned once: the query
    reaches ``SLACK_S`` below the position and rows already returned are remembered."""

    def __init__(self, mark: tuple[float, str]) -> None:
        self.mark = mark
        self._seen: dict[tuple[float, str], None] = {}
        self._started = False

    def floor(self) -> float:
        return self.mark[0] - SLACK_S

    def admit(self, rows: Iterable[tuple[float, str, Any]]) -> list[tuple[float, str, Any]]:
        out = []
        for at, key, row in sorted(rows, key=lambda r: (r[0], r[1])):
            mark = (at, key)
            if mark in self._seen:
                continue
            self._seen[mark] = None
            if not self._started and mark <= self.mark:
                continue  # before where the reader started: read already
            out.append((at, key, row))
        self._started = True
        floor = self.floor()
        for old in [m for m in self._seen if m[0] < floor]:
            del self._seen[old]
        return out


@dataclass
class _Pending:
    """An event of one source and how to advance the cursor once it is sent."""

    event: Event
    advance: Callable[[Cursor], Cursor]


class _SpanFiles:
    """New Parquet files under spans/, in (mtime, name) order, each once."""

    def __init__(self, root: Path, start: tuple[int, str, int]) -> None:
        self.root = root
        self.start = start
        self._dirs: dict[str, int] = {}
        self._known: set[str] = set()
        self._first = True

    def new(self) -> list[tuple[int, str, int]]:
        """(mtime ns, path under spans/, first row to read) of each file to read."""
        found: list[tuple[int, str, int]] = []
        now = time.time_ns()
        try:
            parts = list(os.scandir(self.root))
        except FileNotFoundError:
            parts = []
        for part in parts:
            if not part.name.startswith("date=") or not part.is_dir():
                continue
            try:
                mtime = part.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if self._dirs.get(part.name) == mtime and now - mtime > _RECENT_DIR_NS:
                continue
            self._dirs[part.name] = mtime
            found += self._scan(part)
        self._first = False
        return sorted(found)

    def _scan(self, part: os.DirEntry[str]) -> list[tuple[int, str, int]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(part.path):
                name = entry.name
                rel = f"{part.name}/{name}"
                if rel in self._known or name.startswith(".") or not name.endswith(".parquet"):
                    continue
                try:
                    mtime = entry.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                self._known.add(rel)
                if name.startswith(COMPACTED_PREFIX):
                    continue
                first = 0
                if self._first:
                    s_mtime, s_rel, s_row = self.start
                    if (mtime, rel) < (s_mtime, s_rel):
                        continue
                    if (mtime, rel) == (s_mtime, s_rel):
                        first = s_row + 1
                out.append((mtime, rel, first))
        return out


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value) if value is not None else 0.0


def _action(row: dict[str, Any]) -> Event:
    tool = row.get("tool_name")
    summary = row.get("action_summary") or tool or "(tool call)"
    detail = {
        "tool": tool,
        "server": row.get("mcp_server"),
        "blast_radius": row.get("blast_radius"),
        "rule": row.get("policy_rule"),
        "enforced": row.get("enforced"),
        "status": row.get("status_code"),
        "approval_id": row.get("approval_id"),
        "sequence": row.get("sequence"),
        "trace_id": row.get("trace_id"),
        "span_id": row.get("span_id"),
        # provenance: False for a decision an unauthenticated sender claimed
        "verified": row.get("verified"),
        "source": row.get("source"),
    }
    return Event(
        kind="action",
        time=_epoch(row.get("end_time") or row.get("start_time")),
        session=row.get("session_id"),
        agent=row.get("agent_name"),
        decision=row.get("decision"),
        summary=str(summary),
        detail=detail,
    )


def _approval_detail(r: sqlite3.Row) -> dict[str, Any]:
    return {
        "approval_id": r["approval_id"],
        "tool": r["tool_name"],
        "server": r["mcp_server"],
        "rule": r["policy_rule"],
        "blast_radius": r["blast_radius"],
        "status": r["status"],
    }


def _requested(r: sqlite3.Row) -> Event:
    reason = f": {r['reason']}" if r["reason"] else ""
    return Event(
        kind="approval.requested",
        time=float(r["requested_at"]),
        session=r["session_id"],
        agent=r["agent_name"],
        decision="REQUIRE_APPROVAL",
        summary=f"{r['tool_name']} needs approval{reason}",
        detail={**_approval_detail(r), "expires_at": iso(float(r["expires_at"]))},
    )


def _settled(r: sqlite3.Row) -> Event:
    status = r["status"]
    decided = status in ("approved", "denied")
    if decided:
        summary = f"{r['tool_name']} {status} by {r['decided_by'] or 'unknown'}"
        decision = "ALLOW" if status == "approved" else "DENY"
    else:
        summary = f"{r['tool_name']} {status}: {r['decision_reason'] or 'no decision in time'}"
        decision = "DENY"  # nobody approved it: the call does not run as asked
    return Event(
        kind="approval.decided" if decided else "approval.expired",
        time=float(r["decided_at"]),
        session=r["session_id"],
        agent=r["agent_name"],
        decision=decision,
        summary=summary,
        detail={**_approval_detail(r), "decided_by": r["decided_by"]},
    )


# --- the source ---------------------------------------------------------------------------


class EventSource:
    """Follows one data directory from ``cursor`` (see the module's docstring)."""

    def __init__(self, data_dir: Path, cursor: Cursor | None = None, *, settle: bool = False):
        self.data_dir = data_dir
        self.cursor = cursor if cursor is not None else head(data_dir)
        self._settle = settle
        self._settled_at = 0.0
        c = self.cursor
        self._files = _SpanFiles(data_dir / SPANS_DIR, c.spans)
        self._requested = _Watermark(c.requested)
        self._settled = _Watermark(c.settled)
        self._pinned = _Watermark(c.pinned)
        self._changed = _Watermark(c.changed)
        self._control = _StoreReader(data_dir / CONTROL_FILE)
        self._pins = _StoreReader(data_dir / PINS_FILE)
        if c.completed < 0:  # an id from before completions were streamed: from now on
            self.cursor = replace(c, completed=_last_completion(data_dir))

    def close(self) -> None:
        """Close the stores' connections (a source is also closed when collected)."""
        self._control.close()
        self._pins.close()

    def poll(self) -> list[Event]:
        """Every event that landed since the last poll, in time order across sources (each
        source's own order kept); each event's id is the cursor just past it."""
        self._settle_due()
        sources = [self._actions()]
        if self._control.changed():
            sources += [self._controls(), self._completions(), *self._approvals()]
        if self._pins.changed():
            sources += self._tools()
        out = []
        cursor = self.cursor
        for item in heapq.merge(*sources, key=lambda p: p.event.time):
            cursor = item.advance(cursor)
            out.append(replace(item.event, id=cursor.encode()))
        self.cursor = cursor
        return out

    def _settle_due(self) -> None:
        now = time.monotonic()
        if not self._settle or now - self._settled_at < _SETTLE_EVERY_S:
            return
        self._settled_at = now
        # Only when a request is due: settling opens the store for writing.
        due = self._control.rows(
            "SELECT 1 FROM approvals WHERE status = 'pending' AND (expires_at <= ?"
            " OR (lease_until IS NOT NULL AND lease_until < ?)) LIMIT 1",
            (time.time(), time.time()),
        )
        if not due:
            return
        from tooltrail.control import ControlStore
        from tooltrail.errors import TooltrailError

        # Best effort: a busy or read-only store is settled by the next reader instead.
        with (
            contextlib.suppress(TooltrailError, sqlite3.Error, OSError),
            ControlStore(self.data_dir) as store,
        ):
            store.expire_due()

    def _actions(self) -> list[_Pending]:
        import pyarrow.parquet as pq

        out: list[_Pending] = []
        for mtime, rel, first in self._files.new():
            path = self.data_dir / SPANS_DIR / rel
            try:
                names = set(pq.read_schema(path).names)
                wanted = [c for c in (*_ACTION_COLUMNS, *_OPTIONAL_COLUMNS) if c in names]
                table = pq.read_table(path, columns=wanted)
            except (FileNotFoundError, OSError, ValueError):
                continue  # removed meanwhile (compaction), or not readable: nothing to send
            # In file order: the position is a row index, so a resumed reader goes on
            # from the next row (a file is sorted by session, not time: merged as it is).
            for i, row in enumerate(table.to_pylist()):
                if i >= first and row.get("span_type") == "tool":
                    out.append(_Pending(_action(row), _spans_to(mtime, rel, i)))
        return out

    def _controls(self) -> list[_Pending]:
        rows = self._control.rows(
            "SELECT event_id, session_id, action, actor, at, reason FROM control_events"
            " WHERE event_id > ? ORDER BY event_id LIMIT 10000",
            (self.cursor.control,),
        )
        out = []
        for r in rows:
            kind = _SESSION_KINDS.get(r["action"], "session.canceled")
            why = f": {r['reason']}" if r["reason"] else ""
            event = Event(
                kind=kind,
                time=float(r["at"]),
                session=r["session_id"],
                agent=None,
                decision=None,
                summary=f"session {kind.split('.')[1]} by {r['actor']}{why}",
                detail={"actor": r["actor"], "reason": r["reason"]},
            )
            out.append(_Pending(event, _control_to(int(r["event_id"]))))
        return out

    def _completions(self) -> list[_Pending]:
        rows = self._control.rows(
            "SELECT completion_id, session_id, actor, at, reason FROM session_completions"
            " WHERE completion_id > ? ORDER BY completion_id LIMIT 10000",
            (self.cursor.completed,),
        )
        believed = _believed_completions(self.data_dir, {str(r["session_id"]) for r in rows})
        out = []
        for r in rows:
            if (r["session_id"], r["actor"], r["at"], r["reason"]) not in believed:
                continue  # written or edited by hand: `tooltrail verify` names it
            event = Event(
                kind="session.completed",
                time=float(r["at"]),
                session=r["session_id"],
                agent=None,
                decision=None,
                summary=f"session completed by {r['actor']}: {r['reason']}",
                detail={"actor": r["actor"], "reason": r["reason"]},
            )
            out.append(_Pending(event, _completed_to(int(r["completion_id"]))))
        return out

    def _approvals(self) -> list[list[_Pending]]:
        requested = self._control.rows(
            "SELECT * FROM approvals WHERE requested_at >= ? ORDER BY requested_at",
            (self._requested.floor(),),
        )
        settled = self._control.rows(
            "SELECT * FROM approvals WHERE decided_at IS NOT NULL AND decided_at >= ?"
            " AND status != 'pending' ORDER BY decided_at",
            (self._settled.floor(),),
        )
        new_requests = self._requested.admit(
            (float(r["requested_at"]), str(r["approval_id"]), r) for r in requested
        )
        new_settled = self._settled.admit(
            (float(r["decided_at"]), str(r["approval_id"]), r) for r in settled
        )
        return [
            [_Pending(_requested(r), _field_to("requested", (at, k))) for at, k, r in new_requests],
            [_Pending(_settled(r), _field_to("settled", (at, k))) for at, k, r in new_settled],
        ]

    def _tools(self) -> list[list[_Pending]]:
        pinned = self._pins.rows(
            "SELECT server, tool, hash, pinned_at FROM tool_pins WHERE pinned_at >= ?",
            (self._pinned.floor(),),
        )
        changed = self._pins.rows(
            "SELECT server, tool, hash, seen_at FROM tool_changes WHERE seen_at >= ?",
            (self._changed.floor(),),
        )
        new_pins = self._pinned.admit(
            (float(r["pinned_at"]), f"{r['server']}\0{r['tool']}\0{r['hash']}", r) for r in pinned
        )
        new_changes = self._changed.admit(
            (float(r["seen_at"]), f"{r['server']}\0{r['tool']}\0{r['hash']}", r) for r in changed
        )
        return [
            [
                _Pending(_tool("tool.pinned", at, r), _field_to("pinned", (at, k)))
                for at, k, r in new_pins
            ],
            [
                _Pending(_tool("tool.changed", at, r), _field_to("changed", (at, k)))
                for at, k, r in new_changes
            ],
        ]


def _tool(kind: str, at: float, r: sqlite3.Row) -> Event:
    what = "pinned" if kind == "tool.pinned" else "changed its definition"
    return Event(
        kind=kind,
        time=at,
        session=None,
        agent=None,
        decision=None,
        summary=f"tool {r['tool']} on {r['server']} {what} (sha256 {str(r['hash'])[:16]})",
        detail={"server": r["server"], "tool": r["tool"], "hash": r["hash"]},
    )


def _spans_to(mtime: int, rel: str, row: int) -> Callable[[Cursor], Cursor]:
    return lambda c: replace(c, spans=(mtime, rel, row))


def _control_to(event_id: int) -> Callable[[Cursor], Cursor]:
    return lambda c: replace(c, control=event_id)


def _completed_to(completion_id: int) -> Callable[[Cursor], Cursor]:
    return lambda c: replace(c, completed=completion_id)


def _believed_completions(data_dir: Path, sessions: set[str]) -> set[tuple[Any, ...]]:
    """(session, actor, at, reason) of the completions of ``sessions`` the control store
    believes; none when it cannot be read (fail closed: nothing unverified is sent)."""
    if not sessions:
        return set()
    from tooltrail.control import ControlStore
    from tooltrail.errors import TooltrailError

    believed: set[tuple[Any, ...]] = set()
    with (
        contextlib.suppress(TooltrailError, sqlite3.Error, OSError),
        ControlStore(data_dir) as store,
    ):
        for sid in sessions:
            believed |= {(e.session_id, e.actor, e.at, e.reason) for e in store.completions(sid)}
    return believed


def _last_completion(data_dir: Path, before: float | None = None) -> int:
    sql = "SELECT max(completion_id) FROM session_completions"
    rows = _read_rows(
        data_dir / CONTROL_FILE,
        sql if before is None else sql + " WHERE at < ?",
        () if before is None else (before,),
    )
    return int(rows[0][0] or 0) if rows else 0


def _field_to(name: str, mark: tuple[float, str]) -> Callable[[Cursor], Cursor]:
    return lambda c: replace(c, **{name: max(getattr(c, name), mark)})


def head(data_dir: Path) -> Cursor:
    """The position past everything in ``data_dir`` now (a reader starting "from now"),
    found without reading a Parquet file: the newest file's (mtime, name) as read whole,
    each store's newest id or time."""
    spans = Cursor().spans
    files = _SpanFiles(data_dir / SPANS_DIR, spans).new()
    if files:
        mtime, rel, _ = files[-1]
        spans = (mtime, rel, _WHOLE_FILE)
    control = data_dir / CONTROL_FILE
    pins = data_dir / PINS_FILE

    def newest(path: Path, sql: str) -> tuple[float, str]:
        rows = _read_rows(path, sql)
        value = rows[0][0] if rows else None
        # Past every row at that time, whatever its key.
        return (float(value), _PAST_ALL_KEYS) if value is not None else (0.0, "")

    last_event = _read_rows(control, "SELECT max(event_id) FROM control_events")
    return Cursor(
        spans=spans,
        control=int(last_event[0][0] or 0) if last_event else 0,
        requested=newest(control, "SELECT max(requested_at) FROM approvals"),
        settled=newest(control, "SELECT max(decided_at) FROM approvals"),
        pinned=newest(pins, "SELECT max(pinned_at) FROM tool_pins"),
        changed=newest(pins, "SELECT max(seen_at) FROM tool_changes"),
        completed=_last_completion(data_dir),
    )


# --- following ------------------------------------------------------------------------------


def follow(
    source: EventSource,
    event_filter: EventFilter,
    *,
    keep_following: bool = True,
    poll_s: float = 0.1,
    tick_s: float | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Event | None]:
    """The source's events that pass ``event_filter``; with ``keep_following``, forever
    (until ``stop``), yielding ``None`` after each ``tick_s`` without an event (a writer's
    chance to send a keep-alive or notice that its client is gone)."""
    stop = stop or threading.Event()
    last = time.monotonic()
    owned_at = -1.0
    owned: frozenset[str] | None = None
    while not stop.is_set():
        if event_filter.owned_by is not None and time.monotonic() - owned_at >= 1.0:
            # Re-read each second: a session an agent claims later becomes readable.
            owned = owned_sessions(source.data_dir, event_filter.owned_by)
            owned_at = time.monotonic()
        for event in source.poll():
            if event_filter.passes(event, owned):
                last = time.monotonic()
                yield event
        if not keep_following:
            return
        if tick_s is not None and time.monotonic() - last >= tick_s:
            last = time.monotonic()
            yield None
        stop.wait(poll_s)


def sse_stream(
    source: EventSource,
    event_filter: EventFilter,
    *,
    keep_following: bool = True,
    heartbeat_s: float = 15.0,
    client_gone: Callable[[], bool] | None = None,
    stop: threading.Event | None = None,
    poll_s: float = 0.1,
    retry_ms: int = 1000,
) -> Iterator[bytes]:
    """Server-Sent Events (``text/event-stream``) bytes for any HTTP server to write: an
    ``id``/``event``/``data`` block per event, a ``: keep-alive`` comment after
    ``heartbeat_s`` of silence (so proxies keep the connection and a vanished client shows
    up as a failed write). ``client_gone`` is asked about once a second while idle; the
    stream ends when it says so, or at ``stop``."""
    yield f"retry: {retry_ms}\n\n".encode()
    quiet_since = time.monotonic()
    ticks = follow(
        source,
        event_filter,
        keep_following=keep_following,
        poll_s=poll_s,
        tick_s=min(1.0, heartbeat_s),
        stop=stop,
    )
    for event in ticks:
        if event is not None:
            quiet_since = time.monotonic()
            yield sse_event(event)
            continue
        if client_gone is not None and client_gone():
            return
        if time.monotonic() - quiet_since >= heartbeat_s:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"


def sse_event(event: Event) -> bytes:
    data = json.dumps(event.to_json_dict(), default=str, ensure_ascii=False)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def start_cursor(last_event_id: str | None, since: str | None, data_dir: Path) -> Cursor:
    """Where a reader starts: after ``last_event_id``, else ``since`` ago (a duration such
    as ``10m``, or ``all``), else now. BadInputError for a bad id or duration."""
    from tooltrail.policy.durations import parse_since_seconds

    if last_event_id:
        return Cursor.decode(last_event_id)
    if since:
        seconds = parse_since_seconds(since)
        if seconds is None:
            return Cursor()
        start = time.time() - seconds
        # Control events are positioned by id: the last one before the start.
        before = _read_rows(
            data_dir / CONTROL_FILE,
            "SELECT max(event_id) FROM control_events WHERE at < ?",
            (start,),
        )
        last = int(before[0][0] or 0) if before else 0
        return replace(Cursor.at(start), control=last, completed=_last_completion(data_dir, start))
    return head(data_dir)


__all__ = [
    "EventSource",
    "follow",
    "head",
    "owned_sessions",
    "sse_event",
    "sse_stream",
    "start_cursor",
]
