"""Approval brokers: where a REQUIRE_APPROVAL tool call waits for a person's decision.

The instrumentation hands every call the policy holds for approval to an
``ApprovalBroker``. A broker files the request somewhere a person can see it, waits until
it is approved, denied or expired, and returns an ``ApprovalOutcome``. The sync
``request`` serves plain functions; the async ``arequest`` serves MCP clients and async
tools and must not block the event loop.

Until a real broker is plugged in (``configure(broker=...)`` or the hook
``default_broker``), ``FailClosedBroker`` answers every request at once: status
``denied``, ``decided_by="tooltrail:no-broker"``. The call is refused exactly like a DENY,
with reason "approval required". A security decision never fails open.

What the instrumentation does with an outcome (``proceeds``):

* ``approved``: the tool runs with exactly ``request.arguments``.
* ``denied``: the tool does not run; the caller gets the structured denial.
* ``expired``: the rule's ``on_timeout`` applies (``DENY`` unless it says ``ALLOW``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tooltrail.policy import ApprovalSettings

# The outcomes of the approvals view (SPEC §3) that end a wait; "pending" never does.
ApprovalStatus = Literal["approved", "denied", "expired"]
APPROVAL_STATUSES: Final = ("approved", "denied", "expired")
APPROVAL_REQUIRED_REASON: Final = "approval required"
NO_BROKER: Final = "tooltrail:no-broker"


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``arguments``: what an approver saw is what runs."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """One held tool call, as the broker should file it.

    ``arguments`` are exactly what the tool runs with if approved (hash them to check
    nothing changed); ``shown_arguments`` are the same after the policy's redactions, which
    is what a person should be shown and what is stored. ``trace_id`` / ``span_id`` are
    lowercase hex of the tool span, so the approval can be joined with the landed span.
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

    @property
    def arguments_hash(self) -> str:
        return arguments_hash(self.arguments)

    @property
    def expires_at(self) -> float | None:
        """``requested_at`` plus the rule's timeout; None when the rule names none."""
        if self.approval is None:
            return None
        return self.requested_at + float(self.approval.timeout_s)


@dataclass(frozen=True, slots=True)
class ApprovalOutcome:
    """How a request ended. ``wait_ms`` is the time the call was held."""

    status: ApprovalStatus
    approval_id: str | None = None
    decided_by: str | None = None
    reason: str | None = None
    wait_ms: float = 0.0

    def proceeds(self, request: ApprovalRequest) -> bool:
        """Whether the held call may run: approved, or expired under ``on_timeout: ALLOW``."""
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
    """The default until a real broker exists: refuse every held call, immediately."""

    def request(self, request: ApprovalRequest) -> ApprovalOutcome:
        return ApprovalOutcome(
            status="denied", decided_by=NO_BROKER, reason=APPROVAL_REQUIRED_REASON
        )

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
        return self.request(request)


def default_broker() -> ApprovalBroker:
    """The broker used when none is given to ``configure`` / ``instrument``.

    The single place a real default (e.g. the control store in the data directory)
    plugs in; today it is ``FailClosedBroker``.
    """
    return FailClosedBroker()
