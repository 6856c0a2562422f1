"""Approvals and session control over HTTP: request bodies in, JSON out, the control
store underneath.

The collector serves agents that cannot reach ``control.sqlite``:

* ``POST /v1/approvals`` files a request (``file_approval``); the arguments hash the agent
  sends must match the arguments it sends, so what an approver is shown is exactly what
  the agent asked about.
* ``GET /v1/approvals/{id}?wait=S`` returns the request, long-polling up to ``S`` seconds
  for a decision (``wait_for``); a request past its deadline is marked expired on read,
  exactly as the local store does. The long-poll is the agent's heartbeat: while it is
  parked (and its client still connected) the request's lease is renewed every
  ``HEARTBEAT_S`` for the ``lease_s`` the agent filed (15 s when it sent none), so an
  agent that stops polling (it died, gave up) leaves its request ``abandoned`` once that
  runs out, and a decision on it is refused (409).
* ``POST /v1/approvals/{id}/withdraw`` (the agents' token): the agent stops waiting and
  says so at once (``withdraw``): the request is ``abandoned``.
* ``POST /v1/approvals/{id}/decision`` approves or denies once (``decide``).

* ``GET /v1/sessions/{id}/control?wait=S`` returns a session's control state (running,
  paused, canceled), long-polling up to ``S`` seconds while it is paused: a remote agent's
  paused call waits on it exactly as a local one waits on the store.
* ``POST /v1/sessions/{id}/control`` pauses, resumes or cancels (``set_session``).

The semantics are the local store's (:mod:`tooltrail.control`): one decision, approvers
checked, expiry on read, the same session transitions. Its errors are mapped to HTTP
statuses by ``status_of``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from tooltrail import ledger
from tooltrail.access import Principal, check_acting_as
from tooltrail.collector import jsontext
from tooltrail.control import (
    CANCELED,
    PAUSED,
    AlreadyDecidedError,
    ApprovalRecord,
    ApprovalRequest,
    ControlStore,
    InvalidTransitionError,
    NotAnApproverError,
    SessionControl,
    UnknownIdError,
    arguments_hash,
    session_key,
)
from tooltrail.control_verify import annotate
from tooltrail.errors import (
    AccessDeniedError,
    BadInputError,
    NotAuthenticatedError,
    StoreError,
    TamperedError,
)
from tooltrail.signing import Signer

MAX_WAIT_S: Final = 60.0
POLL_S: Final = 0.05
MAX_TIMEOUT_S: Final = 7 * 86_400.0
# How long an agent may go without polling before its request counts as abandoned, when
# its request names none (an older agent: it polls again at once after each long-poll, or
# within its retry backoff, at most 5 s, after an error).
DEFAULT_LEASE_S: Final = 15.0
LEASE_RANGE_S: Final = (1.0, 3600.0)
HEARTBEAT_S: Final = 2.0
# Fixed words: an agent's free text is not an operator's record.
WITHDRAWN: Final = "the agent stopped waiting (it withdrew its request)"
ON_TIMEOUT_VALUES: Final = ("DENY", "ALLOW")
# Who "decided" a session state the collector answers as canceled because it does not verify.
TAMPERED_ACTOR: Final = "tooltrail:tampered"
_OPTIONAL_TEXT: Final = (
    "session_id",
    "trace_id",
    "span_id",
    "agent_name",
    "mcp_server",
    "policy_rule",
    "reason",
    "blast_radius",
    "policy_version",
)


class WithdrawRefusedError(BadInputError):
    """A withdrawal without the filer's proof (the request's withdraw secret)."""


def withdraw_secret(key: bytes, approval_id: str) -> str:
    """The proof of having filed ``approval_id``: returned only in the filing answer, asked
    for by :func:`withdraw`. Derived (HMAC-SHA256 under the collector's key, random per
    collector process), so nothing secret is stored: another agent, or anyone when the
    collector has no token, cannot withdraw someone else's request."""
    return hmac.new(key, approval_id.encode(), hashlib.sha256).hexdigest()


def status_of(error: Exception) -> int:
    """The HTTP status for an error of the control store."""
    if isinstance(error, NotAuthenticatedError):
        return 401
    if isinstance(error, WithdrawRefusedError | AccessDeniedError):
        return 403
    if isinstance(error, UnknownIdError):
        return 404
    if isinstance(error, AlreadyDecidedError | InvalidTransitionError):
        return 409
    if isinstance(error, NotAnApproverError):
        return 403
    if isinstance(error, BadInputError):
        return 400
    if isinstance(error, StoreError):
        return 503
    return 500


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = jsontext.loads(body)
    except jsontext.HugeIntegerError as e:
        raise BadInputError(f"{what}: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadInputError(f"{what}: body is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise BadInputError(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _text(doc: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise BadInputError(f"field {key!r} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadInputError(f"field {key!r} must be a non-empty string")
    return value


def request_from_body(doc: Mapping[str, Any]) -> ApprovalRequest:
    """Validate a ``POST /v1/approvals`` body; BadInputError names the bad field."""
    tool = _text(doc, "tool_name", required=True)
    assert tool is not None
    arguments = doc.get("arguments")
    if not isinstance(arguments, dict):
        raise BadInputError("field 'arguments' must be a JSON object")
    claimed = doc.get("arguments_hash")
    if claimed is not None and claimed != arguments_hash(arguments):
        raise BadInputError(
            "field 'arguments_hash' does not match 'arguments': "
            "the approver would not see what the agent asked about"
        )
    timeout = doc.get("timeout_s", 600.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        raise BadInputError(f"field 'timeout_s' must be a number in (0, {MAX_TIMEOUT_S:.0f}]")
    on_timeout = doc.get("on_timeout", "DENY")
    if not isinstance(on_timeout, str) or on_timeout.upper() not in ON_TIMEOUT_VALUES:
        raise BadInputError("field 'on_timeout' must be DENY or ALLOW")
    approvers = doc.get("approvers", ["*"])
    if (
        not isinstance(approvers, list)
        or not approvers
        or not all(isinstance(a, str) and a for a in approvers)
    ):
        raise BadInputError("field 'approvers' must be a non-empty list of names")
    extra = {key: _text(doc, key) for key in _OPTIONAL_TEXT}
    # The agent's keyed digest of the arguments that will run (opaque here; the agent
    # checks it before running). Stored and returned as is.
    run_hash = _text(doc, "run_hash")
    lease = doc.get("lease_s", DEFAULT_LEASE_S)
    low, high = LEASE_RANGE_S
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int | float)
        or not math.isfinite(lease)
        or not low <= lease <= high
    ):
        raise BadInputError(f"field 'lease_s' must be a number in [{low:.0f}, {high:.0f}]")
    return ApprovalRequest(
        tool_name=tool,
        arguments=arguments,
        timeout_s=float(timeout),
        on_timeout=on_timeout.upper(),
        approvers=tuple(approvers),
        run_hash=run_hash,
        lease_s=float(lease),
        **extra,
    )


def record_json(record: ApprovalRecord, data_dir: Path | None = None) -> dict[str, Any]:
    """A request as the HTTP API answers it. With ``data_dir``, a decided request carries
    its ledger entry (``decision``: body, key id, signature), which an agent holding a
    pinned trust root verifies itself, and ``verified`` (the collector's own check)."""
    doc = record.to_dict()
    doc.pop("agent_host", None)
    doc.pop("agent_pid", None)
    doc["arguments"] = json.loads(record.arguments)
    if data_dir is not None and record.decided:
        with ControlStore(data_dir) as store:
            ends = [
                e
                for e in store._busy_retry(
                    lambda: ledger.entries_for(store._con, record.approval_id)
                )
                if e.kind in ("decision", "system")
            ]
            problems = annotate(store, [record]).get(record.approval_id, [])
        if ends:
            last = ends[-1]
            doc["decision"] = {
                "body": last.body,
                "key_id": last.key_id,
                "signature": last.signature,
            }
        doc["verified"] = not problems
    if data_dir is not None:
        # What a decision is verified against: pinned, data-dir (the collector's own
        # account can rewrite it) or unsigned (single-user mode): docs/SECURITY.md §6.
        with ControlStore(data_dir) as store:
            doc["signatures"] = store.trust().label
    return doc


def file_approval(
    data_dir: Path,
    doc: Mapping[str, Any],
    *,
    agent: str | None = None,
    owns_session: Callable[[str], bool] | None = None,
) -> ApprovalRecord:
    """File a request from a ``POST /v1/approvals`` body. With access control on, ``agent``
    is the credential's agent: the request is filed under its name (a body naming another
    agent is refused), in a session it holds (``owns_session``)."""
    req = request_from_body(doc)
    if agent is not None:
        if req.agent_name not in (None, agent):
            raise AccessDeniedError(
                f"agent {agent!r} may not file a request as agent {req.agent_name!r}: the"
                " agent name comes from the credential"
            )
        req = dataclasses.replace(req, agent_name=agent)
        if req.session_id and owns_session is not None and not owns_session(req.session_id):
            raise AccessDeniedError(
                f"session {req.session_id!r} belongs to another agent: agent {agent!r} may"
                " not file requests in it"
            )
    with ControlStore(data_dir) as store:
        # The agent waits elsewhere: this process's pid says nothing about it.
        return store.file_request(req, waiter_here=False)


@contextlib.contextmanager
def _known(approval_id: str) -> Iterator[None]:
    """An unknown id's error without the store's path: the message goes to HTTP callers,
    who have no business learning the server's file system."""
    try:
        yield
    except UnknownIdError:
        raise UnknownIdError(f"no approval request {approval_id!r}") from None


def _current(store: ControlStore, approval_id: str) -> ApprovalRecord:
    record = store.get(approval_id)
    if not record.decided and record.expires_at <= time.time():
        store.expire_due()
        record = store.get(approval_id)
    return record


def wait_for(
    data_dir: Path,
    approval_id: str,
    wait_s: float,
    stop: threading.Event,
    client_gone: Callable[[], bool] | None = None,
) -> ApprovalRecord:
    """The request, once decided, expired or abandoned, or as it is after ``wait_s``
    seconds. Asking is the agent's heartbeat: its lease is renewed as the poll starts and
    every ``HEARTBEAT_S`` while it is parked, until ``client_gone()`` says the asker's
    connection closed (a killed agent): then renewals stop and the wait ends."""
    deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
    next_beat = 0.0
    with ControlStore(data_dir) as store, _known(approval_id):
        while True:
            record = _current(store, approval_id)
            gone = client_gone is not None and client_gone()
            beat = not record.decided and record.lease_s is not None and not gone
            if beat and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                store.heartbeat(approval_id, record.lease_s or 0.0)
            left = deadline - time.monotonic()
            if record.decided or left <= 0 or stop.is_set() or gone:
                return record
            until_expiry = record.expires_at - time.time()
            stop.wait(min(POLL_S, left, max(until_expiry, 0.0) + 0.001))


def withdraw(
    data_dir: Path, approval_id: str, doc: Mapping[str, Any], key: bytes
) -> ApprovalRecord:
    """The agent that filed the request stops waiting: its pending request becomes
    ``abandoned`` (one already decided is returned as it is). ``doc`` must carry the
    ``withdraw_secret`` the filing answer gave (:func:`withdraw_secret`); it is checked
    before the store is read, so a refusal says nothing about whether the id exists."""
    given = doc.get("withdraw_secret")
    wanted = withdraw_secret(key, approval_id).encode()
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), wanted):
        raise WithdrawRefusedError(
            "withdrawing a request needs the 'withdraw_secret' its filing answer returned"
        )
    with ControlStore(data_dir) as store, _known(approval_id):
        store.get(approval_id)  # an unknown id is a 404, not a silent no-op
        return store.abandon(approval_id, WITHDRAWN)


def _decider(doc: Mapping[str, Any], who: Principal | None) -> tuple[str, str | None]:
    """Who a change is recorded as, and their role: the body's ``by`` without access
    control; the credential's user with it, whom ``by`` or ``decided_by`` may repeat but
    never replace (refused: 403)."""
    if who is None:
        by = _text(doc, "by", required=True)
        assert by is not None
        return by, None
    for field in ("by", "decided_by"):
        check_acting_as(who, _text(doc, field), f"field {field!r}")
    return who.name, who.role


def own_request(data_dir: Path, approval_id: str, agent: str) -> ApprovalRecord:
    """The request when ``agent`` filed it; to any other agent it does not exist (404, the
    same answer as an unknown id: no way to learn other agents' ids)."""
    with ControlStore(data_dir) as store, _known(approval_id):
        record = store.get(approval_id)
    if record.agent_name != agent:
        raise UnknownIdError(f"no approval request {approval_id!r}")
    return record


def decide(
    data_dir: Path,
    approval_id: str,
    doc: Mapping[str, Any],
    who: Principal | None = None,
    signer: Signer | None = None,
) -> ApprovalRecord:
    outcome = doc.get("outcome")
    if outcome not in ("approved", "denied"):
        raise BadInputError("field 'outcome' must be 'approved' or 'denied'")
    by, role = _decider(doc, who)
    reason = _text(doc, "reason")
    with ControlStore(data_dir) as store, _known(approval_id):
        return store.decide(approval_id, outcome, by=by, reason=reason, role=role, signer=signer)


LIST_STATUSES: Final = ("pending", "approved", "denied", "expired", "abandoned", "all")


def list_approvals(data_dir: Path, status: str, agent: str | None = None) -> list[ApprovalRecord]:
    """Requests in ``status``; only ``agent``'s own when an agent asks."""
    if status not in LIST_STATUSES:
        raise BadInputError(f"query parameter status must be one of {', '.join(LIST_STATUSES)}")
    with ControlStore(data_dir) as store:
        records = store.list_approvals(status)
    return records if agent is None else [r for r in records if r.agent_name == agent]


def parse_wait(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise BadInputError(f"query parameter wait={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise BadInputError(f"query parameter wait={raw!r} must be >= 0")
    return min(value, MAX_WAIT_S)


# --- session control ---------------------------------------------------------------------

SESSION_ACTIONS: Final = ("pause", "resume", "cancel")


def session_json(control: SessionControl) -> dict[str, Any]:
    return {
        "session_id": control.session_id,
        "state": control.state,
        "changed_by": control.changed_by,
        "changed_at": control.changed_at,
        "reason": control.reason,
    }


def session_wait(
    data_dir: Path, session_id: str, wait_s: float, stop: threading.Event
) -> SessionControl:
    """The session's control state, once it is not paused or after ``wait_s`` seconds."""
    if not session_id:
        raise BadInputError("a session id is required")
    deadline = time.monotonic() + max(0.0, min(wait_s, MAX_WAIT_S))
    with ControlStore(data_dir) as store:
        while True:
            control = _verified_control(store, session_id)
            left = deadline - time.monotonic()
            if control.state != PAUSED or left <= 0 or stop.is_set():
                return control
            stop.wait(min(POLL_S, left))


def _verified_control(store: ControlStore, session_id: str) -> SessionControl:
    """The session's control state once checked against the ledger (``session_state``);
    a state that does not verify is answered as canceled, naming why (fail closed: the
    remote agent's calls are denied)."""
    try:
        store.session_state(session_id)
    except TamperedError as e:
        return SessionControl(
            session_key(session_id), CANCELED, TAMPERED_ACTOR, time.time(), str(e)
        )
    return store.session_control(session_id)


def set_session(
    data_dir: Path,
    session_id: str,
    doc: Mapping[str, Any],
    who: Principal | None = None,
    signer: Signer | None = None,
) -> SessionControl:
    """pause / resume / cancel from a ``POST /v1/sessions/{id}/control`` body (``who``: the
    credential's user, with access control on)."""
    action = doc.get("action")
    if action not in SESSION_ACTIONS:
        raise BadInputError(f"field 'action' must be one of {', '.join(SESSION_ACTIONS)}")
    by, _ = _decider(doc, who)
    reason = _text(doc, "reason")
    force = doc.get("force", False)
    if not isinstance(force, bool):
        raise BadInputError("field 'force' must be true or false")
    with ControlStore(data_dir) as store:
        if not force and not _session_reported(store, data_dir, session_id):
            # As the CLI: a mistyped id must not read as a stopped agent while the real
            # session runs on (and a cancel is for good).
            raise UnknownIdError(
                f"no session {session_id!r}: no landed action and no approval request names"
                ' it ("force": true controls an id no agent has reported yet)'
            )
        return store.set_session_state(session_id, action, by=by, reason=reason, signer=signer)


def _session_reported(store: ControlStore, data_dir: Path, session_id: str) -> bool:
    if store.knows_session(session_id):
        return True
    from tooltrail import analytics  # an operator's rare request: the views are worth it

    return analytics.session(data_dir, session_id) is not None


__all__ = [
    "MAX_WAIT_S",
    "SESSION_ACTIONS",
    "WithdrawRefusedError",
    "decide",
    "file_approval",
    "list_approvals",
    "own_request",
    "parse_json_object",
    "parse_wait",
    "record_json",
    "request_from_body",
    "session_json",
    "session_wait",
    "set_session",
    "status_of",
    "wait_for",
    "withdraw",
    "withdraw_secret",
]
