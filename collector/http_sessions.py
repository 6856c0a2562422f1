"""The collector's session-control routes, ``GET|POST /v1/sessions/{id}/control``: a mixin
of the request handler (the store side is :mod:`tooltrail.collector.approvals_http`).

Example::

    class _Handler(SessionRoutes, BaseHTTPRequestHandler): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tooltrail.access import Principal
from tooltrail.collector import approvals_http as apr

if TYPE_CHECKING:
    from tooltrail.collector.http_core import HandlerCore


class SessionRoutes:
    """Session control (mixed into the collector's request handler)."""

    def _get_session_control(self: HandlerCore, session_id: str, query: str) -> None:
        who: Principal | None = None
        if self._access_on():
            who = self._who("sessions")
            if who is None:
                return
            if who.is_agent and not self.collector.access.owns_session(who.name, session_id):
                self._forbid("sessions", f"session {session_id!r} belongs to another agent")
                return

        def read(wait_s: float) -> dict[str, Any]:
            c = self.collector
            return apr.session_json(apr.session_wait(c.data_dir, session_id, wait_s, c.stop))

        self._long_poll("sessions", query, read, checked=who is not None)

    def _post_session_control(self: HandlerCore, session_id: str) -> None:
        # Pausing or canceling someone's agent is an operator's act, like a decision: it
        # needs the decision token (or the token when only one is set).
        who: Principal | None = None
        if self._access_on():
            who = self._user("sessions", "control")
            if who is None:
                return

        def act(doc: dict[str, Any]) -> dict[str, Any]:
            c = self.collector
            signer = None if who is None else c.access.signer(who, self._bearer())
            return apr.session_json(apr.set_session(c.data_dir, session_id, doc, who, signer))

        self._operator_post("sessions", "session control", act, "session_controls_total", who)
