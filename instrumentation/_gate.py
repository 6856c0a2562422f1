"""Session control at call time: pause, resume and cancel, read through the settings'
session gate before a call's span starts (and again after an approval).

A paused session's call waits in ``session_veto`` / ``asession_veto`` until the session is
resumed or canceled; a canceled session's call gets a ``Veto`` (rule ``session-canceled``,
reason "session canceled"), which ``begin`` records as a DENY whatever the policy says. A
gate that cannot be read vetoes the call when enforcing (rule ``session-control-error``),
else lets it go, saying so once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from tooltrail.control import CANCELED, PAUSED, SESSION_CANCELED
from tooltrail.instrumentation._session import Session
from tooltrail.instrumentation._settings import Settings
from tooltrail.semconv import VERDICT_SESSION_CANCELED, VERDICT_SESSION_CONTROL_ERROR

__all__ = [
    "SESSION_CANCELED_RULE",
    "SESSION_CONTROL_ERROR_RULE",
    "Veto",
    "asession_veto",
    "session_veto",
]

_log = logging.getLogger("tooltrail.instrumentation")

SESSION_CANCELED_RULE: Final = VERDICT_SESSION_CANCELED
SESSION_CONTROL_ERROR_RULE: Final = VERDICT_SESSION_CONTROL_ERROR


@dataclass(frozen=True, slots=True)
class Veto:
    """Session control refuses a call whatever the policy says: passed to ``begin`` as
    ``veto=``, the call is recorded as a DENY by ``rule`` with ``reason`` (the policy's
    targets and blast radius kept when enforcing). The gateway uses it to record a call
    it cannot read (``Veto(POLICY_ERROR_RULE, reason)``)."""

    rule: str
    reason: str


_CANCELED: Final = Veto(SESSION_CANCELED_RULE, SESSION_CANCELED)


_gate_warned = False


def session_veto(st: Settings, sess: Session) -> Veto | None:
    """Check session control before a call (blocking while the session is paused)."""
    gate = st.session_gate
    if gate is None:
        return None
    try:
        state = gate.state(sess.session_id)
        if state == PAUSED:
            state = gate.wait_while_paused(sess.session_id)
    except Exception as e:
        return _gate_failed(st, e)
    return _CANCELED if state == CANCELED else None


async def asession_veto(st: Settings, sess: Session) -> Veto | None:
    """``session_veto`` for async callers: a paused session does not block the event loop."""
    gate = st.session_gate
    if gate is None:
        return None
    try:
        # A gate that must ask over the network (the collector's) has an async check.
        astate = getattr(gate, "astate", None)
        state = await astate(sess.session_id) if astate else gate.state(sess.session_id)
        if state == PAUSED:
            state = await gate.await_while_paused(sess.session_id)
    except Exception as e:
        return _gate_failed(st, e)
    return _CANCELED if state == CANCELED else None


def _gate_failed(st: Settings, error: Exception) -> Veto | None:
    """A store that cannot be read: deny when enforcing, else run the call (say so once)."""
    global _gate_warned
    reason = f"session control could not be checked: {type(error).__name__}: {error}"
    if st.enforce:
        _log.error("tooltrail: %s; denying the call", reason)
        return Veto(SESSION_CONTROL_ERROR_RULE, reason)
    if not _gate_warned:
        _gate_warned = True
        _log.warning("tooltrail: %s; not enforcing, so calls go ahead", reason)
    return None
