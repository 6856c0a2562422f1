"""Decisions and refusals as the instrumentation and the gateway handle them.

``DecisionLike`` is what a call's span and enforcement read from a
``tooltrail.policy.Decision``; ``LocalDenial`` is the fail-closed DENY made here when the
policy cannot decide (or when session control or the gateway overrules it, through
``refused_as``). ``Denial`` is a refused call as its caller is told about it: a structured
MCP error result, or a ``ToolCallDenied`` raised to the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from tooltrail.errors import TooltrailError
from tooltrail.instrumentation.broker import ApprovalOutcome

if TYPE_CHECKING:
    from tooltrail.policy import ApprovalSettings

__all__ = [
    "DENY",
    "ERROR_TYPE_DENIED",
    "POLICY_ERROR_RULE",
    "REQUIRE_APPROVAL",
    "REWRITE",
    "DecisionLike",
    "Denial",
    "LocalDenial",
    "ToolCallDenied",
    "refused_as",
]

ERROR_TYPE_DENIED: Final = "tool_call_denied"
POLICY_ERROR_RULE: Final = "policy-error"
DENY: Final = "DENY"
REWRITE: Final = "REWRITE"
REQUIRE_APPROVAL: Final = "REQUIRE_APPROVAL"


class ToolCallDenied(PermissionError, TooltrailError):
    """A tool call tooltrail refused: denied by policy, or held for an approval that
    was not given. The tool did not run.

    Attributes:
        tool: the tool's name.
        rule: the policy rule that decided (``policy-error`` when the policy failed).
        reason: why, in words an agent can act on.
        session_id: the session the call belonged to.
        decision: the policy's decision (``DENY`` or ``REQUIRE_APPROVAL``).
        approval_status: for held calls, how the approval ended.
        blast_radius: the call's blast radius (``Low`` … ``Critical``), None if unrated.
        approval_id: for held calls, the approval request's id (None if none was filed).
        approval_decided_by: for held calls, who approved or denied (None if nobody did).
    """

    def __init__(
        self,
        tool: str,
        rule: str,
        reason: str,
        session_id: str,
        decision: str = DENY,
        approval_status: str | None = None,
        *,
        blast_radius: str | None = None,
        approval_id: str | None = None,
        approval_decided_by: str | None = None,
    ) -> None:
        super().__init__(f"tool call {tool!r} denied by rule {rule!r}: {reason}")
        self.tool = tool
        self.rule = rule
        self.reason = reason
        self.session_id = session_id
        self.decision = decision
        self.approval_status = approval_status
        self.blast_radius = blast_radius
        self.approval_id = approval_id
        self.approval_decided_by = approval_decided_by


class DecisionLike(Protocol):
    """What the instrumentation reads from a ``tooltrail.policy.Decision``."""

    @property
    def decision(self) -> str: ...
    @property
    def policy_rule(self) -> str: ...
    @property
    def policy_matched(self) -> tuple[str, ...]: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def blast_radius(self) -> str: ...
    @property
    def target_repo(self) -> str | None: ...
    @property
    def target_branch(self) -> str | None: ...
    @property
    def target_path(self) -> str | None: ...
    @property
    def arguments(self) -> Mapping[str, Any]: ...
    @property
    def arguments_rewritten(self) -> Mapping[str, Any] | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def approval(self) -> ApprovalSettings | None: ...


@dataclass(frozen=True, slots=True)
class LocalDenial:
    """The fail-closed decision when even ``tooltrail.policy`` cannot produce one."""

    reason: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    decision: str = DENY
    policy_rule: str = POLICY_ERROR_RULE
    policy_matched: tuple[str, ...] = ()
    policy_version: str = ""
    blast_radius: str = "Low"
    target_repo: str | None = None
    target_branch: str | None = None
    target_path: str | None = None
    arguments_rewritten: Mapping[str, Any] | None = None
    approval: ApprovalSettings | None = None
    redactions: int = 0


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused call, as the caller is told about it."""

    tool: str
    decision: str
    rule: str
    reason: str
    session_id: str
    blast_radius: str
    approval: ApprovalOutcome | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The structured error an agent receives (MCP: the text of an isError result)."""
        out: dict[str, Any] = {
            "error": ERROR_TYPE_DENIED,
            "message": f"tooltrail refused {self.tool}: {self.reason} (rule {self.rule})",
            "tool": self.tool,
            "decision": self.decision,
            "rule": self.rule,
            "reason": self.reason,
            "blast_radius": self.blast_radius,
            "session_id": self.session_id,
        }
        if self.approval is not None:
            out["approval"] = {
                "status": self.approval.status,
                "id": self.approval.approval_id,
                "decided_by": self.approval.decided_by,
            }
        return out

    def to_exception(self) -> ToolCallDenied:
        approval = self.approval
        return ToolCallDenied(
            self.tool,
            self.rule,
            self.reason,
            self.session_id,
            decision=self.decision,
            approval_status=approval.status if approval else None,
            blast_radius=self.blast_radius or None,
            approval_id=approval.approval_id if approval else None,
            approval_decided_by=approval.decided_by if approval else None,
        )


def refused_as(d: DecisionLike, rule: str, reason: str) -> DecisionLike:
    """A DENY by ``rule`` in place of ``d``, keeping what ``d`` found (matched rules,
    version, blast radius, targets, the redacted arguments and their redaction count).
    Used when something other than the policy overrules it: session control, a rewrite
    that cannot be applied, the gateway's pinned tool definitions."""
    redactions = getattr(d, "redactions", 0)
    return LocalDenial(
        reason,
        d.arguments,
        policy_rule=rule,
        policy_matched=tuple(d.policy_matched),
        policy_version=d.policy_version,
        blast_radius=d.blast_radius,
        target_repo=d.target_repo,
        target_branch=d.target_branch,
        target_path=d.target_path,
        redactions=redactions if isinstance(redactions, int) else 0,
    )
