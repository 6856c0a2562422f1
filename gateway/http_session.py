"""One MCP session of the streamable HTTP gateway: its Gateway, its server, and the
streams its messages go out on (gateway/http.py serves them).

What the Gateway writes for the client is routed here: a response to the POST that
carried its request; progress to the POST whose request named the token; anything else
the server sends to the GET stream, else the newest open POST stream, else kept (bounded)
until a GET stream opens. Lines are the server's own bytes, never re-encoded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from tooltrail.gateway.servers import ServerSpec
from tooltrail.gateway.stdio import Gateway, _key
from tooltrail.gateway.upstream import UpstreamLink

__all__ = ["McpSession", "collect", "events"]

_log = logging.getLogger("tooltrail.gateway")

# Server messages kept for a GET stream not open yet; past this the oldest are dropped.
BACKLOG: Final = 1000


# Messages queued for one session's client before its server's output waits.
MAX_QUEUED: Final = 4096


class _Stream:
    """One POST's SSE (or JSON) answer, or the GET stream: lines queued for the client."""

    def __init__(self, waiting: set[str], tokens: Sequence[str] = (), sse: bool = True) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.waiting = waiting
        self.tokens = tuple(tokens)
        # A JSON answer holds responses only; notifications need a stream.
        self.sse = sse
        self.open = True

    def put(self, line: bytes) -> None:
        if self.open:
            self.queue.put_nowait(line)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.queue.put_nowait(None)


class McpSession:
    """One ``Mcp-Session-Id``: one Gateway, one server, the streams to the client."""

    def __init__(self, sid: str, spec: ServerSpec, version: str | None) -> None:
        self.sid = sid
        self.spec = spec
        self.client_version = version
        self.gw: Gateway | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.upstream: UpstreamLink | None = None
        self.pump: asyncio.Task[None] | None = None
        self.by_request: dict[str, _Stream] = {}
        self.by_token: dict[str, _Stream] = {}
        self.posts: list[_Stream] = []
        self.get_stream: _Stream | None = None
        self.backlog: deque[bytes] = deque(maxlen=BACKLOG)
        self.last_seen = time.monotonic()
        self.closed = False

    # The gateway's ClientOut: every message it writes for the client comes here.
    def write(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            _log.warning("session %s: a line for the client is not JSON; dropped", self.sid)
            return
        if isinstance(message, list):  # the gateway's answer to a batch: one per request
            for m in message:
                self._route(m, json.dumps(m, separators=(",", ":")).encode())
        else:
            self._route(message, data.strip())

    async def drain(self) -> None:
        """The server's output waits while this session's client has more than
        ``MAX_QUEUED`` messages unread (its streams' queues), so a client that does not
        read costs its own session a stall, not the gateway its memory."""
        while not self.closed and self._queued() > MAX_QUEUED:
            await asyncio.sleep(0.005)

    def _queued(self) -> int:
        streams = [*self.posts, *self.by_request.values()]
        if self.get_stream is not None:
            streams.append(self.get_stream)
        return sum(s.queue.qsize() for s in {id(s): s for s in streams}.values())

    def _route(self, message: Any, line: bytes) -> None:
        if not isinstance(message, dict):
            return
        if "method" not in message and "id" in message:
            key = _key(message["id"])
            stream = self.by_request.pop(key, None)
            if stream is None:
                _log.warning("session %s: no open request %s for an answer; dropped", self.sid, key)
                return
            stream.put(line)
            stream.waiting.discard(key)
            if not stream.waiting:
                self._forget(stream)
            return
        if message.get("method") == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            stream = self.by_token.get(_key(token))
            if stream is not None:
                stream.put(line)
                return
        target = self.get_stream or next((s for s in reversed(self.posts) if s.sse), None)
        if target is not None:
            target.put(line)
        else:
            self.backlog.append(line)

    def open_post(self, requests: Sequence[Mapping[str, Any]], sse: bool) -> _Stream:
        keys = {_key(m["id"]) for m in requests}
        tokens = [_key(t) for m in requests if sse and (t := _token(m)) is not None]
        stream = _Stream(keys, tokens, sse)
        for key in keys:
            self.by_request[key] = stream
        for token in tokens:
            self.by_token[token] = stream
        self.posts.append(stream)
        return stream

    def open_get(self) -> _Stream:
        stream = self.get_stream = _Stream(set())
        while self.backlog:
            stream.put(self.backlog.popleft())
        return stream

    def _forget(self, stream: _Stream) -> None:
        """A stream closes (all answered, or the client went): unlink it. The session is
        idle from here, not from when the request came (a long call is not idleness)."""
        stream.close()
        self.last_seen = time.monotonic()
        for key in stream.waiting:
            if self.by_request.get(key) is stream:
                del self.by_request[key]
        for token in stream.tokens:
            if self.by_token.get(token) is stream:
                del self.by_token[token]
        if stream in self.posts:
            self.posts.remove(stream)
        if self.get_stream is stream:
            self.get_stream = None

    def cancelled(self, params: Any) -> None:
        """The client withdrew a request: MCP gives it no answer, so its POST stream
        stops waiting for one (and closes when nothing else is awaited on it)."""
        if not isinstance(params, dict) or "requestId" not in params:
            return
        key = _key(params["requestId"])
        stream = self.by_request.pop(key, None)
        if stream is not None:
            stream.waiting.discard(key)
            if not stream.waiting:
                self._forget(stream)

    def busy(self) -> bool:
        return bool(self.posts or self.get_stream or self.by_request)

    def close_streams(self) -> None:
        for stream in [*self.posts, *([self.get_stream] if self.get_stream else [])]:
            self._forget(stream)


def _token(message: Mapping[str, Any]) -> Any:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


async def events(session: McpSession, stream: _Stream) -> AsyncIterator[dict[str, str]]:
    try:
        while (line := await stream.queue.get()) is not None:
            yield {"event": "message", "data": line.decode()}
    finally:  # all answered, or the client went away (not a cancellation, per MCP)
        session._forget(stream)


async def collect(session: McpSession, stream: _Stream) -> list[bytes]:
    lines: list[bytes] = []
    try:
        while (line := await stream.queue.get()) is not None:
            lines.append(line)
    finally:
        session._forget(stream)
    return lines
