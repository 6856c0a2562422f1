"""The collector's approval routes: a mixin of the request handler.

Filing (``POST /v1/approvals``), listing, reading with the long-poll
(``GET /v1/approvals[/{id}]``), withdrawing and deciding
(``POST /v1/approvals/{id}/withdraw|decision``). What each does to the control store is
:mod:`tooltrail.collector.approvals_http`; this module is only the HTTP side.

Example::

    class _Handler(ApprovalRoutes, BaseHTTPRequestHandler): ...
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tooltrail.access import Principal
from tooltrail.collector import approvals_http as apr
from tooltrail.errors import TooltrailError

if TYPE_CHECKING:
    from tooltrail.collector.http_core import HandlerCore


class ApprovalRoutes:
    """The ``/v1/approvals`` routes (mixed into the collector's request handler)."""

    def _post_approval(self: HandlerCore) -> None:
        # Filing a request is an agent's act: the agents' token is enough; with access
        # control on, an agent's credential, and the request is filed under its name.
        agent: Principal | None = None
        if self._access_on():
            agent = self._agent("approvals")
            if agent is None:
                return

        def act(doc: dict[str, Any]) -> dict[str, Any]:
            gate = self.collector.access
            record = apr.file_approval(
                self.collector.data_dir,
                doc,
                agent=None if agent is None else agent.name,
                owns_session=None
                if agent is None
                else functools.partial(gate.owns_session, agent.name),
            )
            answer = apr.record_json(record)
            # Only the filer learns it: it is what proves a withdrawal comes from the filer.
            key = self.collector.withdraw_key
            answer["withdraw_secret"] = apr.withdraw_secret(key, record.approval_id)
            return answer

        allowed = self._authorized if agent is None else self._checked
        self._post_json("approvals", "approval request", act, "approvals_filed_total", allowed, 201)

    def _get_approval(self: HandlerCore, approval_id: str, query: str) -> None:
        who: Principal | None = None
        if self._access_on():
            who = self._who("approvals")
            if who is None:
                return

        def read(wait_s: float) -> dict[str, Any]:
            c = self.collector
            if who is not None and who.is_agent:
                apr.own_request(c.data_dir, approval_id, who.name)  # else 404
            record = apr.wait_for(c.data_dir, approval_id, wait_s, c.stop, self._client_gone)
            return apr.record_json(record, c.data_dir)

        self._long_poll("approvals", query, read, checked=who is not None)

    def _post_withdrawal(self: HandlerCore, approval_id: str) -> None:
        # The agent that filed the request stops waiting: the agents' token (when one is
        # set) and the request's withdraw secret, which only its filer got (else 403).
        agent: Principal | None = None
        if self._access_on():
            agent = self._agent("approvals")
            if agent is None:
                return

        def act(doc: dict[str, Any]) -> dict[str, Any]:
            c = self.collector
            if agent is not None:
                apr.own_request(c.data_dir, approval_id, agent.name)  # else 404
            return apr.record_json(apr.withdraw(c.data_dir, approval_id, doc, c.withdraw_key))

        allowed = self._authorized if agent is None else self._checked
        self._post_json("approvals", "withdrawal", act, "approvals_withdrawn_total", allowed, 200)

    def _list_approvals(self: HandlerCore, query: str) -> None:
        kind = "approvals"
        agent: str | None = None
        if self._access_on():
            who = self._who(kind)
            if who is None:
                return
            agent = who.name if who.is_agent else None  # an agent sees its own only
        elif not self._authorized(kind):
            return
        status = parse_qs(query).get("status", ["pending"])[0]
        try:
            records = apr.list_approvals(self.collector.data_dir, status, agent)
        except TooltrailError as e:
            self._error(apr.status_of(e), str(e), kind=kind)
            return
        self._json(200, {"approvals": [apr.record_json(r) for r in records]}, kind=kind)

    def _post_decision(self: HandlerCore, approval_id: str) -> None:
        who: Principal | None = None
        if self._access_on():
            who = self._user("decisions", "decide")
            if who is None:
                return

        def act(doc: dict[str, Any]) -> dict[str, Any]:
            c = self.collector
            signer = None if who is None else c.access.signer(who, self._bearer())
            record = apr.decide(c.data_dir, approval_id, doc, who, signer)
            return apr.record_json(record, c.data_dir)

        self._operator_post("decisions", "decision", act, "approval_decisions_total", who)
