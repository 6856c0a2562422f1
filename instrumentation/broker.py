"""Approval brokers: where a REQUIRE_APPROVAL tool call waits for a person's decision.

The instrumentation hands every call the policy holds for approval to an
``ApprovalBroker``. A broker files the request somewhere a person can see it, waits until
it is approved, denied or expired, and returns an ``ApprovalOutcome``. The sync
``request`` serves plain functions; the async ``arequest`` serves MCP clients and async
tools and must not block the event loop.

Which broker (``default_broker``, unless ``configure(broker=...)`` names one):

* ``$TOOLTRAIL_COLLECTOR_URL`` set: ``HttpApprovalBroker`` (the collector's approvals API,
  token from ``$TOOLTRAIL_COLLECTOR_TOKEN``), for agents that cannot reach the store;
* a data directory known (``configure(data_dir=...)`` or ``$TOOLTRAIL_DATA``):
  ``ControlStoreBroker`` on ``<data>/control.sqlite`` (see ``store_broker``);
* neither: ``FailClosedBroker``, which answers every request at once: status ``denied``,
  ``decided_by="tooltrail:no-broker"``, and the call is refused exactly like a DENY with
  reason "approval required". A security decision never fails open; a broker that cannot
  be built is a ``FailClosedBroker`` whose reason says why.

What the instrumentation does with an outcome (``proceeds``):

* ``approved``: the tool runs with exactly the arguments of the request, once the
  instrumentation has checked they still hash to ``request.arguments_hash``.
* ``denied``: the tool does not run; the caller gets the structured denial.
* ``expired``: the rule's ``on_timeout`` applies (``DENY`` unless it says ``ALLOW``).
* ``abandoned``: the store stopped counting on this waiter (its lease lapsed, e.g. the
  process was suspended): the tool does not run.
* ``refusal`` set: the broker itself refuses to let the call run whatever the status says
  (e.g. the stored request was altered after it was filed); the call is denied with it.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from tooltrail.config import ENV_COLLECTOR_TOKEN, ENV_COLLECTOR_URL, ENV_DATA
from tooltrail.control import arguments_hash, canonical_json

if TYPE_CHECKING:
    from tooltrail.policy import ApprovalSettings

_log = logging.getLogger("tooltrail.instrumentation")

# The outcomes of the approvals view (SPEC §3) that end a wait; "pending" never does.
# "abandoned": the request was given up as nobody's (the waiter's lease lapsed); never runs.
ApprovalStatus = Literal["approved", "denied", "expired", "abandoned"]
APPROVAL_STATUSES: Final = ("approved", "denied", "expired", "abandoned")
APPROVAL_REQUIRED_REASON: Final = "approval required"
NO_BROKER: Final = "tooltrail:no-broker"
BROKER_ERROR: Final = "tooltrail:broker-error"
# Outcomes decided by tooltrail itself (not a person) use decided_by names with this prefix.
SYSTEM_ACTOR_PREFIX: Final = "tooltrail:"
_HTTP_BROKER_MODULE: Final = "tooltrail.instrumentation.http_broker"

# Keys the digest of the arguments that will run. Per process and never stored: the digest
# may be filed (and shown) anywhere without letting anyone confirm a guess of a redacted
# secret, and only this process (which holds the arguments) ever needs to recompute it.
_RUN_KEY: Final = secrets.token_bytes(32)

__all__ = [
    "APPROVAL_REQUIRED_REASON",
    "APPROVAL_STATUSES",
    "NO_BROKER",
    "ApprovalBroker",
    "ApprovalOutcome",
    "ApprovalRequest",
    "FailClosedBroker",
    "arguments_hash",
    "default_broker",
    "run_digest",
]


def run_digest(arguments: Mapping[str, Any]) -> str:
    """This process's keyed digest (HMAC-SHA256) of the canonical JSON of ``arguments``.

    Equal arguments give equal digests within one process; the digest says nothing about
    the arguments to anyone without the process's key.
    """
    return hmac.new(_RUN_KEY, canonical_json(arguments).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One held tool call, as the broker should file it.

    ``arguments`` are exactly what the tool runs with if approved; ``arguments_hash`` is
    their ``run_digest``, taken when the request is made, so a change to them while the call
    is held is caught before it runs. ``shown_arguments`` are the same after the policy's
    redactions, which is what a person should be shown and what is stored (brokers scrub
    credential shapes from them too). ``trace_id`` / ``span_id`` are lowercase hex of the
    tool span, so the approval can be joined with the landed span.
    """

    tool: str
    arguments: Mapping[str, Any]
    shown_arguments: Mapping[str, Any]
    session_id: str
    agent_name: str | None
    server: str | None
    trace_id: str | None
    span_id: str | None
    rule: str
    reason: str | None
    blast_radius: str
    approval: ApprovalSettings | None
    requested_at: float = field(default_factory=time.time)
    """Seconds since the epoch."""
    policy_version: str | None = None
    """The version of the policy that held the call: a decision applies to it only."""
    on_filed: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    """Called with the approval id as soon as the request has one (the local store's
    broker: just before filing; over HTTP: once filed), before any waiting: a call
    abandoned while held (cancelled, timed out by the agent) still names its request,
    whose outcome (abandoned) the store records."""
    arguments_hash: str = field(init=False, default="")
    """``run_digest(arguments)`` when the request was made (keyed: safe to file anywhere)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments_hash", run_digest(self.arguments))

    def matches(self, arguments: Mapping[str, Any]) -> bool:
        """Whether ``arguments`` are still the ones this request was made for."""
        return hmac.compare_digest(run_digest(arguments), self.arguments_hash)

    @property
    def expires_at(self) -> float | None:
        """``requested_at`` plus the rule's timeout; None when the rule names none."""
        if self.approval is None:
            return None
        return self.requested_at + float(self.approval.timeout_s)


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """How a request ended. ``wait_ms`` is the time the call was held.

    ``refusal``: set by a broker that will not let the call run whatever ``status`` says
    (the words the caller gets), e.g. when the stored request no longer matches what was
    filed.
    """

    status: ApprovalStatus
    approval_id: str | None = None
    decided_by: str | None = None
    reason: str | None = None
    wait_ms: float = 0.0
    refusal: str | None = None

    def proceeds(self, request: ApprovalRequest) -> bool:
        """Whether the held call may run: approved, or expired under ``on_timeout: ALLOW``,
        and no refusal."""
        if self.refusal is not None:
            return False
        if self.status == "approved":
            return True
        if self.status == "expired" and request.approval is not None:
            return str(request.approval.on_timeout).upper() == "ALLOW"
        return False


@runtime_checkable
class ApprovalBroker(Protocol):
    """Files a held call and waits for its decision.

    Implementations must be safe to call from many threads and tasks at once, and
    ``arequest`` must wait without blocking the event loop. Raising is treated as a
    denial (fail closed), with the error as the reason.
    """

    def request(self, request: ApprovalRequest) -> ApprovalOutcome: ...

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome: ...


class FailClosedBroker:
    """Refuse every held call, immediately: used when no broker can be reached.

    Without arguments the refusal is "approval required" by ``tooltrail:no-broker`` (no
    broker configured); ``reason`` / ``decided_by`` say why a configured one is unusable.
    """

    def __init__(self, reason: str = APPROVAL_REQUIRED_REASON, decided_by: str = NO_BROKER):
        self.reason = reason
        self.decided_by = decided_by

    def request(self, request: ApprovalRequest) -> ApprovalOutcome:
        return ApprovalOutcome(status="denied", decided_by=self.decided_by, reason=self.reason)

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
        return self.request(request)


def notify_filed(request: ApprovalRequest, approval_id: str) -> None:
    """Tell the requester its approval id; a failing callback never affects the call."""
    if request.on_filed is None:
        return
    try:
        request.on_filed(approval_id)
    except Exception:
        _log.debug("tooltrail: on_filed callback failed", exc_info=True)


def default_broker(data_dir: str | os.PathLike[str] | None = None) -> ApprovalBroker:
    """The broker used when none is given to ``configure`` / ``instrument``.

    ``$TOOLTRAIL_COLLECTOR_URL`` wins (remote agents); else ``data_dir`` (or
    ``$TOOLTRAIL_DATA``) gives the local control store; else every held call is refused.
    Never raises: a broker that cannot be built refuses every held call, saying why.
    """
    url = os.environ.get(ENV_COLLECTOR_URL, "").strip()
    if url:
        return _http_broker(url)
    root = data_dir if data_dir is not None and str(data_dir) else os.environ.get(ENV_DATA)
    if not root:
        return FailClosedBroker()
    from tooltrail.instrumentation.store_broker import ControlStoreBroker

    return ControlStoreBroker(Path(root))


def _http_broker(url: str) -> ApprovalBroker:
    """``HttpApprovalBroker(url, token=...)``, imported only when asked for."""
    try:
        module = importlib.import_module(_HTTP_BROKER_MODULE)
        broker: ApprovalBroker = module.HttpApprovalBroker(
            url, token=os.environ.get(ENV_COLLECTOR_TOKEN) or None
        )
    except Exception as e:
        reason = (
            f"approval broker for {ENV_COLLECTOR_URL}={url} is unavailable"
            f" ({type(e).__name__}: {e})"
        )
        _log.error("tooltrail: %s; every held call will be denied", reason)
        return FailClosedBroker(reason=reason, decided_by=BROKER_ERROR)
    return broker
