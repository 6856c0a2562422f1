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

One file past 600 lines: every write to the store (filing, deciding, session control,
completions) and the ledger entry it appends happen in one transaction of one
``ControlStore``, and the checks that decide what to believe share its private readers;
verification of a whole store is apart (control_verify.py), as are the ledger and the
signatures (ledger.py, signing.py).
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
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from tooltrail import config, ledger
from tooltrail.access import Action, approver_allowed, role_may
from tooltrail.errors import (
    AccessDeniedError,
    BadInputError,
    NotAuthenticatedError,
    StoreError,
    TamperedError,
)
from tooltrail.redact import Redactor, scrub_stable
from tooltrail.signing import (
    CONTROL_V1,
    DECISION_V1,
    RELAY_ROLE,
    REQUEST_V1,
    SYSTEM_V1,
    Signer,
    TrustRoot,
    digest,
    jsonable,
    load_trust_root,
)
from tooltrail.signing import arguments_hash as _jcs_arguments_hash

PENDING: Final = "pending"
APPROVED: Final = "approved"
DENIED: Final = "denied"
EXPIRED: Final = "expired"
# The requester stopped waiting before anyone decided (it gave up, was cancelled, or its
# lease lapsed: it died). Nothing can take effect any more: the held call never ran.
ABANDONED: Final = "abandoned"

RUNNING: Final = "running"
PAUSED: Final = "paused"
CANCELED: Final = "canceled"

SESSION_CANCELED: Final = "session canceled"
# The action of an operator's completion in the control history (`tooltrail complete`).
COMPLETE: Final = "complete"

DEFAULT_POLL_S: Final = 0.05
DEFAULT_TIMEOUT_S: Final = 600.0
# A waiting agent renews its lease on its request every DEFAULT_HEARTBEAT_S; a request
# whose lease ran out (DEFAULT_LEASE_S without a renewal) has nobody waiting on it.
DEFAULT_HEARTBEAT_S: Final = 2.0
DEFAULT_LEASE_S: Final = 10.0
LEASE_LAPSED: Final = "the waiting agent stopped renewing its lease (it is gone)"
DEADLINE_PUSHED: Final = (
    "its deadline passed, but control.sqlite still shows it pending: its expiry was pushed"
    " in the file (tampered), so the held call does not run"
)

SessionAction = Literal["pause", "resume", "cancel"]
_T = TypeVar("_T")

_APPROVALS_TABLE: Final = """
CREATE TABLE IF NOT EXISTS {name} (
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
                    CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'abandoned')),
    decided_by      TEXT,
    decided_at      REAL,
    decision_reason TEXT,
    agent_host      TEXT,
    agent_pid       INTEGER,
    run_hash        TEXT,
    lease_s         REAL,
    lease_until     REAL,
    agent_pidns     INTEGER,
    agent_started   INTEGER,
    policy_version  TEXT
);
"""
_APPROVALS_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, requested_at);
CREATE INDEX IF NOT EXISTS approvals_session ON approvals (session_id);
"""
_SCHEMA: Final = (
    _APPROVALS_TABLE.format(name="approvals")
    + _APPROVALS_INDEXES
    + """
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
-- An operator marking a session complete (who, when, why): a record, not a control state,
-- so it has its own table (control_events' action check predates it).
CREATE TABLE IF NOT EXISTS session_completions (
    completion_id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id    TEXT NOT NULL,
    actor         TEXT NOT NULL,
    at            REAL NOT NULL,
    reason        TEXT NOT NULL
);
"""
    + ledger.SCHEMA
)


# Columns added after the first release of the schema: (name, declaration).
# agent_pidns / agent_started: which process namespace the waiter's pid is in, and when
# that process started (``_Waiter``); the store's own, not part of ``ApprovalRecord``.
_ADDED_COLUMNS: Final = (
    ("run_hash", "TEXT"),
    ("lease_s", "REAL"),
    ("lease_until", "REAL"),
    ("agent_pidns", "INTEGER"),
    ("agent_started", "INTEGER"),
    ("policy_version", "TEXT"),
)
# The status check of a store made before 'abandoned' existed must be rebuilt to allow it.
_ABANDONED_CHECK: Final = "'abandoned'"
_SCHEMA_OBJECTS: Final = frozenset(
    {
        "approvals",
        "approvals_status",
        "approvals_session",
        "session_controls",
        "control_events",
        "control_events_session",
        *ledger.OBJECTS,
        "session_completions",
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


class RequesterGoneError(AlreadyDecidedError):
    """The agent that filed the request stopped waiting for it: the call it held never
    ran and never will, so a decision can no longer take effect."""


class NotAnApproverError(BadInputError):
    """The person deciding is not in the rule's ``approvers`` list."""


class InvalidTransitionError(BadInputError):
    """A session-control change that is not allowed (e.g. resuming a canceled session)."""


def new_approval_id() -> str:
    """A fresh approval request id (``apr-`` and 12 hex digits)."""
    return f"apr-{uuid.uuid4().hex[:12]}"


def canonical_json(arguments: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``arguments``: sorted keys, no whitespace, ``str()`` for
    values JSON cannot hold. Equal arguments give equal text in every process."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """``jcs-sha256:v1:<hex>``: SHA-256 of the RFC 8785 canonical JSON of ``arguments``
    (``tooltrail.signing.arguments_hash``), which a client in any language can recompute.

    The one implementation: the store, the instrumentation and the HTTP broker use it.
    """
    return _jcs_arguments_hash(arguments)


def _legacy_arguments_hash(arguments: Mapping[str, Any]) -> str:
    """The unversioned hash of rows filed before RFC 8785 (plain sha256 hex)."""
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
    policy_version: str | None = None  # the version of the policy that held the call
    # Seconds without a renewal (heartbeat) after which nobody waits on the request any
    # more; None: the requester keeps no lease (it is only ever expired at its deadline).
    lease_s: float | None = None


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
    lease_s: float | None
    lease_until: float | None
    policy_version: str | None

    @property
    def decided(self) -> bool:
        return self.status != PENDING

    @property
    def abandoned(self) -> bool:
        return self.status == ABANDONED

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
        if not isinstance(shown, dict):
            return False
        if self.arguments_hash.startswith("jcs-sha256:"):
            return arguments_hash(shown) == self.arguments_hash
        return _legacy_arguments_hash(shown) == self.arguments_hash

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
    # The relay that vouched for ``actor`` (an OpenID sign-in), as its ledger entry says.
    relay: str | None = None
    role: str | None = None


_RECORD_FIELDS: Final = tuple(f.name for f in dataclasses.fields(ApprovalRecord))

# What a decider relies on, as filed: covered by the request's ledger entry and, through
# its digest, by every signed decision on it (docs/SECURITY.md, "Tamper detection").
REQUEST_FIELDS: Final = (
    "approval_id",
    "session_id",
    "trace_id",
    "span_id",
    "agent_name",
    "tool_name",
    "mcp_server",
    "arguments_hash",
    "run_hash",
    "policy_version",
    "policy_rule",
    "reason",
    "blast_radius",
    "approvers",
    "on_timeout",
    "requested_at",
    "expires_at",
)


def request_content(record: ApprovalRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The canonical content of a filed request (``tooltrail-request/v1``): the fields
    of ``REQUEST_FIELDS``, from a record or its JSON form (the collector's answer)."""
    doc = record.to_dict() if isinstance(record, ApprovalRecord) else record
    content: dict[str, Any] = {"v": REQUEST_V1}
    for name in REQUEST_FIELDS:
        content[name] = doc.get(name)
    content["approvers"] = list(content["approvers"] or [])
    return content


def request_digest(record: ApprovalRecord | Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of ``request_content``: what a signed decision names."""
    return digest(request_content(record))


def _record(row: sqlite3.Row) -> ApprovalRecord:
    values = dict(row)
    values["approvers"] = tuple(json.loads(values["approvers"]))
    return ApprovalRecord(**{k: values[k] for k in _RECORD_FIELDS})


def _session_control(r: sqlite3.Row) -> SessionControl:
    return SessionControl(
        r["session_id"], r["state"], r["changed_by"], r["changed_at"], r["reason"]
    )


def _refusal(current: ApprovalRecord) -> AlreadyDecidedError:
    """Why a decision on a request no longer pending is refused, in words."""
    if current.status == ABANDONED:
        return RequesterGoneError(
            f"approval {current.approval_id} was abandoned: "
            f"{current.decision_reason or 'the agent stopped waiting'}; the call it held"
            " never ran, so a decision can no longer take effect"
        )
    return AlreadyDecidedError(
        f"approval {current.approval_id} was already {current.status}"
        + (f" by {current.decided_by}" if current.decided_by else "")
        + "; a decision is never overwritten"
    )


# A lease that ran out before the deadline: the requester was gone from then on, so the
# request is abandoned as of its lease's end (a deadline that came first is an expiry).
_ABANDON_LAPSED: Final = (
    "UPDATE approvals SET status = 'abandoned', decided_at = lease_until, decided_by = NULL,"
    " decision_reason = ? WHERE status = 'pending' AND lease_until IS NOT NULL"
    " AND lease_until < ? AND lease_until < expires_at"
)
_EXPIRE_DUE: Final = (
    "UPDATE approvals SET status = 'expired', decided_at = expires_at, decided_by = NULL"
    " WHERE status = 'pending' AND expires_at <= ?"
)
# Appended to a system outcome's UPDATE: what the ledger records of each row it ended.
_RETURNING: Final = " RETURNING approval_id, status, decided_at, decision_reason"
_RENEW: Final = (
    "UPDATE approvals SET lease_until = max(coalesce(lease_until, 0), ?)"
    " WHERE approval_id = ? AND status = 'pending'"
)
_ABANDON_ONE: Final = (
    "UPDATE approvals SET status = 'abandoned', decided_at = ?, decided_by = NULL,"
    " decision_reason = ? WHERE approval_id = ? AND status = 'pending'"
)
# Pending requests whose waiter holds a lease from a process whose pid means the same
# here: same host name AND same PID namespace. Its pid then tells at once whether the
# waiter still exists (its lease would tell only when it runs out). A container on
# ``--network host`` shares the host's name but not its pids: there (and for rows from
# before namespaces were kept, NULL) only the lease tells.
_LOCAL_WAITERS: Final = (
    "SELECT approval_id, agent_pid, agent_started FROM approvals WHERE status = 'pending'"
    " AND lease_until IS NOT NULL AND agent_pid IS NOT NULL AND agent_host = ?"
    " AND agent_pidns = ?"
)


_HOST: Final = socket.gethostname()
# A PID-namespace id for platforms without PID namespaces (one pid space per host).
_NO_PID_NAMESPACES: Final = 0


def _pid_namespace() -> int | None:
    """This process's PID namespace: the inode of ``/proc/self/ns/pid`` on Linux (None when
    it cannot be read: no pid check then, only the lease); a constant elsewhere."""
    if not sys.platform.startswith("linux"):
        return _NO_PID_NAMESPACES
    try:
        return Path("/proc/self/ns/pid").stat().st_ino
    except OSError:
        return None


def _proc_started(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``: field 22 of ``/proc/<pid>/stat``;
    None where there is no such file (not Linux). Raises OSError (FileNotFoundError: no
    such process) or ValueError / IndexError (unreadable)."""
    if not sys.platform.startswith("linux"):
        return None
    with open(f"/proc/{pid}/stat", "rb") as f:
        text = f.read().decode("ascii", "replace")
    # Field 2 is the command name in parentheses and may hold spaces or ')': cut after
    # the last ')'. What follows starts at field 3.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[22 - 3])


def _started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), None where that cannot be read."""
    try:
        return _proc_started(pid)
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class _Waiter:
    """Who waits on a request filed from this process: enough to tell later, from the
    same host and PID namespace, whether that very process still exists."""

    host: str
    pidns: int | None
    pid: int
    started: int | None


_self: _Waiter | None = None


def _this_process() -> _Waiter:
    """This process as a waiter (kept; found again after a fork, whose child is another
    process with its own pid and start time)."""
    global _self
    me = _self
    pid = os.getpid()
    if me is None or me.pid != pid:
        me = _self = _Waiter(_HOST, _pid_namespace(), pid, _started(pid))
    return me


def _waiter_gone(pid: int, started: int | None) -> bool:
    """Whether the process that filed with this pid (in this PID namespace) has exited:
    no such pid, or another process that reused the pid (it started at another time).
    Anything that cannot be told is not known gone: the lease decides then."""
    signalled = True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        signalled = False  # it exists (someone else's), or we cannot tell
    try:
        start = _proc_started(pid)
    except FileNotFoundError:
        # Gone between the two looks; unless /proc hides other users' processes
        # (hidepid) from us and the kill could not tell either.
        return signalled
    except (OSError, ValueError, IndexError):
        return False
    return started is not None and start is not None and start != started


def _settle_due(con: sqlite3.Connection, now: float, session_id: str | None = None) -> int:
    """Inside the caller's transaction, end the pending requests (one session's, or all)
    that nobody can decide any more: abandoned when their waiter is gone (its lease ran
    out, or its process, seen from the same host and PID namespace, exited), expired at
    their deadline. Returns how many."""
    scope, args = ("", ()) if session_id is None else (" AND session_id = ?", (session_id,))
    changed = _system_outcomes(con, _ABANDON_LAPSED + scope, (LEASE_LAPSED, now, *args))
    me = _this_process()
    if me.pidns is not None:
        waiters = list(con.execute(_LOCAL_WAITERS + scope, (me.host, me.pidns, *args)))
        for approval_id, pid, started in waiters:
            if _waiter_gone(int(pid), started):
                reason = f"the waiting agent (pid {pid} on {me.host}) has exited"
                changed += _system_outcomes(con, _ABANDON_ONE, (now, reason, approval_id))
    return changed + _system_outcomes(con, _EXPIRE_DUE + scope, (now, *args))


def _system_outcomes(con: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    """Run one system outcome's UPDATE (expired, abandoned) and record each row it ended in
    the ledger, unsigned: nothing a system outcome decides lets a call run except an expiry
    under ``on_timeout: ALLOW``, and the waiter checks that one against its own clock and
    the deadline it filed (docs/SECURITY.md, "Tamper detection")."""
    ended = list(con.execute(sql + _RETURNING, params))
    for approval_id, status, at, reason in ended:
        payload = {
            "v": SYSTEM_V1,
            "approval_id": approval_id,
            "outcome": status,
            "at": at,
            "reason": reason,
        }
        ledger.append(con, "system", approval_id, payload)
    return len(ended)


# The ledger ref of the entry adopting a pre-ledger store's session states.
ADOPTED_REF: Final = "tooltrail:adopted"
# Per control store (path) in this process: a trust root that once required signatures
# (it stays required), sessions seen canceled (they stay canceled), the highest ledger seq
# seen (the ledger never shrinks).
_REQUIRED_SEEN: dict[str, TrustRoot] = {}
_CANCELED_SEEN: dict[str, set[str]] = {}
_HIGHEST_SEEN: dict[str, int] = {}
_STATE_OF: Final = {"pause": PAUSED, "resume": RUNNING, "cancel": CANCELED}


def _trust_stamp(root: Path) -> object:
    """What changes when the trust root may have: the pinned file's or ``access.sqlite``'s
    identity and modification time."""
    pinned = os.environ.get(config.ENV_TRUST_ROOT, "").strip()
    path = Path(pinned) if pinned else root / "access.sqlite"
    try:
        st = path.stat()
    except OSError:
        return (pinned, None)
    return (pinned, st.st_ino, st.st_mtime_ns, st.st_size)


def _check_not_rewound(path: Path, top: int) -> None:
    key = str(path)
    seen = _HIGHEST_SEEN.get(key, 0)
    if top < seen:
        raise TamperedError(
            f"the control ledger of {path} went back from entry {seen} to {top}: entries were"
            " deleted from control.sqlite"
        )
    _HIGHEST_SEEN[key] = top


def _derived_state(con: sqlite3.Connection, session_id: str, trust: TrustRoot) -> str:
    """A session's state from its ledger entries. A cancel is final, signed or not (it only
    ever stops calls); a resume counts only if it verifies (it lets calls run again)."""
    state = RUNNING
    adopted = ledger.entries_for(con, ADOPTED_REF)
    if adopted:
        states = adopted[0].payload().get("adopted")
        if isinstance(states, dict) and isinstance(states.get(session_id), str):
            state = str(states[session_id])
    last_at: float | None = None
    for entry in ledger.entries_for(con, session_id):
        if entry.kind != "control":
            continue
        doc = entry.payload()
        action = doc.get("action")
        if action not in _STATE_OF or doc.get("session_id") != session_id:
            raise TamperedError(f"ledger entry {entry.seq} of session {session_id} was edited")
        problem = ledger.verify_signed(entry, trust)
        at = doc.get("at")
        # Entries are written in time order: a resume dated before the entry it follows was
        # dated back, into a time its key was unrevoked (or an e-mail's grant held).
        dated_back = last_at is not None and (not isinstance(at, int | float) or at < last_at)
        if problem is None and trust.required and dated_back:
            problem = "it is dated before the control entry it follows"
        if isinstance(at, int | float) and not isinstance(at, bool):
            last_at = float(at) if last_at is None else max(last_at, float(at))
        if action == "resume" and problem is not None:
            raise TamperedError(
                f"the resume of session {session_id} (ledger entry {entry.seq}) does not"
                f" verify: {problem}"
            )
        if state != CANCELED:
            state = _STATE_OF[str(action)]
    return state


def _edited_since_filed(con: sqlite3.Connection, current: ApprovalRecord) -> str | None:
    """Which filed fields of ``current`` differ from its ledger entry (None: none, or a
    request filed before the ledger, which has no entry to compare with)."""
    for entry in ledger.entries_for(con, current.approval_id):
        if entry.kind == "request":
            return request_differences(entry.payload(), request_content(current))
    return None


def request_differences(filed: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """The names of the fields that differ between two request contents, or None."""
    changed = [name for name in ("v", *REQUEST_FIELDS) if filed.get(name) != now.get(name)]
    return ", ".join(changed) if changed else None


def verify_control(data_dir: str | os.PathLike[str] | None) -> list[ledger.Broken]:
    """Every broken record of ``<data_dir>/control.sqlite`` (empty: all verify): see
    ``tooltrail.control_verify``. Example: ``verify_control("tooltrail-data") == []``."""
    from tooltrail.control_verify import verify_control as verify

    return verify(data_dir)


def completion_payload(
    session_id: str, by: str, role: str | None, at: float, reason: str
) -> dict[str, Any]:
    """The ledger body of an operator's completion (``tooltrail-control/v1``, action
    ``complete``): who, with which role, when, why, and what it makes the session."""
    return {
        "v": CONTROL_V1,
        "session_id": session_id,
        "action": COMPLETE,
        "outcome": "completed",
        "decider": by,
        "role": role,
        "at": at,
        "reason": reason,
    }


def completion_key(doc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a ``session_completions`` row must equal: (actor, at, reason)."""
    return (doc.get("decider"), doc.get("at"), doc.get("reason"))


def completion_problem(entry: ledger.Entry, trust: TrustRoot) -> str | None:
    """Why a ``completion`` ledger entry is not to be believed (None: it is): not a
    completion of the session it is filed under, or (access control on) not signed by an
    operator's or admin's key."""
    try:
        doc = entry.payload()
    except (ValueError, TamperedError):
        return "its body is not JSON"
    if (
        doc.get("v") != CONTROL_V1
        or doc.get("action") != COMPLETE
        or doc.get("outcome") != "completed"
        or doc.get("session_id") != entry.ref
    ):
        return "it is not a completion of this session (edited)"
    problem = ledger.verify_signed(entry, trust)
    if problem is not None:
        return f"its signature does not verify: {problem}"
    role = doc.get("role")
    if trust.required and not (isinstance(role, str) and role_may(role, "control")):
        return f"role {role!r} may not complete sessions"
    return None


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
        self.root: Path = root
        self.path: Path = root / config.CONTROL_FILE
        self._trust: TrustRoot | None = None
        self._trust_stamp: object = None
        self._state_memo: dict[str, tuple[tuple[int, int], str]] = {}
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
            self._adopt()

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
        return all(column in have for column, _ in _ADDED_COLUMNS) and self._allows_abandoned()

    def _allows_abandoned(self) -> bool:
        rows = list(
            self._con.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", ("approvals",)
            )
        )
        return bool(rows) and _ABANDONED_CHECK in str(rows[0][0])

    def _migrate(self) -> None:
        """Bring a store created by an earlier version up to date: add newer columns, and
        rebuild the approvals table where its status check predates ``abandoned``."""
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
        if not self._allows_abandoned():
            self._rebuild_approvals()

    def _adopt(self) -> None:
        """A store from before the ledger: record its sessions' current states as the
        ledger's first entry (unsigned, saying so), so they keep their state; its requests
        stay unsealed (views show them as filed before signed records)."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            empty = con.execute("SELECT 1 FROM control_ledger LIMIT 1").fetchone() is None
            states = list(con.execute("SELECT session_id, state FROM session_controls"))
            if empty and states:
                payload = {
                    "v": SYSTEM_V1,
                    "adopted": {str(r[0]): str(r[1]) for r in states},
                    "at": time.time(),
                }
                ledger.append(con, "system", ADOPTED_REF, payload)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _rebuild_approvals(self) -> None:
        """SQLite cannot change a CHECK constraint in place: copy the rows into a table
        with the current definition, in one transaction (all or nothing), and swap it in."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            if not self._allows_abandoned():  # another process may have done it meanwhile
                old = [r["name"] for r in con.execute("PRAGMA table_info(approvals)")]
                con.execute("DROP TABLE IF EXISTS approvals_rebuild")
                con.execute(_APPROVALS_TABLE.format(name="approvals_rebuild"))
                new = {r["name"] for r in con.execute("PRAGMA table_info(approvals_rebuild)")}
                columns = ", ".join(c for c in old if c in new)
                con.execute(
                    f"INSERT INTO approvals_rebuild ({columns}) SELECT {columns} FROM approvals"  # noqa: S608 - column names read from the schema
                )
                con.execute("DROP TABLE approvals")
                con.execute("ALTER TABLE approvals_rebuild RENAME TO approvals")
                for statement in _APPROVALS_INDEXES.strip().splitlines():
                    con.execute(statement)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

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

    def trust(self) -> TrustRoot:
        """The trust root decisions are verified against (``tooltrail.signing``), read again
        when its file changes. Once signatures were required in this process they stay
        required: deleting ``access.sqlite`` does not turn checks off here."""
        stamp = _trust_stamp(self.root)
        if self._trust is None or stamp != self._trust_stamp:
            loaded = load_trust_root(self.root)
            key = str(self.root.resolve())
            if loaded.required:
                _REQUIRED_SEEN[key] = loaded
            elif key in _REQUIRED_SEEN:
                loaded = _REQUIRED_SEEN[key]
            self._trust, self._trust_stamp = loaded, stamp
        return self._trust

    def _signed_by(
        self, by: str, signer: Signer | None, what: str, role: str | None, action: Action
    ) -> tuple[str | None, str | None]:
        """The decider's role and the relay vouching for them (None: signed by the decider's
        own key) when the trust root requires signatures (then ``signer`` must be ``by``'s,
        or a relay vouching for ``by`` as ``role``, as ``ledger.relay_problem`` allows);
        ``(None, None)`` in single-user mode."""
        trust = self.trust()
        if not trust.required:
            return None, None
        if signer is None:
            raise NotAuthenticatedError(
                f"access control is on for {self.root}: {what} takes effect only signed by"
                " a decider's key (give the decider's credential: TOOLTRAIL_TOKEN or"
                " `tooltrail login`)"
            )
        if signer.role != RELAY_ROLE:
            if signer.principal != by:
                raise BadInputError(f"{by!r} cannot decide with {signer.principal!r}'s key")
            return signer.role, None
        # Checked now as the verifier will (fail early, write nothing that cannot verify).
        key = trust.keys.get(signer.key_id)
        if key is None or key.revoked_at is not None:
            raise NotAuthenticatedError(
                f"relay {signer.principal!r}'s key {signer.key_id} is not current in the"
                f" trust root ({trust.source}): {what} cannot be signed with it"
            )
        doc = {"decider": by, "role": role, "at": time.time(), "relay": signer.principal}
        problem = ledger.relay_problem(trust, signer.principal, doc, action)
        if problem is not None:
            raise AccessDeniedError(f"{what} refused: {problem}")
        return role, signer.principal

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

    def file_request(
        self, req: ApprovalRequest, *, now: float | None = None, waiter_here: bool = True
    ) -> ApprovalRecord:
        """File a pending request; returns the stored record.

        ``waiter_here``: the requester waits in this process (its host and pid are kept, so
        its exit is seen at once); False when filing for a remote agent (the collector).
        """
        now = time.time() if now is None else now
        me = _this_process() if waiter_here else None
        approval_id = req.approval_id or new_approval_id()
        # Brokers file scrubbed arguments already (to a fixed point, so this changes
        # nothing and their filed-request check holds); a raw request is scrubbed here.
        shown, _ = scrub_stable(self._redactor.scrub_obj, dict(req.arguments))
        # Plain JSON every language reads alike: what is stored is what is hashed (RFC 8785).
        shown = jsonable(shown)
        with self._tx() as con:
            con.execute(
                "INSERT INTO approvals (approval_id, session_id, trace_id, span_id, agent_name,"
                " tool_name, mcp_server, arguments, arguments_hash, policy_rule, reason,"
                " blast_radius, approvers, on_timeout, requested_at, expires_at, agent_host,"
                " agent_pid, run_hash, lease_s, lease_until, agent_pidns, agent_started,"
                " policy_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    None if me is None else me.host,
                    None if me is None else me.pid,
                    req.run_hash,
                    req.lease_s,
                    None if req.lease_s is None else now + req.lease_s,
                    None if me is None else me.pidns,
                    None if me is None else me.started,
                    req.policy_version,
                ),
            )
            filed = _record(
                con.execute(
                    "SELECT * FROM approvals WHERE approval_id = ?", (approval_id,)
                ).fetchone()
            )
            ledger.append(con, "request", approval_id, request_content(filed))
        return filed

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
        role: str | None = None,
        signer: Signer | None = None,
    ) -> ApprovalRecord:
        """Approve or deny a pending request, once. Refusals raise and change nothing
        (but a request found expired or abandoned on the way is recorded as such).

        ``role``: the decider's authenticated role (access control on), matched against the
        rule's ``role:NAME`` approvers; None in single-user mode (names and ``*`` only).
        ``signer``: the decider's key; required when the trust root requires signatures
        (access control on), and then the role is the key's. The decision is recorded in
        the ledger over the request as filed; a request edited since is refused."""
        if outcome not in (APPROVED, DENIED):
            raise BadInputError(f"outcome must be approved or denied, not {outcome!r}")
        if not by or not by.strip():
            raise BadInputError("a decision needs the name of who decides (--by)")
        signed_role, relay = self._signed_by(by, signer, "a decision", role, "decide")
        if signed_role is not None:
            role = signed_role
        refusal: AlreadyDecidedError | None = None
        with self._tx() as con:
            # The clock is read under the write lock: however long the lock took to get, a
            # decision made at or after the deadline loses to the expiry (on_timeout), and
            # one made after the requester left loses to its absence.
            at = time.time() if now is None else now
            _settle_due(con, at)
            rows = list(
                con.execute("SELECT * FROM approvals WHERE approval_id = ?", (approval_id,))
            )
            if not rows:
                raise UnknownIdError(f"no approval request {approval_id!r} in {self.path}")
            current = _record(rows[0])
            if current.decided:
                # Not raised here: what _settle_due recorded on the way must be committed.
                refusal = _refusal(current)
            elif (edited := _edited_since_filed(con, current)) is not None:
                raise TamperedError(
                    f"approval {approval_id} was edited in {self.path} since it was filed"
                    f" ({edited}); it is not decided (`tooltrail verify`)"
                )
            elif not approver_allowed(current.approvers, by, role):
                raise NotAnApproverError(
                    f"{by!r} may not decide approval {approval_id} "
                    f"(rule {current.policy_rule}: approvers {', '.join(current.approvers)})"
                )
            else:
                con.execute(
                    "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?,"
                    " decision_reason = ? WHERE approval_id = ? AND status = 'pending'",
                    (outcome, self._text(by), at, self._text(reason), approval_id),
                )
                payload = {
                    "v": DECISION_V1,
                    "approval_id": approval_id,
                    "outcome": outcome,
                    "decider": self._text(by),
                    "role": role,
                    "at": at,
                    "reason": self._text(reason),
                    "arguments_hash": current.arguments_hash,
                    "policy_version": current.policy_version,
                    "request": request_digest(current),
                }
                if relay is not None:  # who vouched for an OpenID decider
                    payload["relay"] = relay
                ledger.append(con, "decision", approval_id, payload, signer)
        if refusal is not None:
            raise refusal
        return self.get(approval_id)

    def heartbeat(self, approval_id: str, lease_s: float, *, now: float | None = None) -> bool:
        """Renew the waiter's lease on a pending request for ``lease_s`` seconds from now;
        False when the request is no longer pending (nothing to renew)."""
        now = time.time() if now is None else now
        with self._tx() as con:
            return con.execute(_RENEW, (now + lease_s, approval_id)).rowcount > 0

    def try_heartbeat(self, approval_id: str, lease_s: float) -> bool | None:
        """``heartbeat`` without waiting for the write lock: None when another connection
        holds it (try again shortly). A waiter renews from its polling loop, which may be
        an event loop: it must never sit in SQLite's busy handler there."""
        params = (time.time() + lease_s, approval_id)
        renewed = self._try_write(lambda con: int(con.execute(_RENEW, params).rowcount))
        return None if renewed is None else renewed > 0

    def try_abandon(self, approval_id: str, reason: str) -> bool | None:
        """``abandon`` without waiting for the write lock: None when another connection
        holds it, else whether the request was pending (and now is abandoned). For a
        waiter leaving from an event loop (its call cancelled): it cannot wait there, and
        if the lock is busy its lease ends the request all the same."""
        params = (time.time(), self._text(reason), approval_id)
        changed = self._try_write(lambda con: _system_outcomes(con, _ABANDON_ONE, params))
        return None if changed is None else changed > 0

    def _try_write(self, run: Callable[[sqlite3.Connection], int]) -> int | None:
        """One statement in its own transaction if the write lock is free at once (busy
        timeout 0): the rows it changed, or None when another connection holds the lock."""
        con = self._con
        con.execute("PRAGMA busy_timeout = 0")
        try:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    return None
                raise StoreError(f"control store {self.path} is unavailable: {e}") from e
            try:
                changed = run(con)
                con.execute("COMMIT")
            except sqlite3.Error as e:
                con.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
                    return None
                raise StoreError(f"control store {self.path}: {e}") from e
            return int(changed)
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

    def abandon(self, approval_id: str, reason: str, *, now: float | None = None) -> ApprovalRecord:
        """The requester stops waiting: a pending request becomes ``abandoned`` (with
        ``reason``) so nobody can decide it any more. A request already decided keeps its
        outcome (returned as it is)."""
        now = time.time() if now is None else now
        with self._tx() as con:
            _system_outcomes(con, _ABANDON_ONE, (now, self._text(reason), approval_id))
        return self.get(approval_id)

    def expire_due(self, *, now: float | None = None) -> int:
        """End every pending request nobody can decide any more: expired past its
        deadline, abandoned when its waiter is gone (``_settle_due``); returns how many.

        Called by whoever looks (agents while waiting, the CLI, the dashboard), so a
        request whose agent died is seen as such and nothing stays pending forever.
        """
        now = time.time() if now is None else now
        with self._tx() as con:
            return _settle_due(con, now)

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

    def wait(
        self,
        approval_id: str,
        *,
        poll_s: float = DEFAULT_POLL_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        deadline: float | None = None,
    ) -> ApprovalRecord:
        """Block (sleeping) until the request is decided, expired or abandoned, renewing
        the request's lease (if it was filed with one) every ``heartbeat_s``. ``deadline``: the
        waiter's own copy of the request's deadline; a row still pending past it (its
        expiry was pushed in the file) is abandoned, saying so."""
        watch = _Watch(self, approval_id, poll_s, heartbeat_s, deadline)
        while True:
            step = watch.step()
            if isinstance(step, ApprovalRecord):
                return step
            time.sleep(step)

    async def await_decision(
        self,
        approval_id: str,
        *,
        poll_s: float = DEFAULT_POLL_S,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        deadline: float | None = None,
    ) -> ApprovalRecord:
        """Like :meth:`wait` without blocking the event loop."""
        watch = _Watch(self, approval_id, poll_s, heartbeat_s, deadline)
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
        """``running``, ``paused`` or ``canceled``, checked against the ledger (agents call
        it before every tool call; while the database has not changed, the answer checked
        last is reused). TamperedError when the store's state and its signed record
        disagree, or the ledger lost entries: the caller fails closed. A session seen
        canceled by this process stays canceled, whatever the file says later."""
        session_id = session_key(session_id)
        sticky = _CANCELED_SEEN.get(str(self.path), set())
        if session_id in sticky:
            return CANCELED
        version = self._version()
        memo = self._state_memo.get(session_id)
        if memo is not None and memo[0] == version:
            return memo[1]
        try:
            state = self._busy_retry(lambda: self._checked_state(session_id))
        except sqlite3.Error as e:
            raise StoreError(f"control store {self.path}: {e}") from e
        if state == CANCELED:
            _CANCELED_SEEN.setdefault(str(self.path), set()).add(session_id)
        if len(self._state_memo) > 4096:
            self._state_memo.clear()
        self._state_memo[session_id] = (version, state)
        return state

    def _checked_state(self, session_id: str) -> str:
        # One snapshot for every read: in autocommit each statement sees the latest commit,
        # and a writer committing between them made the state and its record disagree (a
        # false "edited" under load).
        con = self._con
        con.execute("BEGIN")
        try:
            return self._checked_state_in(con, session_id)
        finally:
            con.execute("COMMIT")

    def _checked_state_in(self, con: sqlite3.Connection, session_id: str) -> str:
        ledger.check_head(con)
        _check_not_rewound(self.path, ledger.head(con)[1])
        rows = list(
            con.execute("SELECT state FROM session_controls WHERE session_id = ?", (session_id,))
        )
        stored = str(rows[0][0]) if rows else RUNNING
        derived = _derived_state(con, session_id, self.trust())
        if stored != derived:
            raise TamperedError(
                f"session {session_id} is {stored} in {self.path}, but its signed record"
                f" says {derived}: the control store was edited"
            )
        return derived

    def set_session_state(
        self,
        session_id: str,
        action: SessionAction,
        by: str,
        reason: str | None = None,
        *,
        signer: Signer | None = None,
        role: str | None = None,
    ) -> SessionControl:
        """pause / resume / cancel a session; each change is recorded with who and when.

        Cancel also denies the session's pending approval requests (decided by ``by``,
        reason "session canceled"), so calls held for approval are released at once
        instead of waiting for a decision that can no longer let them run. ``signer`` as
        for ``decide``: each change is a signed ledger entry when access control is on.
        ``role``: the role a relay signer vouches ``by`` holds (else the key's role).
        """
        if not by or not by.strip():
            raise BadInputError("a session-control change needs who makes it (--by)")
        target = {"pause": PAUSED, "resume": RUNNING, "cancel": CANCELED}.get(action)
        if target is None:
            raise BadInputError(f"unknown session action {action!r}")
        session_id = session_key(session_id)
        by_text, reason = self._text(by) or "", self._text(reason)
        role, relay = self._signed_by(by, signer, f"a session {action}", role, "control")
        vouched = {} if relay is None else {"relay": relay}
        with self._tx() as con:
            # The clock is read under the write lock (as in decide): a request whose deadline
            # passed while this waited for the lock expired, and cancel must not relabel it.
            now = time.time()
            if action == "cancel":
                _settle_due(con, now, session_id)
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
            payload = {
                "v": CONTROL_V1,
                "session_id": session_id,
                "action": action,
                "decider": by_text,
                "role": role,
                "at": now,
                "reason": reason,
                **vouched,
            }
            ledger.append(con, "control", session_id, payload, signer)
            if action == "cancel":
                why = SESSION_CANCELED + (f": {reason}" if reason else "")
                denied = list(
                    con.execute(
                        "UPDATE approvals SET status = 'denied', decided_by = ?, decided_at = ?,"
                        " decision_reason = ? WHERE session_id = ? AND status = 'pending'"
                        " RETURNING approval_id",
                        (by_text, now, why, session_id),
                    )
                )
                for (approval_id,) in denied:
                    payload = {
                        "v": DECISION_V1,
                        "approval_id": approval_id,
                        "outcome": DENIED,
                        "decider": by_text,
                        "role": role,
                        "at": now,
                        "reason": why,
                        "cause": "session canceled",
                        **vouched,
                    }
                    ledger.append(con, "decision", approval_id, payload, signer)
        return self.session_control(session_id)

    def control_history(self, session_id: str | None = None) -> list[ControlEvent]:
        if session_id is None:
            rows = self._query("SELECT * FROM control_events ORDER BY at, event_id")
        else:
            rows = self._query(
                "SELECT * FROM control_events WHERE session_id = ? ORDER BY at, event_id",
                (session_key(session_id),),
            )
        vouched = self._vouched({str(r["session_id"]) for r in rows})
        return [
            ControlEvent(
                r["session_id"],
                r["action"],
                r["actor"],
                r["at"],
                r["reason"],
                *vouched.get((r["session_id"], r["action"], r["actor"], r["at"]), (None, None)),
            )
            for r in rows
        ]

    def _vouched(self, sessions: set[str]) -> dict[tuple[Any, ...], tuple[str, str | None]]:
        """(session, action, decider, at) -> (relay, role) of the relay-signed control
        entries of ``sessions``: what history shows as "vouched by". Written in the same
        transaction as the event, with the same values, so they match exactly."""
        found: dict[tuple[Any, ...], tuple[str, str | None]] = {}
        for session_id in sessions:
            for entry in ledger.entries_for(self._con, session_id):
                doc = entry.payload() if entry.kind == "control" else {}
                if isinstance(doc.get("relay"), str):
                    key = (session_id, doc.get("action"), doc.get("decider"), doc.get("at"))
                    found[key] = (str(doc["relay"]), doc.get("role"))
        return found

    def complete_session(
        self, session_id: str, by: str, reason: str, *, signer: Signer | None = None
    ) -> ControlEvent:
        """Record that an operator marked ``session_id`` complete, with who and why.

        It changes no control state (a paused or canceled session stays so); the
        ``sessions`` view reads the latest believed completion as the session's end. Like
        pause / resume / cancel it is a ledger entry (kind ``completion``) written in the
        same transaction as its row, signed by ``signer`` (the decider's key) when access
        control is on; a row without its entry is not believed (``completions``).
        """
        if not by or not by.strip():
            raise BadInputError("completing a session needs who does it (--by)")
        if not reason or not reason.strip():
            raise BadInputError("completing a session needs why (--reason)")
        session_id = session_key(session_id)
        by_text, why = self._text(by) or "", self._text(reason) or ""
        # No role to vouch for: a relay (which vouches for an OpenID sign-in's role) is
        # refused here, so a completion is always signed by the operator's own key.
        role, _ = self._signed_by(by, signer, "a session completion", None, "control")
        with self._tx() as con:
            now = time.time()
            con.execute(
                "INSERT INTO session_completions (session_id, actor, at, reason) VALUES (?,?,?,?)",
                (session_id, by_text, now, why),
            )
            payload = completion_payload(session_id, by_text, role, now, why)
            ledger.append(con, "completion", session_id, payload, signer)
        return ControlEvent(session_id, COMPLETE, by_text, now, why)

    def completions(self, session_id: str | None = None) -> list[ControlEvent]:
        """Operators' completions (action ``complete``), oldest first: only the rows that
        equal a completion entry of the ledger which verifies (signed by an operator's key
        when access control is on). A row written or edited by hand is left out (the
        session reads what its spans say); ``verify_control`` names it. A trust root that
        cannot be read leaves every completion out (fail closed)."""
        sql = "SELECT * FROM session_completions"
        params: tuple[str, ...] = ()
        if session_id is not None:
            sql += " WHERE session_id = ?"
            params = (session_key(session_id),)
        rows = self._query(sql + " ORDER BY at, completion_id", params)
        if not rows:
            return []
        try:
            trust = self.trust()
        except StoreError:
            return []
        signed: dict[str, list[tuple[Any, ...]]] = {}
        for sid in {str(r["session_id"]) for r in rows}:
            entries = self._busy_retry(lambda sid=sid: ledger.entries_for(self._con, sid))  # type: ignore[misc]
            signed[sid] = [
                completion_key(e.payload())
                for e in entries
                if e.kind == "completion" and completion_problem(e, trust) is None
            ]
        return [
            ControlEvent(r["session_id"], COMPLETE, r["actor"], r["at"], r["reason"])
            for r in rows
            if (r["actor"], r["at"], r["reason"]) in signed[str(r["session_id"])]
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
    deadline has passed, so a long wait costs little more than its sleeps. While it waits
    it renews the request's lease every ``heartbeat_s`` (one short write): that is how
    everyone else knows someone still waits on the request."""

    __slots__ = (
        "approval_id",
        "deadline",
        "heartbeat_s",
        "next_beat",
        "poll_s",
        "record",
        "seen",
        "store",
    )

    def __init__(
        self,
        store: ControlStore,
        approval_id: str,
        poll_s: float,
        heartbeat_s: float,
        deadline: float | None = None,
    ) -> None:
        self.store = store
        self.deadline = deadline
        self.approval_id = approval_id
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.next_beat = time.monotonic() + heartbeat_s  # filing started the lease
        self.seen: tuple[int, int] | None = None
        self.record: ApprovalRecord | None = None

    def _beat_due(self) -> bool:
        now = time.monotonic()
        if now < self.next_beat:
            return False
        self.next_beat = now + self.heartbeat_s
        return True

    def step(self) -> ApprovalRecord | float:
        """The decided record, or how long to sleep before the next step."""
        record = self.record
        if (
            record is not None
            and record.lease_s is not None
            and self._beat_due()
            and self.store.try_heartbeat(self.approval_id, record.lease_s) is None
        ):
            self.next_beat = time.monotonic() + self.poll_s  # the lock was busy: soon again
        # Taken before the read: a commit landing after it shows as a change next step.
        version = self.store._version()
        record = self.record
        if record is None or version != self.seen or time.time() >= record.expires_at:
            self.seen = version
            record = self.record = self.store._poll(self.approval_id)
            if record.decided:
                return record
        due = record.expires_at if self.deadline is None else min(record.expires_at, self.deadline)
        if self.deadline is not None and record.expires_at > self.deadline <= time.time():
            return self.store.abandon(self.approval_id, DEADLINE_PUSHED)
        sleep = min(self.poll_s, max(due - time.time(), 0.0) + 0.001)
        if record.lease_s is not None:
            sleep = min(sleep, max(self.next_beat - time.monotonic(), 0.0) + 0.001)
        return sleep
