"""Holding a REQUIRE_APPROVAL call for a decision: ``ask_approval`` / ``aask_approval``
file the call's request with the settings' broker and wait; the outcome is stamped on the
span and either lets the call go or becomes its ``Denial``, with a reason naming who
decided and why. A broker that fails is a refusal, never a pass. ``confirm_held`` then
checks the call as it would run against what was approved (arguments changed while held:
refused) and session control's answer after the wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from tooltrail.instrumentation._call import Invocation, denial_of, scrub_text
from tooltrail.instrumentation._decision import Denial
from tooltrail.instrumentation._gate import Veto
from tooltrail.instrumentation.broker import (
    APPROVAL_REQUIRED_REASON,
    BROKER_ERROR,
    NO_BROKER,
    SYSTEM_ACTOR_PREFIX,
    ApprovalOutcome,
    ApprovalRequest,
)
from tooltrail.semconv import (
    TT_APPROVAL_DECIDED_BY,
    TT_APPROVAL_ID,
    TT_APPROVAL_STATUS,
    TT_APPROVAL_WAIT_MS,
)

__all__ = ["ARGUMENTS_CHANGED_REASON", "aask_approval", "ask_approval", "confirm_held"]

_log = logging.getLogger("tooltrail.instrumentation")

ARGUMENTS_CHANGED_REASON: Final = (
    "the arguments changed after the approval request was made; what was approved is not"
    " what would run"
)


def ask_approval(inv: Invocation) -> None:
    """Hold a REQUIRE_APPROVAL call at the broker (blocking); no-op for other calls."""
    req = inv.approval_request
    if req is None:
        return
    started = time.perf_counter()
    try:
        outcome = inv.settings.broker.request(req)
    except Exception as e:  # a broken broker is a refusal, never a pass
        outcome = _broker_failed(e)
    except BaseException:
        _stopped_waiting(inv)
        raise
    _apply_outcome(inv, req, outcome, started)


async def aask_approval(inv: Invocation) -> None:
    """``ask_approval`` for async callers: waits without blocking the event loop."""
    req = inv.approval_request
    if req is None:
        return
    started = time.perf_counter()
    try:
        outcome = await inv.settings.broker.arequest(req)
    except Exception as e:
        outcome = _broker_failed(e)
    except BaseException:  # cancelled (the caller gave up), interrupted
        _stopped_waiting(inv)
        raise
    _apply_outcome(inv, req, outcome, started)


def _stopped_waiting(inv: Invocation) -> None:
    """The caller stopped waiting before a decision (the broker marks the stored request
    abandoned): the span says so too, so store, span and views tell one story."""
    try:
        inv.span.set_attribute(TT_APPROVAL_STATUS, "abandoned")
    except Exception:
        _log.debug("tooltrail: could not mark the span abandoned", exc_info=True)


def _broker_failed(e: Exception) -> ApprovalOutcome:
    _log.exception("tooltrail: approval broker failed")
    return ApprovalOutcome(
        status="denied",
        decided_by=BROKER_ERROR,
        reason=f"the approval broker failed: {type(e).__name__}: {e}",
    )


def _apply_outcome(
    inv: Invocation, req: ApprovalRequest, outcome: ApprovalOutcome, started: float
) -> None:
    inv.approval_outcome = outcome
    wait_ms = outcome.wait_ms or (time.perf_counter() - started) * 1000.0
    attrs: dict[str, Any] = {TT_APPROVAL_STATUS: outcome.status, TT_APPROVAL_WAIT_MS: wait_ms}
    if outcome.approval_id is not None:
        attrs[TT_APPROVAL_ID] = outcome.approval_id
    if outcome.decided_by is not None:
        attrs[TT_APPROVAL_DECIDED_BY] = scrub_text(inv, outcome.decided_by)
    inv.span.set_attributes(attrs)
    if outcome.proceeds(req):
        inv.arguments = req.arguments
        return
    assert inv.decision is not None
    inv.denial = denial_of(inv, inv.decision, _refusal_reason(req, outcome), outcome)


def _refusal_reason(req: ApprovalRequest, outcome: ApprovalOutcome) -> str:
    """Why a held call does not run, in words naming who decided and why."""
    if outcome.refusal is not None:
        return outcome.refusal
    if outcome.decided_by == NO_BROKER:
        return APPROVAL_REQUIRED_REASON
    if outcome.decided_by and outcome.decided_by.startswith(SYSTEM_ACTOR_PREFIX):
        return outcome.reason or APPROVAL_REQUIRED_REASON  # tooltrail itself could not ask
    if outcome.status == "denied" and outcome.decided_by:
        return f"approval denied by {outcome.decided_by}" + (
            f": {outcome.reason}" if outcome.reason else ""
        )
    if outcome.status == "expired":
        on_timeout = req.approval.on_timeout if req.approval is not None else "DENY"
        return f"approval request expired without a decision (on_timeout: {on_timeout})"
    if outcome.status == "abandoned":
        return "approval request abandoned before a decision" + (
            f" ({outcome.reason})" if outcome.reason else ""
        )
    return outcome.reason or APPROVAL_REQUIRED_REASON


def confirm_held(inv: Invocation, live: Mapping[str, Any], veto: Veto | None) -> None:
    """After an approval let a held call go: refuse it if its arguments changed while it
    was held, or if session control now refuses it; else mark it to send ``live``."""
    req = inv.approval_request
    assert req is not None and inv.decision is not None
    if not req.matches(live):
        inv.denial = denial_of(inv, inv.decision, ARGUMENTS_CHANGED_REASON, inv.approval_outcome)
    elif veto is not None:
        inv.denial = Denial(
            tool=inv.tool,
            decision=inv.decision.decision,
            rule=veto.rule,
            reason=veto.reason,
            session_id=inv.session.session_id,
            blast_radius=inv.decision.blast_radius,
            approval=inv.approval_outcome,
        )
    else:
        inv.arguments = live
        inv.held = True
