"""The control plane on the embedded default: ``<data>/control.sqlite`` (stdlib sqlite3, WAL).

Shared by agent processes (they file approval requests and wait on them, and check their
session's state before each call), the CLI and the dashboard (they decide, pause, resume
and cancel). SQLite in WAL mode gives concurrent readers with one writer at a time; every
write is one short ``BEGIN IMMEDIATE`` transaction, and a decision is a conditional
``UPDATE ... WHERE status = 'pending'`` so a request is decided exactly once.

Waiting polls the database on a short interval (sleeping, not spinning): a decision made
by another process is seen within one interval, at a cost of one indexed read each time.

Two hashes bind a request to what runs. ``arguments_hash`` is the SHA-256 of the canonical
JSON of the arguments as stored and shown (after redaction): anyone can recompute it, so a
stored row edited after filing is detectable (``ApprovalRecord.arguments_intact``).
``run_hash`` is the filing agent's keyed digest of the arguments that will really run
(before redaction): only that agent can recompute it, so it reveals nothing about redacted
values, and the agent refuses to run when it no longer matches.

Nothing raw reaches the file (docs/APPROVALS.md, "What the store keeps"): every write
function scrubs what it stores, so every writer (agent, CLI, dashboard, collector) goes
through the same scrubber. Free text (reasons, names, the shown arguments) follows
``$TOOLTRAIL_REDACT``. A session id is a key, so it is always scrubbed, to a fixed point
(``session_key``), on write and on every lookup alike: the agent's raw id, the landed
(scrubbed) id and the stored key all find the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from tooltrail import config
from tooltrail.errors import BadInputError, StoreError
from tooltrail.redact import Redactor, scrub_stable

PENDING: Final = "pending"
APPROVED: Final = "approved"
DENIED: Final = "denied"
EXPIRED: Final = "expired"

RUNNING: Final = "running"
PAUSED: Final = "paused"
CANCELED: Final = "canceled"

SESSION_CANCELED: Final = "session canceled"

DEFAULT_POLL_S: Final = 0.05
DEFAULT_TIMEOUT_S: Final = 600.0

SessionAction = Literal["pause", "resume", "cancel"]
_T = TypeVar("_T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS approvals (
    approval_id     TEXT PRIMARY KEY,
    session_id      TEXT,
    trace_id        TEXT,
    span_id         TEXT,
    agent_name      TEXT,
    tool_name       TEXT NOT NULL,
    mcp_server      TEXT,
    arguments       TEXT NOT NULL,
    arguments_hash  TEXT NOT NULL,
    policy_rule     TEXT,
    reason          TEXT,
    blast_radius    TEXT,
    approvers       TEXT NOT NULL,
    on_timeout      TEXT NOT NULL DEFAULT 'DENY',
    requested_at    REAL NOT NULL,
    expires_at      REAL NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    decided_by      TEXT,
    decided_at      REAL,
    decision_reason TEXT,
    agent_host      TEXT,
    agent_pid       INTEGER,
    run_hash        TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, requested_at);
CREATE INDEX IF NOT EXISTS approvals_session ON approvals (session_id);
CREATE TABLE IF NOT EXISTS session_controls (
    session_id  TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('running', 'paused', 'canceled')),
    changed_by  TEXT NOT NULL,
    changed_at  REAL NOT NULL,
    reason      TEXT
);
CREATE TABLE IF NOT EXISTS control_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL,
    action      TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'cancel')),
    actor       TEXT NOT NULL,
    at          REAL NOT NULL,
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS control_events_session ON control_events (session_id, at);
"""


# Columns added after the first release of the schema: (name, declaration).
_ADDED_COLUMNS: Final = (("run_hash", "TEXT"),)
_SCHEMA_OBJECTS: Final = frozenset(
    {
        "approvals",
        "approvals_status",
        "approvals_session",
        "session_controls",
        "control_events",
        "control_events_session",
    }
)


# Session ids are keys: scrubbed whatever $TOOLTRAIL_REDACT says, so that every process
# (one may have it off) maps an id to the same stored key.
_KEY_REDACTOR: Final = Redactor()


def session_key(session_id: str) -> str:
    """The key a session id is stored and looked up under: the id with any credential
    shape scrubbed, to a fixed point, so ``session_key(session_key(x)) == session_key(x)``
    (the landed, already scrubbed id finds the row the agent's raw id wrote). Ids that
    differ only in a secret share a key (and so a pause or cancel): the safe direction."""
    return scrub_stable(_KEY_REDACTOR.scrub_text, session_id)[0]


def _optional_key(session_id: str | None) -> str | None:
    return None if session_id is None else session_key(session_id)


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


class UnknownIdError(BadInputError):
    """No approval request or session with that id."""


class AlreadyDecidedError(BadInputError):
    """The approval request was decided before; a decision is never overwritten."""


class NotAnApproverError(BadInputError):
    """The person deciding is not in the rule's ``approvers`` list."""


class InvalidTransitionError(BadInputError):
    """A session-control change that is not allowed (e.g. resuming a canceled session)."""


def canonical_json(arguments: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``arguments``: sorted keys, no whitespace, ``str()`` for
    values JSON cannot hold. Equal arguments give equal text in every process."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``arguments`` (sorted keys, no whitespace).

    The one implementation: the store, the instrumentation and the HTTP broker use it.
    """
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """What an agent files when the policy says REQUIRE_APPROVAL."""

    tool_name: str
    arguments: Mapping[str, Any]  # already redacted: this is what the approver sees
    timeout_s: float = DEFAULT_TIMEOUT_S
    on_timeout: str = "DENY"
    approvers: Sequence[str] = ("*",)
    session_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    agent_name: str | None = None
    mcp_server: str | None = None
    policy_rule: str | None = None
    reason: str | None = None
    blast_radius: str | None = None
    approval_id: str | None = None
    run_hash: str | None = None  # the agent's keyed digest of the arguments that will run


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    approval_id: str
    session_id: str | None
    trace_id: str | None
    span_id: str | None
    agent_name: str | None
    tool_name: str
    mcp_server: str | None
    arguments: str
    arguments_hash: str
    policy_rule: str | None
    reason: str | None
    blast_radius: str | None
    approvers: tuple[str, ...]
    on_timeout: str
    requested_at: float
    expires_at: float
    status: str
    decided_by: str | None
    decided_at: float | None
    decision_reason: str | None
    agent_host: str | None
    agent_pid: int | None
    run_hash: str | None

    @property
    def decided(self) -> bool:
        return self.status != PENDING

    @property
    def wait_ms(self) -> float | None:
        if self.decided_at is None:
            return None
        return (self.decided_at - self.requested_at) * 1000.0

    def arguments_intact(self) -> bool:
        """The stored arguments still hash to the hash taken when the request was filed."""
        try:
            shown = json.loads(self.arguments)
        except ValueError:
            return False
        return isinstance(shown, dict) and arguments_hash(shown) == self.arguments_hash

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["approvers"] = list(self.approvers)
        d["wait_ms"] = self.wait_ms
        return d


@dataclass(frozen=True, slots=True)
class SessionControl:
    session_id: str
    state: str
    changed_by: str | None
    changed_at: float | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class ControlEvent:
    session_id: str
    action: str
    actor: str
    at: float
    reason: str | None


_RECORD_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ApprovalRecord))


def _record(row: sqlite3.Row) -> ApprovalRecord:
    values = dict(row)
    values["approvers"] = tuple(json.loads(values["approvers"]))
    return ApprovalRecord(**{k: values[k] for k in _RECORD_FIELDS})


def _session_control(r: sqlite3.Row) -> SessionControl:
    return SessionControl(
        r["session_id"], r["state"], r["changed_by"], r["changed_at"], r["reason"]
    )


def _approver_allowed(approvers: Sequence[str], who: str) -> bool:
    return "*" in approvers or who in approvers


_EXPIRE_DUE: Final = (
    "UPDATE approvals SET status = 'expired', decided_at = expires_at, decided_by = NULL"
    " WHERE status = 'pending' AND expires_at <= ?"
)


def _expire_due(con: sqlite3.Connection, now: float, session_id: str | None = None) -> int:
    """Mark pending requests past their deadline (one session's, or all) expired, inside
    the caller's transaction; returns how many."""
    if session_id is None:
        return con.execute(_EXPIRE_DUE, (now,)).rowcount
    return con.execute(_EXPIRE_DUE + " AND session_id = ?", (now, session_id)).rowcount


# What each session action did, for messages ("paused by ops").
SESSION_ACTION_DONE: Final = {"pause": "paused", "resume": "resumed", "cancel": "canceled"}


class ControlStore:
    """Approvals and session controls in ``<data>/control.sqlite``.

    One instance per thread is the simple rule (sqlite3 connections are not shared across
    threads here); instances are cheap. Every method is a short transaction.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str] | None = None, *, busy_timeout_s: float = 30.0
    ):
        root = config.data_dir(data_dir)
        self.path: Path = root / config.CONTROL_FILE
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the control store {self.path}: {e}") from e
        self._con.row_factory = sqlite3.Row
        self._busy_timeout_s = busy_timeout_s
        self._redactor = Redactor.from_env()
        try:
            self._busy_retry(self._prepare)
        except (OSError, sqlite3.Error) as e:
            self._con.close()
            raise StoreError(f"cannot open the control store {self.path}: {e}") from e

    def _prepare(self) -> None:
        """WAL mode and the schema, writing only what is missing.

        Opening is normally read-only (WAL mode persists in the file, the schema exists),
        so any number of processes and threads can open the store at once; where a write
        is needed (a new or older store) and another connection is setting up too, the
        caller retries (``_busy_retry``).
        """
        mode = self._con.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        if not self._schema_ready():
            self._con.executescript(_SCHEMA)  # every statement is IF NOT EXISTS
            self._migrate()

    def _busy_retry(self, run: Callable[[], _T]) -> _T:
        """``run()``, tried again with jittered backoff, until the busy timeout, while SQLite
        answers "database is locked" at once. It does so without waiting in its busy
        handler where waiting could deadlock or while another connection recovers or
        creates the WAL (many connections opening a new store, one closing as another
        opens)."""
        deadline = time.monotonic() + self._busy_timeout_s
        delay = 0.005
        while True:
            try:
                return run()
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay * random.uniform(1.0, 2.0))
                delay = min(delay * 2, 0.2)

    def _schema_ready(self) -> bool:
        names = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master")}
        if not _SCHEMA_OBJECTS.issubset(names):
            return False
        have = {r["name"] for r in self._con.execute("PRAGMA table_info(approvals)")}
        return all(column in have for column, _ in _ADDED_COLUMNS)

    def _migrate(self) -> None:
        """Add columns newer than a store created by an earlier version."""
        have = {r["name"] for r in self._con.execute("PRAGMA table_info(approvals)")}
        for column, decl in _ADDED_COLUMNS:
            if column in have:
                continue
            try:
                self._con.execute(f"ALTER TABLE approvals ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as e:
                # Another process added it between our look and our ALTER: fine.
                if "duplicate column" not in str(e):
                    raise

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> ControlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._busy_retry(lambda: self._con.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as e:
            raise StoreError(f"control store {self.path} is unavailable: {e}") from e
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        else:
            self._con.execute("COMMIT")

    def _text(self, value: str | None) -> str | None:
        """Free text as stored: credential shapes scrubbed (``$TOOLTRAIL_REDACT``)."""
        if value is None:
            return None
        return scrub_stable(self._redactor.scrub_text, value)[0]

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self._busy_retry(lambda: list(self._con.execute(sql, params)))
        except sqlite3.Error as e:
            raise StoreError(f"control store {self.path}: {e}") from e

    # -- approvals ---------------------------------------------------------------------

    def file_request(self, req: ApprovalRequest, *, now: float | None = None) -> ApprovalRecord:
        """File a pending request; returns the stored record."""
        now = time.time() if now is None else now
        approval_id = req.approval_id or f"apr-{uuid.uuid4().hex[:12]}"
        # Brokers file scrubbed arguments already (to a fixed point, so this changes
        # nothing and their filed-request check holds); a raw request is scrubbed here.
        shown, _ = scrub_stable(self._redactor.scrub_obj, dict(req.arguments))
        with self._tx() as con:
            con.execute(
                "INSERT INTO approvals (approval_id, session_id, trace_id, span_id, agent_name,"
                " tool_name, mcp_server, arguments, arguments_hash, policy_rule, reason,"
                " blast_radius, approvers, on_timeout, requested_at, expires_at, agent_host,"
                " agent_pid, run_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    approval_id,
                    _optional_key(req.session_id),
                    req.trace_id,
                    req.span_id,
                    self._text(req.agent_name),
                    req.tool_name,
                    self._text(req.mcp_server),
                    json.dumps(shown, sort_keys=True, default=str),
                    arguments_hash(shown),
                    req.policy_rule,
                    self._text(req.reason),
                    req.blast_radius,
                    json.dumps(list(req.approvers)),
                    req.on_timeout,
                    now,
                    now + req.timeout_s,
                    socket.gethostname(),
                    os.getpid(),
                    req.run_hash,
                ),
            )
        return self.get(approval_id)

    def get(self, approval_id: str) -> ApprovalRecord:
        rows = self._query("SELECT * FROM approvals WHERE approval_id = ?", (approval_id,))
        if not rows:
            raise UnknownIdError(f"no approval request {approval_id!r} in {self.path}")
        return _record(rows[0])

    def decide(
        self,
        approval_id: str,
        outcome: Literal["approved", "denied"],
        by: str,
        reason: str | None = None,
        *,
        now: float | None = None,
    ) -> ApprovalRecord:
        """Approve or deny a pending request, once. Refusals raise and change nothing."""
        if outcome not in (APPROVED, DENIED):
            raise BadInputError(f"outcome must be approved or denied, not {outcome!r}")
        if not by or not by.strip():
            raise BadInputError("a decision needs the name of who decides (--by)")
        self.expire_due(now=now)
        with self._tx() as con:
            # The clock is read under the write lock: however long the lock took to get, a
            # decision made at or after the deadline loses to the expiry (on_timeout).
            at = time.time() if now is None else now
            rows = list(
                con.execute("SELECT * FROM approvals WHERE approval_id = ?", (approval_id,))
            )
            if not rows:
                raise UnknownIdError(f"no approval request {approval_id!r} in {self.path}")
            current = _record(rows[0])
            status = EXPIRED if not current.decided and current.expires_at <= at else None
            if current.decided or status:
                raise AlreadyDecidedError(
                    f"approval {approval_id} was already {status or current.status}"
                    + (f" by {current.decided_by}" if current.decided_by else "")
                    + "; a decision is never overwritten"
                )
            if not _approver_allowed(current.approvers, by):
                raise NotAnApproverError(
                    f"{by!r} may not decide approval {approval_id} "
                    f"(rule {current.policy_rule}: approvers {', '.join(current.approvers)})"
                )
            con.execute(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?,"
                " decision_reason = ? WHERE approval_id = ? AND status = 'pending'",
                (outcome, self._text(by), at, self._text(reason), approval_id),
            )
        return self.get(approval_id)

    def expire_due(self, *, now: float | None = None) -> int:
        """Mark every pending request past its deadline expired; returns how many.

        Called by whoever looks (agents while waiting, the CLI, the dashboard), so a
        request whose agent died still expires and nothing stays pending forever.
        """
        now = time.time() if now is None else now
        with self._tx() as con:
            return _expire_due(con, now)

    def list_approvals(
        self, status: str = PENDING, *, session_id: str | None = None, limit: int | None = None
    ) -> list[ApprovalRecord]:
        self.expire_due()
        clauses: list[str] = []
        params: list[Any] = []
        if status != "all":
            clauses.append("status = ?")
            params.append(status)
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_key(session_id))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM approvals {where} ORDER BY requested_at"  # noqa: S608 - fixed clauses
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_record(r) for r in self._query(sql, params)]

    def _poll(self, approval_id: str) -> ApprovalRecord:
        record = self.get(approval_id)
        if not record.decided and record.expires_at <= time.time():
            self.expire_due()
            record = self.get(approval_id)
        return record

    def _version(self) -> tuple[int, int]:
        """Changes since this connection opened: ``data_version`` moves when another
        connection (any process) commits, ``total_changes`` when this one writes."""
        rows = self._query("PRAGMA data_version")
        return int(rows[0][0]), self._con.total_changes

    def wait(self, approval_id: str, *, poll_s: float = DEFAULT_POLL_S) -> ApprovalRecord:
        """Block (sleeping) until the request is decided or expired."""
        watch = _Watch(self, approval_id, poll_s)
        while True:
            step = watch.step()
            if isinstance(step, ApprovalRecord):
                return step
            time.sleep(step)

    async def await_decision(
        self, approval_id: str, *, poll_s: float = DEFAULT_POLL_S
    ) -> ApprovalRecord:
        """Like :meth:`wait` without blocking the event loop."""
        watch = _Watch(self, approval_id, poll_s)
        while True:
            step = watch.step()
            if isinstance(step, ApprovalRecord):
                return step
            await asyncio.sleep(step)

    # -- session control ---------------------------------------------------------------

    def session_control(self, session_id: str) -> SessionControl:
        session_id = session_key(session_id)
        rows = self._query("SELECT * FROM session_controls WHERE session_id = ?", (session_id,))
        if not rows:
            return SessionControl(session_id, RUNNING, None, None, None)
        return _session_control(rows[0])

    def knows_session(self, session_id: str) -> bool:
        """Whether the store has seen the session: a request it filed, or a control change."""
        session_id = session_key(session_id)
        rows = self._query(
            "SELECT 1 FROM approvals WHERE session_id = ?"
            " UNION ALL SELECT 1 FROM session_controls WHERE session_id = ? LIMIT 1",
            (session_id, session_id),
        )
        return bool(rows)

    def session_state(self, session_id: str) -> str:
        """``running``, ``paused`` or ``canceled``: one primary-key read (agents call it
        before every tool call)."""
        session_id = session_key(session_id)
        rows = self._query("SELECT state FROM session_controls WHERE session_id = ?", (session_id,))
        return str(rows[0][0]) if rows else RUNNING

    def set_session_state(
        self, session_id: str, action: SessionAction, by: str, reason: str | None = None
    ) -> SessionControl:
        """pause / resume / cancel a session; each change is recorded with who and when.

        Cancel also denies the session's pending approval requests (decided by ``by``,
        reason "session canceled"), so calls held for approval are released at once
        instead of waiting for a decision that can no longer let them run.
        """
        if not by or not by.strip():
            raise BadInputError("a session-control change needs who makes it (--by)")
        target = {"pause": PAUSED, "resume": RUNNING, "cancel": CANCELED}.get(action)
        if target is None:
            raise BadInputError(f"unknown session action {action!r}")
        session_id = session_key(session_id)
        by_text, reason = self._text(by) or "", self._text(reason)
        with self._tx() as con:
            # The clock is read under the write lock (as in decide): a request whose deadline
            # passed while this waited for the lock expired, and cancel must not relabel it.
            now = time.time()
            if action == "cancel":
                _expire_due(con, now, session_id)
            rows = list(
                con.execute(
                    "SELECT state FROM session_controls WHERE session_id = ?", (session_id,)
                )
            )
            current = rows[0]["state"] if rows else RUNNING
            if current == CANCELED:
                raise InvalidTransitionError(
                    f"session {session_id} is canceled; it cannot be {SESSION_ACTION_DONE[action]}"
                )
            if action == "resume" and current != PAUSED:
                raise InvalidTransitionError(f"session {session_id} is not paused")
            if action == "pause" and current == PAUSED:
                raise InvalidTransitionError(f"session {session_id} is already paused")
            con.execute(
                "INSERT INTO session_controls (session_id, state, changed_by, changed_at, reason)"
                " VALUES (?,?,?,?,?) ON CONFLICT (session_id) DO UPDATE SET state = excluded.state,"
                " changed_by = excluded.changed_by, changed_at = excluded.changed_at,"
                " reason = excluded.reason",
                (session_id, target, by_text, now, reason),
            )
            con.execute(
                "INSERT INTO control_events (session_id, action, actor, at, reason)"
                " VALUES (?,?,?,?,?)",
                (session_id, action, by_text, now, reason),
            )
            if action == "cancel":
                con.execute(
                    "UPDATE approvals SET status = 'denied', decided_by = ?, decided_at = ?,"
                    " decision_reason = ? WHERE session_id = ? AND status = 'pending'",
                    (
                        by_text,
                        now,
                        SESSION_CANCELED + (f": {reason}" if reason else ""),
                        session_id,
                    ),
                )
        return self.session_control(session_id)

    def control_history(self, session_id: str | None = None) -> list[ControlEvent]:
        if session_id is None:
            rows = self._query("SELECT * FROM control_events ORDER BY at, event_id")
        else:
            rows = self._query(
                "SELECT * FROM control_events WHERE session_id = ? ORDER BY at, event_id",
                (session_key(session_id),),
            )
        return [
            ControlEvent(r["session_id"], r["action"], r["actor"], r["at"], r["reason"])
            for r in rows
        ]

    def session_states(self) -> list[SessionControl]:
        rows = self._query("SELECT * FROM session_controls")
        return [_session_control(r) for r in rows]

    def wait_while_paused(self, session_id: str, *, poll_s: float = DEFAULT_POLL_S) -> str:
        """Block until the session is not paused; returns ``running`` or ``canceled``."""
        while (state := self.session_state(session_id)) == PAUSED:
            time.sleep(poll_s)
        return state

    async def await_while_paused(self, session_id: str, *, poll_s: float = DEFAULT_POLL_S) -> str:
        while (state := self.session_state(session_id)) == PAUSED:
            await asyncio.sleep(poll_s)
        return state


class _Watch:
    """One waiter's polling. The request's row is read again only when the database has
    changed since the last read (``ControlStore._version``, a few microseconds) or its
    deadline has passed, so a long wait costs little more than its sleeps."""

    __slots__ = ("approval_id", "poll_s", "record", "seen", "store")

    def __init__(self, store: ControlStore, approval_id: str, poll_s: float) -> None:
        self.store = store
        self.approval_id = approval_id
        self.poll_s = poll_s
        self.seen: tuple[int, int] | None = None
        self.record: ApprovalRecord | None = None

    def step(self) -> ApprovalRecord | float:
        """The decided record, or how long to sleep before the next step."""
        # Taken before the read: a commit landing after it shows as a change next step.
        version = self.store._version()
        record = self.record
        if record is None or version != self.seen or time.time() >= record.expires_at:
            self.seen = version
            record = self.record = self.store._poll(self.approval_id)
            if record.decided:
                return record
        return min(self.poll_s, max(record.expires_at - time.time(), 0.0) + 0.001)
