"""One client connection governed: the ``Gateway`` that decides each ``tools/call``.

Whatever the transport (stdio: gateway/stdio.py; streamable HTTP: gateway/http.py), a
connection's messages go through one ``Gateway``. A client's message is read (duplicate
keys refused), decided when it is a ``tools/call`` and written again for the server
(``jsonrpc.canonical``: never the client's bytes); everything else is relayed as read:

* ``tools/call`` is decided first (``aprepare``, the path the instrumented MCP client
  takes): ALLOW forwards it; DENY answers the client with a ``CallToolResult``
  (``isError: true``) whose text is the structured denial; REWRITE and an approved hold
  forward the reviewed arguments; REQUIRE_APPROVAL waits at the broker (with
  ``notifications/progress`` to the client when its request carried a ``progressToken``).
  Each call runs in its own task, so a held call stalls nothing else, and a client's
  ``notifications/cancelled`` withdraws it. The span of a forwarded call ends when the
  server's response comes back.
* before a first decision the server's tools are listed (the client's ``tools/list``, or
  the gateway's own), so pins and annotations are current; the server is named by the
  operator (gateway/naming.py), never by its ``serverInfo``.
* a line that is not JSON: the side that sent it gets a JSON-RPC parse error (-32700, id
  null) and stderr a log line; the session goes on.

One file past 600 lines on purpose: ``Gateway`` is one connection's state machine (pending
requests, calls being decided and in flight, cancellations, the tool listing, pins); its
parts share that state and are read together when reasoning about what a client can get
past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tooltrail import config
from tooltrail.gateway.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_GONE,
    LineTooLong,
    canonical,
    dumps,
    error,
    read_client,
    read_line,
    request_key,
    valid_id,
)
from tooltrail.gateway.naming import check_server_name, server_name_of
from tooltrail.gateway.pins import PinStore
from tooltrail.instrumentation._call import (
    Invocation,
    begin,
    finish_denied,
    finish_exception,
    finish_result,
)
from tooltrail.instrumentation._decision import (
    DENY,
    POLICY_ERROR_RULE,
    REQUIRE_APPROVAL,
    Denial,
    refused_as,
)
from tooltrail.instrumentation._gate import Veto
from tooltrail.instrumentation._prepare import aprepare, fail_closed
from tooltrail.instrumentation._session import Session, use_session
from tooltrail.instrumentation._session_end import SOURCE_GATEWAY, record_end
from tooltrail.instrumentation._settings import Settings
from tooltrail.instrumentation._shorten import RESULT_PREVIEW_CHARS, to_json
from tooltrail.semconv import (
    JSONRPC_REQUEST_ID,
    MCP_METHOD_NAME,
    MCP_METHOD_TOOLS_CALL,
    MCP_SERVER_NAME,
    MCP_SESSION_ID,
    TT_GATEWAY,
    TT_MCP_CLIENT_NAME,
    TT_MCP_CLIENT_VERSION,
    TT_SERVER_REPORTED,
    TT_TOOL_DEFINITION_CHANGED,
    TT_TOOL_DEFINITION_HASH,
)

__all__ = [
    "ClientOut",
    "Gateway",
    "ProcessLink",
    "ProxyOptions",
    "ServerGone",
    "ServerLink",
    "denied_result",
]

_log = logging.getLogger("tooltrail.gateway")

# The gateway's span attributes are semconv's (the normalizer reads the same constants);
# the short names are this module's for readability.
TT_CLIENT_NAME: Final = TT_MCP_CLIENT_NAME
TT_CLIENT_VERSION: Final = TT_MCP_CLIENT_VERSION
TT_TOOL_CHANGED: Final = TT_TOOL_DEFINITION_CHANGED
TT_TOOL_HASH: Final = TT_TOOL_DEFINITION_HASH
PIN_RULE: Final = "tool-definition-changed"
PIN_MODES: Final = ("deny", "approve", "warn")
DEFAULT_PIN_MODE: Final = "approve"
# A call refused because the gateway's own limits are reached (held calls).
LIMIT_RULE: Final = "gateway-limit"
# How long a changed tool's call is held for a person's look.
PIN_APPROVAL_TIMEOUT_S: Final = 600.0

# Lines up to this size (a large tool result) are read whole; a longer one is skipped.
MAX_LINE: Final = 256 * 1024 * 1024
# A client's message (tool arguments: a file to write, say) up to this size is read; a
# longer one is answered with an error and skipped, so one client cannot balloon us.
MAX_CLIENT_MESSAGE: Final = 64 * 1024 * 1024
# Calls held at once (approvals, a paused session) per connection; more are refused.
MAX_HELD: Final = 256
# Bytes written to a client that is not reading, before the server's output waits.
CLIENT_HIGH_WATER: Final = 16 * 1024 * 1024
# A call the client cancelled after it went to the server: how long its answer is waited
# for (servers may finish it anyway) before its span says it may have run.
CANCEL_GRACE_S: Final = 10.0
# How long the gateway's own tools/list (before a first call) may take.
TOOLS_LIST_WAIT_S: Final = 30.0
MAX_LIST_PAGES: Final = 100
LIST_CHANGED: Final = "notifications/tools/list_changed"
DEFAULT_PROGRESS_S: Final = 1.0
# How long a tools/call sent ahead of the server's initialize answer waits for it.
INITIALIZE_WAIT_S: Final = 30.0
HELD_MESSAGE: Final = "held by tooltrail: waiting for a decision (approval or a paused session)"


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    command: Sequence[str]
    policy: Path | None = None
    data_dir: Path | None = None
    agent_name: str | None = None
    session_id: str | None = None
    trigger: str | None = None
    collector: str | None = None
    observe: bool = False
    progress_interval_s: float = DEFAULT_PROGRESS_S
    # None: the policy's ``pin_tools``, else approve.
    pin_tools: str | None = None
    # The operator's name for the server (pins, policy ``server`` conditions, spans);
    # None: derived from ``command`` (tooltrail.gateway.naming).
    server_name: str | None = None
    max_message_bytes: int = MAX_CLIENT_MESSAGE
    max_held: int = MAX_HELD

    def named(self) -> ProxyOptions:
        """These options with ``server_name`` set (BadInputError when none can be had)."""
        if self.server_name is not None:
            return dataclasses.replace(self, server_name=check_server_name(self.server_name))
        return dataclasses.replace(self, server_name=server_name_of(self.command))


class ClientCancelled(Exception):
    """The client withdrew a call (``notifications/cancelled``) after it was forwarded."""


class ServerGone(Exception):
    """The MCP server exited before answering."""


class JsonRpcError(Exception):
    """The server answered a ``tools/call`` with a JSON-RPC error."""


def denied_result(request_id: Any, denial: Denial) -> dict[str, Any]:
    """The JSON-RPC response to a refused ``tools/call``: the ``CallToolResult`` the
    instrumented MCP client returns (``isError``, text = the JSON denial)."""
    text = json.dumps(denial.to_json_dict(), ensure_ascii=False)
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"content": [{"type": "text", "text": text}], "isError": True},
    }


# --- the two ends ---------------------------------------------------------------------
#
# The transport seam: the gateway writes the client's messages out through a ``ClientOut``
# and exchanges lines with the server through a ``ServerLink``. Over stdio those are our
# stdout and the child's pipes; the streamable HTTP gateway (gateway/http.py) gives each
# MCP session its own pair, so every transport is governed by this one ``Gateway``.


class ClientOut(Protocol):
    """Where messages for the client go: one whole JSON-RPC line per call; ``drain``
    waits while the client has too much unread (the server's output then waits)."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


class ServerLink(Protocol):
    """The server's end: ``send`` one line to it (ServerGone or ConnectionError when it
    cannot take it), ``receive`` its next line (b"" once it is gone)."""

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...


class ProcessLink:
    """A server that is our child process: its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def send(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise ServerGone("the MCP server's stdin is closed")
        stdin.write(data)
        await stdin.drain()

    async def receive(self) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            try:
                return await read_line(stdout)
            except LineTooLong:
                _log.error("a server message over %d bytes was dropped", MAX_LINE)


# --- the gateway ----------------------------------------------------------------------


class Gateway:
    """One client connection, one server process."""

    def __init__(
        self,
        opts: ProxyOptions,
        st: Settings,
        server: asyncio.subprocess.Process | None,
        client_in: asyncio.StreamReader | None,
        client_out: ClientOut,
        server_link: ServerLink | None = None,
    ) -> None:
        self.opts = opts
        self.st = st
        self.server = server
        self.client_in = client_in
        self.client_out = client_out
        if server_link is None:
            assert server is not None, "a server process or a link to one"
            server_link = ProcessLink(server)
        self.server_link = server_link
        self.connection_id = uuid.uuid4().hex
        self.session_id = opts.session_id or os.environ.get(config.ENV_SESSION_ID) or None
        self._session: Session | None = None
        # Whether this connection records its session's end (record_end): the stdio
        # relay does; a transport that does not call record_end leaves it False, so its
        # sessions promise no end record (and never read abandoned for lack of one).
        self.records_end = False
        self.client_name: str | None = None
        self.client_version: str | None = None
        # The operator's name for the server (ProxyOptions.named); what it calls itself.
        self.server_name: str = opts.server_name or server_name_of(opts.command)
        self.reported_name: str | None = None
        # Set once the server answered initialize: a tools/call waits for it (the tools
        # are listed after it, and a call must not overtake the handshake).
        self.initialized = asyncio.Event()
        # Set once this connection knows the server's tools (the client's tools/list, or
        # the gateway's own before a first call): pins and annotations are then current.
        self.tools_known = asyncio.Event()
        self._listing: asyncio.Task[None] | None = None
        self.paged = False
        # The gateway's own requests to the server: key -> the future of its answer.
        self.own: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.annotations: dict[str, dict[str, Any]] = {}
        # Forwarded calls the client cancelled: key -> the timer that ends their span.
        self.cancelled: dict[str, asyncio.TimerHandle] = {}
        # Client requests forwarded and not yet answered: key -> (method, original id).
        self.forwarded: dict[str, tuple[str, Any]] = {}
        # tools/call being decided (not yet forwarded) and in flight at the server.
        self.deciding: dict[str, tuple[asyncio.Task[None], Any]] = {}
        self.inflight: dict[str, Invocation] = {}
        self.server_gone = False
        # Tools whose definition differs from the pinned one (name -> hash served now).
        self.changed: dict[str, str] = {}
        self.pins = _open_pins(opts, st)
        policy_mode = st.policy.pin_tools if st.policy is not None else None
        self.pin_mode: str = opts.pin_tools or policy_mode or DEFAULT_PIN_MODE
        if st.enforce and self.pins is not None and self.pin_mode != "warn":
            self.st = dataclasses.replace(st, decide=self._pinned(st.decide))

    # -- pinned tool definitions -------------------------------------------------------

    def _pinned(self, decide: Any) -> Any:
        """The policy's decision, made stricter for a tool whose definition changed since
        it was pinned (``--pin-tools``): DENY, or REQUIRE_APPROVAL for what would run."""

        def pinned_decide(
            tool: str,
            arguments: Mapping[str, Any],
            session: Session,
            server: str | None,
            annotations: Mapping[str, Any] | None,
        ) -> Any:
            d = decide(tool, arguments, session, server, annotations)
            if tool not in self.changed or d.decision == DENY:
                return d
            digest = self.changed[tool]
            if digest:
                reason = (
                    f"the definition of {tool} changed since it was pinned (review it with"
                    f" `tooltrail tools show {server} {tool}`, accept it with"
                    f" `tooltrail tools accept {server} {tool} --hash {digest[:16]}`)"
                )
            else:
                reason = f"the tools of {server} could not be listed: {tool} is not known"
            if self.pin_mode == "approve" and d.decision != REQUIRE_APPROVAL:
                try:
                    return _held_for_review(d, reason)
                except Exception:  # not the engine's Decision: refuse rather than guess
                    _log.exception("could not hold the changed tool %s; denying", tool)
            elif self.pin_mode == "approve":
                return d  # already held for a person
            return refused_as(d, PIN_RULE, reason)

        return pinned_decide

    def _observe_tools(self, tools: Any) -> None:
        if self.pins is None or not isinstance(tools, list):
            return
        listed = [t for t in tools if isinstance(t, dict)]
        changed = self.pins.observe(self.server_name, listed)
        for t in listed:
            name = t.get("name")
            if not isinstance(name, str):
                continue
            if name in changed:
                if self.changed.get(name) != changed[name]:
                    _log.warning(
                        "the definition of %s on %s changed since it was pinned (%s)",
                        name,
                        self.server_name,
                        self.pin_mode,
                    )
                self.changed[name] = changed[name]
            else:
                self.changed.pop(name, None)

    # -- sessions -------------------------------------------------------------------

    def session(self) -> Session:
        """This connection's session, made at its first call (after ``initialize``, so it
        carries the client's name)."""
        s = self._session
        if s is None:
            s = self._session = Session(
                session_id=self.session_id or self.connection_id,
                agent_name=self.opts.agent_name or self.client_name,
                trigger=self.opts.trigger,
                records_end=self.records_end,
            )
        return s

    def record_end(self, reason: str, *, failed: bool = False) -> None:
        """The connection is over: record its session's end (a session made at a first
        call; a connection that made none has nothing to end)."""
        if self._session is None or not self.records_end:
            return
        extra: dict[str, Any] = {TT_GATEWAY: True, MCP_SESSION_ID: self.connection_id}
        if self.client_name is not None:
            extra[TT_CLIENT_NAME] = self.client_name
        record_end(
            self._session,
            exc_type=ServerGone if failed else None,
            source=SOURCE_GATEWAY,
            reason=reason,
            extra=extra,
        )

    # -- sending ------------------------------------------------------------------------

    def to_client(self, message: Mapping[str, Any]) -> None:
        self.client_out.write(dumps(message))

    async def to_server(self, data: bytes) -> None:
        if self.server_gone:
            raise ServerGone("the MCP server's stdin is closed")
        await self.server_link.send(data)

    # -- client -> server --------------------------------------------------------------

    async def pump_client(self) -> None:
        assert self.client_in is not None
        while True:
            try:
                line = await read_line(self.client_in)
            except LineTooLong:
                limit = self.opts.max_message_bytes
                _log.warning("a client message over %d bytes was dropped", limit)
                self.to_client(error(None, INVALID_REQUEST, "message too large for tooltrail"))
                continue
            if not line:
                return
            await self.from_client(line)

    async def from_client(self, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            message = read_client(text)
            raw = canonical(message)
        except (ValueError, RecursionError) as e:
            # RecursionError: nested deeper than the reader goes; one line must not end
            # the session.
            _log.warning("malformed JSON from the client (%s); answered -32700", e)
            self.to_client(error(None, PARSE_ERROR, f"Parse error: {e}"))
            return
        if isinstance(message, dict):
            await self.client_message(message, raw)
        elif isinstance(message, list):
            await self.client_batch(message, raw)
        else:
            self.to_client(error(None, INVALID_REQUEST, "Invalid Request: not an object"))

    async def client_batch(self, batch: list[Any], line: bytes) -> None:
        """JSON-RPC batches (MCP before 2025-06-18): relayed, unless one holds a tools/call,
        which cannot be decided apart from the others: every request of it is refused."""
        calls = [m for m in batch if isinstance(m, dict) and m.get("method") == "tools/call"]
        if not calls:
            for m in batch:
                if isinstance(m, dict) and "method" in m and "id" in m:
                    self.forwarded[request_key(m["id"])] = (str(m["method"]), m["id"])
            await self._forward(line)
            return
        _log.warning("a JSON-RPC batch with tools/call refused (the gateway decides one by one)")
        replies = [
            error(m["id"], INVALID_REQUEST, "tooltrail: tools/call cannot be batched")
            for m in batch
            if isinstance(m, dict) and "method" in m and "id" in m
        ]
        if replies:
            self.client_out.write(json.dumps(replies).encode() + b"\n")

    async def client_message(self, message: dict[str, Any], raw: bytes) -> None:
        method = message.get("method")
        if not isinstance(method, str):  # a response to a server-to-client request
            await self._forward(raw)
            return
        if "id" in message:
            request_id = message["id"]
            if not valid_id(request_id):
                _log.warning("a request with id %r refused (strings and integers only)", request_id)
                self.to_client(error(None, INVALID_REQUEST, "Invalid Request: bad id"))
                return
            key = request_key(request_id)
            if key in self.forwarded or key in self.deciding or key in self.inflight:
                # A second request under a pending id would take the first one's place in
                # the bookkeeping: its span would never end, its answer go astray.
                _log.warning("request id %s is already pending; answered -32600", key)
                self.to_client(error(request_id, INVALID_REQUEST, "request id already in use"))
                return
            if method == MCP_METHOD_TOOLS_CALL:
                if len(self.deciding) >= self.opts.max_held:
                    reason = f"{len(self.deciding)} calls are already waiting for a decision"
                    self.to_client(
                        denied_result(
                            request_id,
                            self._refused(message.get("params"), request_id, LIMIT_RULE, reason),
                        )
                    )
                    return
                self._start_deciding(message, raw, key, request_id)
                return
            if method == "initialize":
                self._remember_client(message.get("params"))
            self.forwarded[key] = (method, request_id)
        elif method == MCP_METHOD_TOOLS_CALL:
            # A call without an id is a notification nobody answers: never relayed (a
            # lenient server would run it undecided).
            _log.warning("a tools/call without an id was dropped")
            return
        elif method == "notifications/cancelled" and self._withdraw(message.get("params")):
            return  # the server never saw the request
        await self._forward(raw)

    async def _forward(self, raw: bytes) -> None:
        try:
            await self.to_server(raw)
        except (ServerGone, ConnectionError) as e:
            _log.warning("could not relay a message to the server: %s", e)

    def _remember_client(self, params: Any) -> None:
        info = params.get("clientInfo") if isinstance(params, dict) else None
        if isinstance(info, dict):
            name, version = info.get("name"), info.get("version")
            self.client_name = name if isinstance(name, str) and name else None
            self.client_version = version if isinstance(version, str) and version else None

    def _withdraw(self, params: Any) -> bool:
        """A client's cancellation: True when it withdrew a call still being decided."""
        if not isinstance(params, dict) or "requestId" not in params:
            return False
        key = request_key(params["requestId"])
        held = self.deciding.pop(key, None)
        if held is not None:
            held[0].cancel()  # aprepare ends the span; MCP: no response to a cancelled request
            _log.info("the client withdrew tools/call %s while it was being decided", key)
            return True
        if key in self.inflight and key not in self.cancelled:
            # The server has it and may finish it anyway: its answer, if one comes, is
            # what the span records; only without one is the call "cancelled".
            reason = params.get("reason")
            why = (
                f"cancelled by the client after it went to the server ({reason or 'no reason'});"
                " the server may have run it"
            )
            loop = asyncio.get_running_loop()
            self.cancelled[key] = loop.call_later(CANCEL_GRACE_S, self._cancel_ends, key, why)
        return False

    def _cancel_ends(self, key: str, why: str) -> None:
        self.cancelled.pop(key, None)
        inv = self.inflight.pop(key, None)
        if inv is not None:
            self.forwarded.pop(key, None)
            finish_exception(inv, ClientCancelled(why))

    # -- tools/call ----------------------------------------------------------------------

    def _start_deciding(
        self, message: dict[str, Any], raw: bytes, key: str, request_id: Any
    ) -> None:
        task = asyncio.create_task(self._decide(message, raw, key, request_id))
        self.deciding[key] = (task, request_id)

    async def _decide(self, message: dict[str, Any], raw: bytes, key: str, request_id: Any) -> None:
        ticker: asyncio.Task[None] | None = None
        try:
            params = message.get("params")
            token = _progress_token(params)
            if token is not None:
                ticker = asyncio.create_task(self._tick(token))
            with use_session(self.session()):
                prep = await self._prepare_initialized(params, request_id)
        except asyncio.CancelledError:
            return  # withdrawn by the client, or the gateway is closing
        finally:
            if ticker is not None:
                ticker.cancel()
            self.deciding.pop(key, None)
        if prep is None:  # not enforcing and our code failed: relay the call untraced
            self.forwarded[key] = (MCP_METHOD_TOOLS_CALL, request_id)
            await self._forward(raw)
        elif isinstance(prep, Denial):
            self.to_client(denied_result(request_id, prep))
        else:
            await self._send_call(prep, message, raw, key, request_id)

    async def _prepare_initialized(
        self, params: Any, request_id: Any
    ) -> Invocation | Denial | None:
        """``_prepare`` once the server has answered initialize (its name decides rules);
        a call that comes before it, and stays unanswered, is refused when enforcing."""
        try:
            if not self.initialized.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.initialized.wait(), INITIALIZE_WAIT_S)
                if not self.initialized.is_set() and self.st.enforce:
                    error = RuntimeError("it came before the server answered initialize")
                    return self._unreadable(params, request_id, error)
            if not self.tools_known.is_set():
                await self._know_tools()
        except asyncio.CancelledError:
            # Withdrawn (or the client left) while the server was still being asked:
            # never sent, but recorded, as every call is.
            self._record_withdrawn(params, request_id)
            raise
        return await self._prepare(params, request_id)

    def _record_withdrawn(self, params: Any, request_id: Any) -> None:
        try:
            name, arguments = _call_of(params)
            inv = begin(
                self.st,
                tool=name,
                arguments=arguments,
                mcp=True,
                server=self.server_name,
                annotations=self.annotations.get(name, {}),
                extra=self._call_attributes(name, request_id),
                session=self.session(),
            )
            if inv.denial is not None:
                finish_denied(inv)
            else:
                why = "withdrawn before it was decided (the server had not answered yet)"
                finish_exception(inv, ClientCancelled(why))
        except Exception:
            _log.exception("could not record the withdrawn tools/call")

    # -- the gateway's own tools/list ---------------------------------------------------

    async def _know_tools(self) -> None:
        """List the server's tools before deciding a first call (one listing per
        connection, shared): a client that never lists would otherwise be decided without
        annotations, and a tool changed since an earlier session would pass as pinned.
        Tools that stay unknown count as changed (pins) with MCP's default annotations."""
        if self._listing is None:
            self._listing = asyncio.create_task(self._list_tools())
        try:
            await asyncio.wait_for(asyncio.shield(self._listing), TOOLS_LIST_WAIT_S)
        except Exception as e:  # an unlisted server's calls are decided as unknown
            _log.warning("could not list the tools of %s: %s", self.server_name, e)

    async def _list_tools(self) -> None:
        tools: list[Any] = []
        cursor: Any = None
        for _ in range(MAX_LIST_PAGES):
            params = {} if cursor is None else {"cursor": cursor}
            answer = await self._ask_server("tools/list", params)
            result = answer.get("result")
            if not isinstance(result, dict):
                raise RuntimeError(f"tools/list answered {answer.get('error')!r}")
            page = result.get("tools")
            tools += page if isinstance(page, list) else []
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        self._remember_annotations(tools)
        self._observe_tools(tools)
        self.tools_known.set()

    async def _ask_server(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """A request of the gateway's own (an id no client uses); its answer is not
        relayed."""
        request_id = f"tooltrail-{uuid.uuid4().hex}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        key = request_key(request_id)
        self.own[key] = future
        try:
            await self.to_server(
                dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            )
            return await future
        finally:
            self.own.pop(key, None)

    async def _prepare(self, params: Any, request_id: Any) -> Invocation | Denial | None:
        st = self.st
        try:
            name, arguments = _call_of(params)
            if self.pins is not None and not self.tools_known.is_set():
                self.changed.setdefault(name, "")  # could not be listed: not known
            extra = self._call_attributes(name, request_id)
        except Exception as e:  # a call we cannot read cannot be decided: fail closed
            if st.enforce:
                return self._unreadable(params, request_id, e)
            return None
        return await aprepare(
            st,
            name,
            lambda: arguments,
            mcp=True,
            server=self.server_name,
            # Unlisted or unannotated: MCP's defaults (not read-only, destructive, open
            # world), the worst case, rather than "unknown", which no rule matches.
            annotations=self.annotations.get(name, {}),
            extra=extra,
        )

    def _call_attributes(self, name: str, request_id: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {
            MCP_METHOD_NAME: MCP_METHOD_TOOLS_CALL,
            MCP_SESSION_ID: self.connection_id,
            JSONRPC_REQUEST_ID: str(request_id),
            TT_GATEWAY: True,
            MCP_SERVER_NAME: self.server_name,
        }
        if self.reported_name is not None:
            extra[TT_SERVER_REPORTED] = self.reported_name
        if self.client_name is not None:
            extra[TT_CLIENT_NAME] = self.client_name
        if self.client_version is not None:
            extra[TT_CLIENT_VERSION] = self.client_version
        if name in self.changed:
            extra[TT_TOOL_CHANGED] = True
            if self.changed[name]:
                extra[TT_TOOL_HASH] = self.changed[name]
        return extra

    def _unreadable(self, params: Any, request_id: Any, error: Exception) -> Denial:
        """A ``tools/call`` whose name or arguments cannot be read: denied (rule
        ``policy-error``) and recorded as such, so the audit trail shows the attempt."""
        reason = f"tooltrail could not read the call: {error}"
        return self._refused(params, request_id, POLICY_ERROR_RULE, reason)

    def _refused(self, params: Any, request_id: Any, rule: str, reason: str) -> Denial:
        """A ``tools/call`` refused whatever the policy says (by ``rule``), recorded."""
        tool = params.get("name") if isinstance(params, dict) else None
        tool = tool if isinstance(tool, str) and tool else "<unknown>"
        try:
            # Session control's veto is the instrumentation's way to record a call refused
            # whatever the policy says: the span is a DENY by that rule.
            inv = begin(
                self.st,
                tool=tool,
                arguments={},
                mcp=True,
                server=self.server_name,
                extra=self._call_attributes(tool, request_id),
                session=self.session(),
                veto=Veto(rule, reason),
            )
            finish_denied(inv)
        except Exception as e:
            _log.exception("could not record the refused tools/call")
            return fail_closed(self.st, tool, e)
        assert inv.denial is not None
        return inv.denial

    async def _tick(self, token: Any) -> None:
        """Progress notifications while a call is held, so the client knows it is alive
        (and, with ``resetTimeoutOnProgress``, does not time it out)."""
        n = 0
        while True:
            await asyncio.sleep(self.opts.progress_interval_s)
            n += 1
            self.to_client(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": token, "progress": n, "message": HELD_MESSAGE},
                }
            )

    async def _send_call(
        self, inv: Invocation, message: dict[str, Any], raw: bytes, key: str, request_id: Any
    ) -> None:
        data = raw
        if inv.rewritten or inv.held:
            # What the policy or the approver saw is what the server gets: a private copy.
            params = dict(message["params"])
            params["arguments"] = copy.deepcopy(dict(inv.arguments))
            data = dumps({**message, "params": params})
        self.inflight[key] = inv
        self.forwarded[key] = (MCP_METHOD_TOOLS_CALL, request_id)
        try:
            await self.to_server(data)
        except (ServerGone, ConnectionError) as e:
            self.inflight.pop(key, None)
            self.forwarded.pop(key, None)
            finish_exception(inv, ServerGone(str(e)))
            self.to_client(error(request_id, SERVER_GONE, f"the MCP server is gone: {e}"))

    # -- server -> client --------------------------------------------------------------

    async def pump_server(self) -> None:
        while line := await self.server_link.receive():
            await self.from_server(line)
            await self.client_out.drain()

    async def from_server(self, line: bytes) -> None:
        text = line.strip()
        if not text:
            return
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as e:
            _log.warning("malformed JSON from the server (%s); answered -32700", e)
            await self._forward(dumps(error(None, PARSE_ERROR, f"Parse error: {e}")))
            return
        if isinstance(message, dict) and "method" not in message and "id" in message:
            own = self.own.get(request_key(message["id"]))
            if own is not None:  # the answer to the gateway's own request: not relayed
                if not own.done():
                    own.set_result(message)
                return
        elif isinstance(message, dict) and message.get("method") == LIST_CHANGED:
            self.tools_known.clear()  # list again before the next decision
            self._listing = None
        # Relayed first: the span's bookkeeping is not on the client's critical path.
        self.client_out.write(line if line.endswith(b"\n") else line + b"\n")
        if isinstance(message, dict) and "method" not in message and "id" in message:
            self._server_response(message)

    def _server_response(self, message: dict[str, Any]) -> None:
        key = request_key(message["id"])
        sent = self.forwarded.pop(key, None)
        if sent is None:
            return
        method = sent[0]
        result = message.get("result")
        try:
            if method == "initialize":
                info = result.get("serverInfo") if isinstance(result, dict) else None
                name = info.get("name") if isinstance(info, dict) else None
                self.reported_name = name if isinstance(name, str) and name else None
            elif method == "tools/list" and isinstance(result, dict):
                self._remember_annotations(result.get("tools"))
                self._observe_tools(result.get("tools"))
                # A listing in pages: the gateway lists whole itself before a decision.
                self.paged = self.paged or bool(result.get("nextCursor"))
                if not self.paged:
                    self.tools_known.set()
        except Exception:  # reading on the way must never stop the relay
            _log.exception("could not read the server's %s result", method)
        if method == "initialize":
            self.initialized.set()  # answered (even with an error): calls may go on
        if method == MCP_METHOD_TOOLS_CALL:
            timer = self.cancelled.pop(key, None)
            if timer is not None:
                timer.cancel()
            inv = self.inflight.pop(key, None)
            if inv is not None:
                _finish(inv, message)

    def _remember_annotations(self, tools: Any) -> None:
        for t in tools if isinstance(tools, list) else ():
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                ann = t.get("annotations")
                if isinstance(ann, dict):
                    self.annotations[t["name"]] = ann
                else:
                    self.annotations.pop(t["name"], None)

    # -- endings -------------------------------------------------------------------------

    def fail_pending(self, why: str) -> None:
        """The server is gone: every request it did not answer gets an error, every call
        still being decided too (its span ends as an error)."""
        self.server_gone = True
        for future in self.own.values():
            if not future.done():
                future.set_exception(ServerGone(why))
        for key, (task, request_id) in list(self.deciding.items()):
            task.cancel()
            self.to_client(error(request_id, SERVER_GONE, why))
            self.deciding.pop(key, None)
        for key, (_method, request_id) in list(self.forwarded.items()):
            inv = self.inflight.pop(key, None)
            if inv is not None:
                finish_exception(inv, self._ended(key, ServerGone(why)))
            self.to_client(error(request_id, SERVER_GONE, why))
        self.forwarded.clear()

    def _ended(self, key: str, error: Exception) -> Exception:
        """Why an unanswered call ended: the client's cancellation when it had one."""
        timer = self.cancelled.pop(key, None)
        if timer is None:
            return error
        timer.cancel()
        return ClientCancelled(
            f"cancelled by the client, and then {error}; the server may have run it"
        )

    def withdraw_all(self) -> None:
        """The client hung up: calls still being decided are withdrawn."""
        for task, _ in list(self.deciding.values()):
            task.cancel()
        self.deciding.clear()

    def end_inflight(self, why: str) -> None:
        for key, inv in self.inflight.items():
            finish_exception(inv, self._ended(key, ServerGone(why)))
        self.inflight.clear()


def _open_pins(opts: ProxyOptions, st: Settings) -> PinStore | None:
    if opts.collector:  # pins are local; the collector keeps none yet
        _log.info("tool definitions are not pinned with --collector")
        return None
    try:
        return PinStore(st.data_dir or config.data_dir(opts.data_dir))
    except Exception as e:  # pinning off; said loudly, the calls still decided by policy
        _log.error("tool definitions are not pinned: %s", e)
        return None


def _held_for_review(d: Any, reason: str) -> Any:
    """``d`` (an ALLOW or REWRITE of the engine) as a REQUIRE_APPROVAL by the pin rule:
    the call as asked waits for a person."""
    from tooltrail.policy.model import ApprovalSettings

    approval = ApprovalSettings(timeout_s=PIN_APPROVAL_TIMEOUT_S, on_timeout=DENY, approvers=("*",))
    return dataclasses.replace(
        d,
        decision=REQUIRE_APPROVAL,
        policy_rule=PIN_RULE,
        policy_matched=(*d.policy_matched, PIN_RULE),
        arguments_rewritten=None,
        reason=reason,
        approval=approval,
    )


def _progress_token(params: Any) -> Any:
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


def _call_of(params: Any) -> tuple[str, dict[str, Any]]:
    """The tool name and arguments of a ``tools/call``; ValueError naming what is wrong."""
    if not isinstance(params, dict):
        raise ValueError("tools/call has no params object")
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("tools/call params.name is missing or not a string")
    arguments = params.get("arguments")
    if arguments is None:
        return name, {}
    if not isinstance(arguments, dict):
        raise ValueError(f"tools/call params.arguments of {name} is not an object")
    return name, arguments


def _finish(inv: Invocation, message: Mapping[str, Any]) -> None:
    error = message.get("error")
    if error is not None:
        text = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        finish_exception(inv, JsonRpcError(f"{code}: {text}"))
        return
    result = message.get("result")
    is_error = isinstance(result, dict) and result.get("isError") is True
    finish_result(inv, lambda: _result_text(result), is_error=is_error)


def _result_text(result: Any) -> str:
    if not isinstance(result, dict):
        return to_json(result, RESULT_PREVIEW_CHARS)
    parts: list[str] = []
    for block in result.get("content") or ():
        if isinstance(block, dict):
            text = block.get("text")
            parts.append(text if isinstance(text, str) else f"[{block.get('type', 'content')}]")
    if not parts and result.get("structuredContent") is not None:
        return to_json(result["structuredContent"], RESULT_PREVIEW_CHARS)
    return "\n".join(parts)
