"""The policy engine's value types: what goes in (``ToolCall``) and what comes out
(``Decision``, ``ApprovalSettings``), plus the fail-closed ``policy_error_decision``.

These are the types other parts code against (see docs/POLICY.md, "Python API"); they carry
no behaviour beyond (de)serialisation so that the instrumentation can import them cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from tooltrail.semconv import BLAST_RADII as BLAST_RADII  # re-exported for the engine
from tooltrail.semconv import DECISIONS

ALLOW, DENY, REWRITE, REQUIRE_APPROVAL = DECISIONS

# Strictness, weakest first: the strictest matching rule wins (SPEC §4). Keys are in the
# order of DECISIONS.
STRICTNESS: Final[Mapping[str, int]] = {ALLOW: 0, DENY: 3, REWRITE: 1, REQUIRE_APPROVAL: 2}

VERDICT_PASS: Final = "pass"
"""Verdict when no rule matched and the policy's ``default`` decided."""
VERDICT_POLICY_ERROR: Final = "policy-error"
"""Verdict when the policy could not load or could not evaluate a call (fail closed)."""
PRESET_VERDICT_PREFIX: Final = "preset:"
"""Verdict prefix when no rule matched and a preset decided, e.g. ``preset:deny-all``."""

ANNOTATION_HINTS: Final = (
    ("readOnlyHint", "read_only_hint"),
    ("destructiveHint", "destructive_hint"),
    ("idempotentHint", "idempotent_hint"),
    ("openWorldHint", "open_world_hint"),
)
"""The MCP ToolAnnotations hints, camelCase (the wire) and snake_case (the Python model)
spellings; each is a boolean, or null / absent for the MCP default."""

REDACTED: Final = "[REDACTED]"
DEFAULT_RADIUS: Final = "Low"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as the engine sees it. ``annotations`` are the MCP ToolAnnotations
    (``readOnlyHint``, ``destructiveHint``…, camelCase or snake_case) when known."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    agent: str | None = None
    session_id: str | None = None
    server: str | None = None
    annotations: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ApprovalSettings:
    """How a REQUIRE_APPROVAL call is held: for how long, what happens on timeout, who may
    decide (``("*",)`` = anyone)."""

    timeout_s: float
    on_timeout: str
    approvers: tuple[str, ...]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "timeout_s": self.timeout_s,
            "on_timeout": self.on_timeout,
            "approvers": list(self.approvers),
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one call.

    ``arguments`` are the call's arguments *after redaction*: when any matched rule redacts,
    the secret is replaced here too (whatever the winning decision), so callers must record
    ``arguments`` (never their own copy) and forward ``arguments_rewritten`` to the tool
    when ``decision == "REWRITE"``. ``redactions`` counts the argument values redacted.
    """

    decision: str
    policy_rule: str
    policy_matched: tuple[str, ...]
    policy_version: str
    blast_radius: str
    target_repo: str | None
    target_branch: str | None
    target_path: str | None
    arguments: Mapping[str, Any]
    arguments_rewritten: Mapping[str, Any] | None
    reason: str | None
    approval: ApprovalSettings | None
    redactions: int = 0

    def to_json_dict(self) -> dict[str, Any]:
        """Exactly the SPEC §5 ``policy explain --format json`` object."""
        return {
            "decision": self.decision,
            "policy_rule": self.policy_rule,
            "policy_matched": list(self.policy_matched),
            "blast_radius": self.blast_radius,
            "target_repo": self.target_repo,
            "target_branch": self.target_branch,
            "arguments": plain(self.arguments),
            "arguments_rewritten": (
                None if self.arguments_rewritten is None else plain(self.arguments_rewritten)
            ),
            "reason": self.reason,
        }


def _decision_constructor() -> Callable[..., Decision]:
    """A constructor for Decision about twice as fast as the frozen dataclass ``__init__``
    (which calls ``object.__setattr__`` per field): the engine builds one per call."""
    setters = tuple(Decision.__dict__[f.name].__set__ for f in fields(Decision))
    if len(setters) != 13:  # keep in step with make_decision's parameters
        raise RuntimeError("Decision fields changed; update make_decision")
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12 = setters
    new = object.__new__

    def make_decision(
        decision: str,
        policy_rule: str,
        policy_matched: tuple[str, ...],
        policy_version: str,
        blast_radius: str,
        target_repo: str | None,
        target_branch: str | None,
        target_path: str | None,
        arguments: Mapping[str, Any],
        arguments_rewritten: Mapping[str, Any] | None,
        reason: str | None,
        approval: ApprovalSettings | None,
        redactions: int,
    ) -> Decision:
        d = new(Decision)
        s0(d, decision)
        s1(d, policy_rule)
        s2(d, policy_matched)
        s3(d, policy_version)
        s4(d, blast_radius)
        s5(d, target_repo)
        s6(d, target_branch)
        s7(d, target_path)
        s8(d, arguments)
        s9(d, arguments_rewritten)
        s10(d, reason)
        s11(d, approval)
        s12(d, redactions)
        return d

    return make_decision


make_decision = _decision_constructor()
"""``make_decision(...)`` takes every Decision field positionally, in declaration order."""


def plain(value: Any) -> Any:
    """A JSON-shaped deep copy: Mappings become dicts, tuples/lists become lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def policy_error_decision(call: ToolCall, reason: str, policy_version: str = "") -> Decision:
    """The fail-closed decision for a call that no policy could decide: DENY with verdict
    ``policy-error`` and blast radius Low (nothing was evaluated to rate it)."""
    arguments = call.arguments if isinstance(call.arguments, Mapping) else {}
    return Decision(
        decision=DENY,
        policy_rule=VERDICT_POLICY_ERROR,
        policy_matched=(),
        policy_version=policy_version,
        blast_radius=DEFAULT_RADIUS,
        target_repo=None,
        target_branch=None,
        target_path=None,
        arguments=arguments,
        arguments_rewritten=None,
        reason=reason,
        approval=None,
    )
