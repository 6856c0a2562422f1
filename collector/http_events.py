"""The collector's live-record route, ``GET /v1/events`` (server-sent events): a mixin of the
request handler. The stream itself is :func:`tooltrail.event_stream.sse_stream`.

Example::

    class _Handler(EventRoutes, BaseHTTPRequestHandler): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs

from tooltrail import access
from tooltrail.errors import BadInputError, TooltrailError
from tooltrail.event_stream import EventSource, sse_stream, start_cursor
from tooltrail.events import EventFilter, make_filter

if TYPE_CHECKING:
    from tooltrail.collector.http_core import HandlerCore

CT_EVENT_STREAM: Final = "text/event-stream; charset=utf-8"


class EventRoutes:
    """``GET /v1/events`` (mixed into the collector's request handler)."""

    def _get_events(self: HandlerCore, query: str) -> None:
        kind = "events"
        allowed, owned_by = _events_reader(self, kind)
        if not allowed:
            return
        collector = self.collector
        params = parse_qs(query)
        last = self.headers.get("Last-Event-ID") or _one(params, "last_event_id")
        try:
            event_filter = make_filter(
                sessions=params.get("session", []),
                agents=params.get("agent", []),
                decisions=params.get("decision", []),
                kinds=params.get("kind", []),
                owned_by=owned_by,
            )
            cursor = start_cursor(last, _one(params, "since"), collector.data_dir)
        except BadInputError as e:
            self._error(400, str(e), kind=kind)
            return
        keep_following = _one(params, "follow") not in ("0", "false", "no")
        if not collector.try_stream_slot():
            self._error(503, "too many event streams open; retry", kind=kind)
            return
        source = EventSource(collector.data_dir, cursor, settle=True)
        try:
            _stream(self, kind, source, event_filter, keep_following)
        finally:
            source.close()
            collector.release_stream_slot()


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _events_reader(handler: HandlerCore, kind: str) -> tuple[bool, str | None]:
    """Who may read the stream: without access control the token (when one is set);
    with it a viewer or above, or an agent (its own sessions only: the name returned).
    The shared --token is not enough once access control is on (it is an agents' token,
    and would read every agent's sessions)."""
    if not handler._access_on():
        return handler._authorized(kind), None
    who = handler._who(kind)
    if who is None:
        return False, None
    if who.is_agent:
        return True, who.name
    try:
        access.require(who, "read")
    except TooltrailError as e:
        handler._forbid(kind, str(e))
        return False, None
    return True, None


def _stream(
    handler: HandlerCore,
    kind: str,
    source: EventSource,
    event_filter: EventFilter,
    keep_following: bool,
) -> None:
    """Write the stream until the client goes (a failed write, or the socket reads as
    ended), the collector stops, or (``follow=0``) what is there has been sent. The
    body is delimited by closing the connection (no Content-Length)."""
    collector = handler.collector
    handler._answered = True
    handler.close_connection = True
    handler.send_response(200)
    handler.send_header("Content-Type", CT_EVENT_STREAM)
    handler.send_header("Cache-Control", "no-store")
    handler.send_header("X-Accel-Buffering", "no")  # a proxy in front must not buffer it
    handler.send_header("Connection", "close")
    handler.end_headers()
    collector.metrics.add("requests_total", kind=kind, code="200")
    collector.metrics.add("event_streams_total")
    if handler.command == "HEAD":
        return
    chunks = sse_stream(
        source,
        event_filter,
        keep_following=keep_following,
        heartbeat_s=collector.cfg.events_heartbeat_s,
        client_gone=handler._client_gone,
        stop=collector.stop,
    )
    for chunk in chunks:
        handler.wfile.write(chunk)
        handler.wfile.flush()
        if chunk.startswith(b"id:"):
            collector.metrics.add("events_sent_total")
