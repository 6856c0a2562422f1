"""The streamable HTTP gateway: ``tooltrail proxy --listen HOST:PORT``.

MCP's streamable HTTP transport (spec 2025-06-18 / 2025-11-25) on starlette + uvicorn:
``POST /mcp`` carries client messages (answered as an SSE stream when the client accepts
one, else as JSON; 202 for notifications and responses), ``GET /mcp`` opens the stream for
the server's own messages, ``DELETE /mcp`` ends the session. ``initialize`` opens an MCP
session: a new ``Mcp-Session-Id``, a new server (a stdio ``COMMAND`` started for it, or a
session at the ``--upstream`` server) and a new ``Gateway`` (gateway/stdio.py) that
governs it exactly as over stdio. That id is the tooltrail session of its spans.

Routing what the gateway writes for the client: a response goes to the POST that carried
its request; progress to the POST whose request named its token; anything else the server
says (its notifications and requests: sampling, elicitation, roots) to the GET stream, or
the newest open POST stream when there is none, or is kept (bounded) until a GET stream
opens. Nothing is re-encoded: the server's bytes are the SSE event's data.

Loopback binds check ``Host`` and ``Origin`` (DNS rebinding); a non-loopback bind needs
``--token`` and every request its bearer (constant-time compare).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx2
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tooltrail import config
from tooltrail._net import is_loopback
from tooltrail.errors import BadInputError
from tooltrail.gateway.connection import MAX_LINE, Gateway, ProxyOptions
from tooltrail.gateway.http_session import McpSession, collect, events
from tooltrail.gateway.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_GONE,
    read_client,
    request_key,
)
from tooltrail.gateway.naming import check_server_name, server_name_of
from tooltrail.gateway.servers import ServerSpec
from tooltrail.gateway.stdio import SERVER_EXIT_GRACE_S, reap, tracing
from tooltrail.gateway.upstream import TIMEOUT, UpstreamLink
from tooltrail.instrumentation._settings import Settings, policy_decider

__all__ = ["HttpOptions", "run_http"]

EVENTS_PATH: Final = "/v1/events"
# Event streams open at once (each holds a worker thread while it follows).
MAX_EVENT_STREAMS: Final = 16

_log = logging.getLogger("tooltrail.gateway")

SESSION_HEADER: Final = "mcp-session-id"
VERSION_HEADER: Final = "mcp-protocol-version"
# Versions of the MCP spec whose HTTP transport this gateway speaks (the header's values).
VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
DEFAULT_IDLE_S: Final = 1800.0
DEFAULT_MAX_SESSIONS: Final = 64
# How long uvicorn waits for open streams at shutdown before closing them.
SHUTDOWN_GRACE_S: Final = 3.0


@dataclass(frozen=True, slots=True)
class HttpOptions:
    host: str
    port: int
    proxy: ProxyOptions
    servers: tuple[ServerSpec, ...]
    token: str | None = None
    idle_timeout_s: float = DEFAULT_IDLE_S
    max_sessions: int = DEFAULT_MAX_SESSIONS
    max_body: int = MAX_LINE

    def check(self) -> None:
        """Refuse unsafe or impossible settings with a message naming the option."""
        if not is_loopback(self.host) and not self.token:
            raise BadInputError(
                f"refusing to listen on non-loopback address {self.host!r} without --token: "
                "anyone who can reach it could call the server's tools"
            )
        if not self.servers:
            raise BadInputError("--listen needs a server: -- COMMAND, --upstream URL or --servers")
        if not self.idle_timeout_s > 0:
            raise BadInputError("--idle-timeout must be more than 0 seconds")
        if self.max_sessions < 1:
            raise BadInputError("--max-sessions must be 1 or more")
        for spec in self.servers:  # each server's name, before anything starts
            server_name_for(spec, self.proxy.server_name)


# --- the listener -----------------------------------------------------------------------


class HttpGateway:
    """Every MCP session of one listener, and the starlette app that serves them."""

    def __init__(self, opts: HttpOptions, st: Settings) -> None:
        self.opts = opts
        self.loopback = is_loopback(opts.host)
        self.token = opts.token.encode() if opts.token else None
        self.sessions: dict[str, McpSession] = {}
        self.settings = {spec.path: _settings_for(spec, st) for spec in opts.servers}
        self.http: httpx2.AsyncClient | None = None
        routes = [
            Route(spec.path, self._endpoint(spec), methods=["GET", "POST", "DELETE"])
            for spec in opts.servers
        ]
        # The live event stream of what lands in the gateway's data directory (with
        # --collector nothing lands here: the collector serves its own /v1/events).
        self.events_data = None if opts.proxy.collector else config.data_dir(opts.proxy.data_dir)
        self.event_streams = threading.BoundedSemaphore(MAX_EVENT_STREAMS)
        self.stopping = threading.Event()
        routes.append(Route(EVENTS_PATH, self.events, methods=["GET"]))
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if any(spec.url for spec in self.opts.servers):
            self.http = httpx2.AsyncClient(timeout=TIMEOUT)
        reaper = asyncio.create_task(self._reap_idle())
        try:
            yield
        finally:
            self.stopping.set()  # event streams end
            reaper.cancel()
            await asyncio.gather(
                *(self.end(s, "the gateway is shutting down") for s in list(self.sessions.values()))
            )
            if self.http is not None:
                await self.http.aclose()

    def _endpoint(self, spec: ServerSpec) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            refused = self._refused(request)
            if refused is not None:
                return refused
            if request.method == "POST":
                return await self.post(request, spec)
            if request.method == "GET":
                return await self.get(request, spec)
            return await self.delete(request, spec)

        return endpoint

    # -- who may ask -------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        if self.loopback:
            # DNS rebinding: a web page whose name now points at 127.0.0.1 sends its own
            # Host and Origin; only loopback names reach a loopback-bound gateway.
            host = urlsplit("//" + request.headers.get("host", "")).hostname
            if not host or not is_loopback(host):
                return _plain(421, "Misdirected Request: the Host header is not a loopback name")
            origin = request.headers.get("origin")
            if origin is not None and not is_loopback(urlsplit(origin).hostname or ""):
                return _plain(403, "Forbidden: the Origin is not a loopback origin")
        if self.token is not None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            given = value.strip().encode() if scheme.lower() == "bearer" else b""
            if not hmac.compare_digest(given, self.token):
                return Response(
                    "missing or wrong bearer token\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"www-authenticate": "Bearer"},
                )
        return None

    # -- GET /v1/events: the live record (docs/EVENTS.md) ----------------------------------

    async def events(self, request: Request) -> Response:
        """Server-Sent Events of what lands in the data directory, as ``collect`` serves
        them: filters ``session``, ``agent``, ``decision``, ``kind``, ``since``,
        ``follow=0``; resumable with ``Last-Event-ID``. Same access as the MCP endpoint."""
        from tooltrail.event_stream import EventSource, sse_stream, start_cursor
        from tooltrail.events import make_filter

        refused = self._refused(request)
        if refused is not None:
            return refused
        if self.events_data is None:
            return _plain(404, "with --collector, events are served by the collector")
        query = request.query_params
        try:
            wanted = make_filter(
                sessions=query.getlist("session"),
                agents=query.getlist("agent"),
                decisions=query.getlist("decision"),
                kinds=query.getlist("kind"),
            )
            last = request.headers.get("last-event-id") or query.get("last_event_id")
            cursor = start_cursor(last, query.get("since"), self.events_data)
        except BadInputError as e:
            return _plain(400, str(e))
        if not self.event_streams.acquire(blocking=False):
            return _plain(503, "too many event streams open; retry")
        source = EventSource(self.events_data, cursor)
        follow = query.get("follow") not in ("0", "false", "no")

        def chunks() -> Iterator[bytes]:
            try:  # starlette iterates this in a worker thread; a gone client stops it
                yield from sse_stream(source, wanted, keep_following=follow, stop=self.stopping)
            finally:
                source.close()
                self.event_streams.release()

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)

    # -- POST --------------------------------------------------------------------------

    async def post(self, request: Request, spec: ServerSpec) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return _rpc_error(415, INVALID_REQUEST, "Unsupported Media Type: send application/json")
        try:
            body = await _body(request, self.opts.max_body)
        except ValueError as e:
            return _rpc_error(413, INVALID_REQUEST, str(e))
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            parsed = read_client(body)
        except (ValueError, RecursionError) as e:
            return _rpc_error(400, PARSE_ERROR, f"Parse error: {e}")
        messages = parsed if isinstance(parsed, list) else [parsed]
        if not messages or not all(isinstance(m, dict) for m in messages):
            return _rpc_error(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC message")
        initialize = [m for m in messages if m.get("method") == "initialize"]
        sid = request.headers.get(SESSION_HEADER)
        if sid is None:
            if len(messages) != 1 or not initialize or "id" not in initialize[0]:
                return _rpc_error(400, INVALID_REQUEST, "Bad Request: no Mcp-Session-Id header")
            opened = await self.open(spec, initialize[0])
            if isinstance(opened, Response):
                return opened
            session = opened
        else:
            found = self.sessions.get(sid)
            if found is None or found.spec is not spec or found.closed:
                return _rpc_error(404, INVALID_REQUEST, "Session not found")
            session = found
            if initialize:
                return _rpc_error(400, INVALID_REQUEST, "Bad Request: the session is initialized")
            version = request.headers.get(VERSION_HEADER)
            if version is not None and version not in VERSIONS | {session.client_version}:
                return _rpc_error(
                    400, INVALID_REQUEST, f"Unsupported MCP-Protocol-Version {version}"
                )
        session.last_seen = time.monotonic()
        return await self._relay(request, session, messages, body)

    async def _relay(
        self, request: Request, session: McpSession, messages: list[Any], body: bytes
    ) -> Response:
        gw = session.gw
        assert gw is not None
        headers = {SESSION_HEADER: session.sid}
        requests = [m for m in messages if "method" in m and "id" in m]
        if not requests:  # notifications and responses: accepted, nothing to wait for
            await gw.from_client(body)
            for m in messages:
                if m.get("method") == "notifications/cancelled":
                    session.cancelled(m.get("params"))
            return Response(status_code=202, headers=headers)
        keys = [request_key(m["id"]) for m in requests]
        if len(set(keys)) != len(keys) or any(k in session.by_request for k in keys):
            # The gateway would answer -32600 under an id another POST is waiting for.
            errors = [
                _error(m["id"], INVALID_REQUEST, "request id already in use") for m in requests
            ]
            return JSONResponse(errors if len(errors) > 1 else errors[0], headers=headers)
        sse = "text/event-stream" in request.headers.get("accept", "")
        stream = session.open_post(requests, sse)
        await gw.from_client(body)
        if sse:
            return EventSourceResponse(
                events(session, stream), headers=headers, send_timeout=30, ping=15
            )
        lines = await collect(session, stream)
        answer = lines[0] if len(lines) == 1 else b"[" + b",".join(lines) + b"]"
        return Response(answer, media_type="application/json", headers=headers)

    async def open(self, spec: ServerSpec, initialize: Mapping[str, Any]) -> McpSession | Response:
        """A new MCP session for ``initialize``: its server and its Gateway."""
        if len(self.sessions) >= self.opts.max_sessions:
            return _rpc_error(503, SERVER_GONE, "too many MCP sessions; try again later")
        params = initialize.get("params")
        version = params.get("protocolVersion") if isinstance(params, dict) else None
        session = McpSession(uuid.uuid4().hex, spec, version if isinstance(version, str) else None)
        base = self.opts.proxy
        opts = dataclasses.replace(
            base,
            command=spec.command,
            policy=spec.policy or base.policy,
            session_id=None,
            server_name=server_name_for(spec, base.server_name),
        )
        try:
            if spec.url is not None:
                assert self.http is not None
                session.upstream = UpstreamLink(spec.url, self.http)
                gw = Gateway(opts, self.settings[spec.path], None, None, session, session.upstream)
            else:
                session.process = await asyncio.create_subprocess_exec(
                    *spec.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=MAX_LINE,
                    env={**os.environ, **spec.env},
                )
                gw = Gateway(opts, self.settings[spec.path], session.process, None, session)
        except OSError as e:
            _log.error("cannot start the MCP server %r: %s", spec.command[0], e)
            return _rpc_error(502, SERVER_GONE, f"cannot start the MCP server: {e}")
        # Each Mcp-Session-Id is one tooltrail session: spans carry it as both ids.
        gw.connection_id = gw.session_id = session.sid
        gw.records_end = True  # end() records the session's end
        session.gw = gw
        session.pump = asyncio.create_task(self._pump(session))
        self.sessions[session.sid] = session
        _log.info("MCP session %s opened on %s", session.sid, spec.path)
        return session

    async def _pump(self, session: McpSession) -> None:
        """The server's messages to the client, until it is gone; then the session ends."""
        assert session.gw is not None
        try:
            await session.gw.pump_server()
        except Exception:
            _log.exception("session %s: the relay failed", session.sid)
        if not session.closed:
            await self.end(session, None)

    # -- GET and DELETE ----------------------------------------------------------------

    async def get(self, request: Request, spec: ServerSpec) -> Response:
        session = self._session(request, spec)
        if isinstance(session, Response):
            return session
        if "text/event-stream" not in request.headers.get("accept", ""):
            return _plain(406, "Not Acceptable: GET opens a text/event-stream")
        if session.get_stream is not None:
            return _plain(409, "Conflict: this session's GET stream is already open")
        session.last_seen = time.monotonic()
        stream = session.open_get()
        return EventSourceResponse(
            events(session, stream), headers={SESSION_HEADER: session.sid}, ping=15
        )

    async def delete(self, request: Request, spec: ServerSpec) -> Response:
        session = self._session(request, spec)
        if isinstance(session, Response):
            return session
        await self.end(session, "the client ended the session")
        return Response(status_code=200)

    def _session(self, request: Request, spec: ServerSpec) -> McpSession | Response:
        sid = request.headers.get(SESSION_HEADER)
        if sid is None:
            return _plain(400, "Bad Request: no Mcp-Session-Id header")
        session = self.sessions.get(sid)
        if session is None or session.spec is not spec or session.closed:
            return _plain(404, "Session not found")
        return session

    # -- endings -----------------------------------------------------------------------

    async def end(self, session: McpSession, why: str | None) -> None:
        """End a session: ``why`` None when its server went by itself. The server gets
        its stdin closed (or the upstream a DELETE), then what it left unanswered is
        answered with an error, its spans end, its streams close."""
        if session.closed:
            return
        session.closed = True
        self.sessions.pop(session.sid, None)
        gw = session.gw
        assert gw is not None
        rc: int | None = None
        if why is not None:
            gw.withdraw_all()
            if session.upstream is not None:
                await session.upstream.end(why)
            elif session.process is not None and session.process.stdin is not None:
                session.process.stdin.close()
            if session.pump is not None and session.pump is not asyncio.current_task():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(session.pump), SERVER_EXIT_GRACE_S)
        if session.process is not None:
            rc = await reap(session.process, SERVER_EXIT_GRACE_S if why is None else 1.0)
        if why is None:
            why = "the MCP server exited" + (f" (status {rc})" if rc is not None else "")
            if session.upstream is not None:
                await session.upstream.end(why)
        gw.fail_pending(f"{why} before answering")
        gw.end_inflight(why)
        gw.record_end(why, failed=rc is not None and rc != 0)
        session.close_streams()
        if gw.pins is not None:
            with contextlib.suppress(Exception):
                gw.pins.close()
        _log.info("MCP session %s ended: %s", session.sid, why)

    async def _reap_idle(self) -> None:
        period = min(60.0, self.opts.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                idle = now - session.last_seen > self.opts.idle_timeout_s
                if idle and not session.busy():
                    await self.end(session, "idle for longer than --idle-timeout")


async def _body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the message is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _rpc_error(status: int, code: int, message: str) -> Response:
    return JSONResponse(_error(None, code, message), status_code=status)


def server_name_for(spec: ServerSpec, given: str | None) -> str:
    """The operator's name for a server behind the listener (pins, ``server`` rules):
    its name in ``--servers``, else ``--server-name``, else derived from its command or
    its URL's host; never the name the server reports."""
    if spec.name is not None:
        return check_server_name(spec.name, f"--servers: {spec.name}")
    if given is not None:
        return check_server_name(given)
    if spec.url is not None:
        url = urlsplit(spec.url)  # host and port: two upstreams on one host are two servers
        host = (url.hostname or "") + (f":{url.port}" if url.port else "")
        return check_server_name(host, f"the server name derived from --upstream {spec.url}")
    return server_name_of(spec.command)


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status_code=status, media_type="text/plain")


def _settings_for(spec: ServerSpec, st: Settings) -> Settings:
    """The settings a server's calls are decided with: its own policy when the servers
    file names one (loaded once; one that cannot load denies every call, as --policy)."""
    if spec.policy is None or not st.enforce:
        return st
    decide, loaded, error = policy_decider(spec.policy, True)
    return dataclasses.replace(
        st,
        decide=decide,
        policy=loaded,
        policy_version=loaded.version if loaded is not None else None,
        policy_error=error,
    )


# --- running it -------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise BadInputError(f"--listen {host}:{port}: cannot bind: {e.strerror or e}") from e
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run_http(opts: HttpOptions) -> int:
    """Serve until SIGINT or SIGTERM; every session's server is ended, every span landed.

    Example::

        run_http(HttpOptions("127.0.0.1", 8765, ProxyOptions(command=()), servers))
    """
    opts.check()
    sock = _bind(opts.host, opts.port)
    st, land = tracing(opts.proxy)
    # A policy that did not load was logged by install() ("every tool call will be
    # denied"): every tools/call is denied, fail closed.
    gateway = HttpGateway(opts, st)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    for spec in opts.servers:
        target = spec.url or " ".join(spec.command)
        _log.info("listening on http://%s:%s%s -> %s", shown, port, spec.path, target)
    config = uvicorn.Config(
        gateway.app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down on SIGTERM, then raises it again under the handler it found:
    # this one lets the spans land and the gateway exit 0 (a requested stop).
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        try:
            land()
        except Exception:
            _log.exception("landing the spans failed")
    return 0
