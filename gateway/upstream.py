"""The server end of a gateway session when the server is remote: a streamable HTTP MCP
server at a URL (``--upstream URL``, or ``url:`` in a ``--servers`` file).

Each gateway session opens its own session upstream: the upstream's ``Mcp-Session-Id`` is
kept here and never shown to our client (the client only knows the gateway's id), so the
two ids are *mapped*, one to one. Messages go up as POSTs; what comes back (a JSON body or
an SSE stream, and the GET stream opened after ``initialize``) is queued as lines for the
gateway's ``pump_server``, exactly as a stdio server's stdout would give them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

import httpx2

from tooltrail.gateway.stdio import MAX_LINE, SERVER_GONE, ServerGone

__all__ = ["UpstreamLink"]

_log = logging.getLogger("tooltrail.gateway")

SESSION_HEADER: Final = "mcp-session-id"
VERSION_HEADER: Final = "mcp-protocol-version"
ACCEPT: Final = "application/json, text/event-stream"
# Connecting and each read; a held call's answer can take long, so no overall timeout.
TIMEOUT: Final = httpx2.Timeout(30.0, read=None)


class UpstreamLink:
    """A ``ServerLink`` to a remote streamable HTTP MCP server (one upstream session)."""

    def __init__(self, url: str, client: httpx2.AsyncClient) -> None:
        self.url = url
        self.client = client
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._get_started = False

    # -- ServerLink ----------------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ServerGone("the upstream session is closed")
        message = json.loads(data)
        request = self.client.build_request("POST", self.url, content=data, headers=self._headers())
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.HTTPError as e:
            raise ConnectionError(f"the upstream server {self.url} cannot be reached: {e}") from e
        if self.session_id is None and response.headers.get(SESSION_HEADER):
            self.session_id = response.headers[SESSION_HEADER]
        if response.status_code == 404 and self.session_id is not None:
            await response.aclose()
            await self.end("the upstream server ended the session (404)")
            raise ServerGone("the upstream server ended the session")
        self._spawn(self._answer(response, message))
        if _is_initialized(message):
            self._open_get_stream()

    async def receive(self) -> bytes:
        return await self.lines.get()

    # -- what comes back -----------------------------------------------------------------

    def _headers(self, accept: str = ACCEPT) -> dict[str, str]:
        headers = {"accept": accept, "content-type": "application/json"}
        if self.session_id is not None:
            headers[SESSION_HEADER] = self.session_id
        if self.protocol_version is not None:
            headers[VERSION_HEADER] = self.protocol_version
        return headers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, response: httpx2.Response, message: Any) -> None:
        try:
            if response.status_code == 202:
                return
            media = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if response.status_code >= 400 or media not in (
                "application/json",
                "text/event-stream",
            ):
                body = (await response.aread())[:500].decode(errors="replace")
                why = f"the upstream server answered HTTP {response.status_code}: {body}"
                _log.warning("%s", why)
                self._fail(message, why)
            elif media == "application/json":
                raw = await response.aread()
                parsed = json.loads(raw)
                for m in parsed if isinstance(parsed, list) else [parsed]:
                    self._put(m, raw if m is parsed else None)  # one message: its bytes
            else:
                await self._events(response)
        except (httpx2.HTTPError, ValueError) as e:
            _log.warning("reading the upstream answer failed: %s", e)
            self._fail(message, f"the upstream answer could not be read: {e}")
        finally:
            await response.aclose()

    async def _events(self, response: httpx2.Response) -> None:
        async for event in httpx2.EventSource(response, max_event_size=MAX_LINE):
            if event.event in ("", "message") and event.data:
                self._put(json.loads(event.data), event.data.encode())

    def _put(self, message: Any, raw: bytes | None = None) -> None:
        if isinstance(message, dict):
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                self.protocol_version = result["protocolVersion"]  # initialize's answer
        line = raw if raw is not None else json.dumps(message, separators=(",", ":")).encode()
        self.lines.put_nowait(line.strip() + b"\n")

    def _fail(self, message: Any, why: str) -> None:
        """Requests the upstream did not answer get a JSON-RPC error from us."""
        for m in message if isinstance(message, list) else [message]:
            if isinstance(m, dict) and "method" in m and "id" in m:
                error = {"code": SERVER_GONE, "message": why}
                self._put({"jsonrpc": "2.0", "id": m["id"], "error": error})

    def _open_get_stream(self) -> None:
        if not self._get_started:
            self._get_started = True
            self._spawn(self._get_stream())

    async def _get_stream(self) -> None:
        """The upstream's stream for messages of its own (405: it has none)."""
        request = self.client.build_request(
            "GET", self.url, headers=self._headers("text/event-stream")
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.HTTPError as e:
            _log.info("no GET stream from the upstream server: %s", e)
            return
        try:
            if response.status_code == 200:
                await self._events(response)
        except (httpx2.HTTPError, ValueError) as e:
            _log.info("the upstream GET stream ended: %s", e)
        finally:
            await response.aclose()

    # -- the end -------------------------------------------------------------------------

    async def end(self, why: str) -> None:
        """End the upstream session (DELETE) and tell ``pump_server`` (b"")."""
        if self.closed:
            return
        self.closed = True
        _log.info("upstream session ends: %s", why)
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self.session_id is not None and "404" not in why:
            with contextlib.suppress(httpx2.HTTPError):
                await self.client.delete(self.url, headers=self._headers())
        self.lines.put_nowait(b"")


def _is_initialized(message: Any) -> bool:
    return isinstance(message, dict) and message.get("method") == "notifications/initialized"
