"""Step 1 of a tool call as one guarded unit (see ``_call`` for the three steps):
``prepare`` / ``aprepare`` check session control, ``begin`` the call, and hold it for
approval when the policy says so. ``refuse`` refuses a prepared call; ``fail_closed`` is
the denial when our own code failed.

If our code fails here the call goes ahead untraced, except when enforcing: then a failure
to decide denies the call (rule ``policy-error``), and a session-control store that cannot
be read denies it too (rule ``session-control-error``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tooltrail.instrumentation._approvals import aask_approval, ask_approval, confirm_held
from tooltrail.instrumentation._call import (
    Invocation,
    Rewrite,
    begin,
    finish_denied,
    finish_exception,
    scrub_text,
)
from tooltrail.instrumentation._decision import DENY, POLICY_ERROR_RULE, REWRITE, Denial
from tooltrail.instrumentation._gate import asession_veto, session_veto
from tooltrail.instrumentation._session import current_session
from tooltrail.instrumentation._settings import Settings
from tooltrail.instrumentation.processor import backlog
from tooltrail.semconv import TT_DECISION, TT_POLICY_REASON

__all__ = ["aprepare", "fail_closed", "prepare", "refuse"]

_log = logging.getLogger("tooltrail.instrumentation")


def fail_closed(st: Settings, tool: str, error: BaseException) -> Denial:
    """The denial when our own code failed before the call while enforcing."""
    _log.error("tooltrail: instrumentation failed before %s; denying it: %r", tool, error)
    try:
        session_id = current_session().session_id
    except Exception:
        session_id = ""
    return Denial(
        tool=tool,
        decision=DENY,
        rule=POLICY_ERROR_RULE,
        reason=f"tooltrail could not decide: {type(error).__name__}: {error}",
        session_id=session_id,
        blast_radius="Low",
    )


def prepare(
    st: Settings,
    tool: str,
    arguments_of: Callable[[], Mapping[str, Any]],
    *,
    mcp: bool,
    server: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rewrite: Rewrite | None = None,
) -> Invocation | Denial | None:
    """Begin the call and hold it for approval when needed (blocking).

    Returns the ``Invocation`` to run, a ``Denial`` (the call must not run; its span has
    ended), or None when our own code failed and the call should run untraced.
    """
    inv: Invocation | None = None
    try:
        sess = current_session()
        veto = session_veto(st, sess)  # may wait while the session is paused
        inv = begin(
            st,
            tool=tool,
            arguments=arguments_of(),
            mcp=mcp,
            server=server,
            annotations=annotations,
            extra=extra,
            session=sess,
            veto=veto,
            rewrite=rewrite,
        )
        if inv.approval_request is not None:
            ask_approval(inv)
            if inv.denial is None:
                # Session control first (it may wait): the arguments checked are then the
                # ones the call runs with right after.
                again = session_veto(st, sess)
                confirm_held(inv, arguments_of(), again)
    except Exception as e:
        return _prepare_failed(st, tool, inv, e)
    except BaseException as e:  # interrupted while held: end the span, let it through
        if inv is not None:
            finish_exception(inv, e)
        raise
    return _settled(inv)


async def aprepare(
    st: Settings,
    tool: str,
    arguments_of: Callable[[], Mapping[str, Any]],
    *,
    mcp: bool,
    server: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rewrite: Rewrite | None = None,
) -> Invocation | Denial | None:
    """``prepare`` for async callers: an approval wait does not block the event loop."""
    inv: Invocation | None = None
    try:
        waiting = backlog()
        if waiting is not None:  # the record is behind: this task waits, not the loop
            await waiting
        sess = current_session()
        veto = await asession_veto(st, sess)  # may wait while the session is paused
        inv = begin(
            st,
            tool=tool,
            arguments=arguments_of(),
            mcp=mcp,
            server=server,
            annotations=annotations,
            extra=extra,
            session=sess,
            veto=veto,
            rewrite=rewrite,
        )
        if inv.approval_request is not None:
            await aask_approval(inv)
            if inv.denial is None:
                again = await asession_veto(st, sess)  # before the check: it may wait
                confirm_held(inv, arguments_of(), again)
    except Exception as e:
        return _prepare_failed(st, tool, inv, e)
    except BaseException as e:  # cancelled while held: end the span, let it through
        if inv is not None:
            finish_exception(inv, e)
        raise
    return _settled(inv)


def _settled(inv: Invocation) -> Invocation | Denial:
    if inv.denial is not None:
        finish_denied(inv)
        return inv.denial
    return inv


def _prepare_failed(
    st: Settings, tool: str, inv: Invocation | None, error: Exception
) -> Denial | None:
    if inv is not None:  # the span started: end it rather than leak it
        finish_exception(inv, error)
    if st.enforce:
        return fail_closed(st, tool, error)
    _log.exception("tooltrail: instrumentation failed before %s; running it untraced", tool)
    return None


def refuse(inv: Invocation, reason: str) -> Denial:
    """Refuse a call after ``prepare`` (e.g. reviewed arguments that cannot be sent).

    A refused REWRITE is recorded as a DENY by its rule, with ``reason``: the rewrite did
    not run. (Its ``tooltrail.arguments.rewritten`` stays on the span: the SDK cannot take
    an attribute back. Callers that can check a rewrite first pass ``rewrite=`` to
    ``prepare``, which records none.)"""
    d = inv.decision
    decision = d.decision if d is not None else DENY
    if decision == REWRITE:
        decision = DENY
        try:
            inv.span.set_attributes({TT_DECISION: DENY, TT_POLICY_REASON: scrub_text(inv, reason)})
        except Exception:
            _log.exception("tooltrail: could not mark the refused rewrite of %s", inv.tool)
    inv.denial = Denial(
        tool=inv.tool,
        decision=decision,
        rule=d.policy_rule if d is not None else POLICY_ERROR_RULE,
        reason=reason,
        session_id=inv.session.session_id,
        blast_radius=d.blast_radius if d is not None else "Low",
    )
    finish_denied(inv)
    return inv.denial
