"""The collector's OTLP route, ``POST /v1/traces``: a mixin of the request handler.

Who sends (the provenance stamped on the spans), the body, back-pressure, then
:meth:`~tooltrail.collector.server.Collector.ingest`.

Example::

    class _Handler(TraceRoutes, BaseHTTPRequestHandler): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tooltrail import semconv as sc
from tooltrail.collector.receiver import CT_JSON, CT_PROTOBUF, RequestRejected, media_type

if TYPE_CHECKING:
    from tooltrail.collector.http_core import HandlerCore


class TraceRoutes:
    """``POST /v1/traces`` (mixed into the collector's request handler)."""

    def _post_traces(self: HandlerCore) -> None:
        kind = "traces"
        # Errors are encoded like the request; JSON when the request's type is unusable.
        media = (
            CT_PROTOBUF if media_type(self.headers.get("Content-Type")) == CT_PROTOBUF else CT_JSON
        )
        sender = _sender(self, kind, media)
        if sender is None:
            return
        collector = self.collector
        body = self._read_body(collector.cfg.limits.max_body_bytes, kind, media)
        if body is None:
            return
        if collector.shed():
            collector.metrics.add("requests_shed_total")
            self._error(503, "backlog full: retry later", kind=kind, media=media)
            return
        try:
            answer = collector.ingest(
                self.headers.get("Content-Type"),
                self.headers.get("Content-Encoding"),
                body,
                sender=sender,
            )
        except RequestRejected as e:
            self._error(e.status, e.message, kind=kind, media=media)
            return
        self._send(200, answer, media, kind=kind)


def _sender(handler: HandlerCore, kind: str, media: str) -> str | None:
    """Who sends spans (the provenance stamped on them), or None once refused.

    Without access control the token check; with it an agent's credential (or the
    shared --token, so a fleet keeps landing while it moves to its own). Only an
    agent's own credential makes its decisions tooltrail's: ``agent:<name>``; any
    other accepted sender is ``otlp`` (its decision attributes land as claimed)."""
    if not handler._access_on():
        return sc.SOURCE_OTLP if handler._authorized(kind, media) else None
    token = handler.collector.cfg.token
    if token and handler._token_ok(token):
        return sc.SOURCE_OTLP
    who = handler._who(kind, media)
    if who is not None and not who.is_agent:
        handler._forbid(kind, f"{who.name!r} is a user: spans are sent by agents", media)
        return None
    return None if who is None else f"{sc.SOURCE_AGENT_PREFIX}{who.name}"
