"""The stdio gateway: an MCP client on our stdin/stdout, the real server as our child.

MCP's stdio transport is newline-delimited JSON-RPC; the connection is governed by
``connection.Gateway`` (what is decided, what is relayed). This module is the stdio
transport and the process around it: the server as a child (``ProcessLink``), our stdout
(``_Out``), and the ends. When the server's stdout closes, every request it had not
answered (and every call still being decided) gets a JSON-RPC error, and the gateway exits
with the server's status. When the client closes stdin, the server's stdin is closed and
the server is waited for (bounded), then spans are flushed. SIGTERM ends open calls at
once. Stdout carries only protocol messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Final

from tooltrail import config
from tooltrail.errors import BadInputError
from tooltrail.gateway.connection import (
    CLIENT_HIGH_WATER,
    MAX_LINE,
    Gateway,
    ProxyOptions,
)
from tooltrail.instrumentation._settings import Settings, install, settings

__all__ = ["ProxyOptions", "reap", "run_proxy", "tracing"]

_log = logging.getLogger("tooltrail.gateway")

SERVICE_NAME: Final = "tooltrail-gateway"
# After the client hangs up, how long the server gets to exit on its own.
SERVER_EXIT_GRACE_S: Final = 5.0


class _Out:
    """Writes whole lines to a pipe without blocking the loop (a regular file or a
    terminal: plain writes)."""

    def __init__(self, transport: asyncio.WriteTransport | None, fd: int) -> None:
        self._transport = transport
        self._fd = fd

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    async def drain(self) -> None:
        """Wait while the client has more than ``CLIENT_HIGH_WATER`` bytes unread: the
        server's output then waits in its pipe, not in our memory."""
        transport = self._transport
        while (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() > CLIENT_HIGH_WATER
        ):
            await asyncio.sleep(0.005)

    async def flush(self, timeout: float) -> None:
        """Wait (bounded) until what was written has left for the client: the loop's end
        would drop what a slow reader has not taken yet (the last errors, say)."""
        transport = self._transport
        deadline = asyncio.get_running_loop().time() + timeout
        while transport is not None and transport.get_write_buffer_size() > 0:
            if transport.is_closing() or asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)


async def _client_ends(limit: int) -> tuple[asyncio.StreamReader, _Out]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit)
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", closefd=False)
        )
    except (ValueError, OSError):  # a regular file: read it in a thread
        _feed_in_thread(reader, loop)
    try:
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(1, "wb", closefd=False)
        )
        return reader, _Out(transport, 1)
    except (ValueError, OSError):
        return reader, _Out(None, 1)


def _feed_in_thread(reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    def pump() -> None:
        while chunk := os.read(0, 65536):
            loop.call_soon_threadsafe(reader.feed_data, chunk)
        loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="tooltrail-proxy-stdin", daemon=True).start()


# --- running it -----------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    # A server ended by a signal: the shell's convention, 128 + the signal number.
    return returncode if returncode >= 0 else 128 - returncode


async def _serve(opts: ProxyOptions, st: Settings) -> int:
    try:
        server = await asyncio.create_subprocess_exec(
            *opts.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
        )
    except OSError as e:
        _log.error("cannot start the MCP server %r: %s", opts.command[0], e)
        return 127 if isinstance(e, FileNotFoundError) else 126
    client_in, client_out = await _client_ends(opts.max_message_bytes)
    try:
        gw = Gateway(opts, st, server, client_in, client_out)
        gw.records_end = True  # _relay_until_done and _stop record the end
        return await _relay(gw)
    finally:
        await client_out.flush(SERVER_EXIT_GRACE_S)


async def _relay(gw: Gateway) -> int:
    server = gw.server
    assert server is not None
    client = asyncio.create_task(gw.pump_client())
    relay = asyncio.create_task(gw.pump_server())
    # SIGTERM (a client closing us, a supervisor): end what is open, so its spans land.
    stopped = asyncio.create_task(_terminated())
    try:
        return await _relay_until_done(gw, server, client, relay, stopped)
    finally:
        stopped.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)


async def _relay_until_done(
    gw: Gateway,
    server: asyncio.subprocess.Process,
    client: asyncio.Task[None],
    relay: asyncio.Task[None],
    stopped: asyncio.Task[None],
) -> int:
    done, _ = await asyncio.wait({client, relay, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in done - {stopped}:
        if task.exception() is not None:
            _log.error("the relay failed: %r", task.exception())
    if stopped in done:
        return await _stop(gw, server, client)
    if relay in done:  # the server closed its stdout: it is exiting
        rc = await reap(server, SERVER_EXIT_GRACE_S)
        gw.fail_pending(f"the MCP server exited (status {rc}) before answering")
        client.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await client
        gw.record_end(f"the MCP server exited (status {rc})", failed=rc != 0)
        _log.info("the MCP server exited with status %s", rc)
        return _exit_status(rc)
    # The client hung up: let the server finish and answer what it can, then go.
    gw.withdraw_all()
    if server.stdin is not None:
        server.stdin.close()
    done, _ = await asyncio.wait(
        {relay, stopped}, timeout=SERVER_EXIT_GRACE_S, return_when=asyncio.FIRST_COMPLETED
    )
    if stopped in done:
        return await _stop(gw, server, client)
    if relay not in done:
        _log.warning(
            "the MCP server did not exit within %.0f s of the client leaving", SERVER_EXIT_GRACE_S
        )
    # Its stdout closed or the grace is spent: it has had its time, only SIGTERM's is left.
    rc = await reap(server, 1.0)
    gw.end_inflight("the client left before the server answered")
    gw.record_end("the MCP client disconnected")
    return 0 if rc < 0 else rc


async def _terminated() -> None:
    stop = asyncio.Event()
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError):  # not the main thread: no handler to add
        await asyncio.Event().wait()
    await stop.wait()


async def _stop(gw: Gateway, server: asyncio.subprocess.Process, client: asyncio.Task[None]) -> int:
    """SIGTERM: whoever sent it may SIGKILL soon (the TypeScript SDK does after 2 s), so
    the open calls are ended first, then the server is given half a second."""
    _log.warning("terminated (SIGTERM): ending the calls still open and the server")
    gw.withdraw_all()
    gw.end_inflight("the gateway was terminated before the server answered")
    client.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client
    gw.record_end("the gateway was terminated (SIGTERM)")
    with contextlib.suppress(ProcessLookupError):
        server.terminate()
    try:
        await asyncio.wait_for(server.wait(), 0.5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        await server.wait()
    return 128 + signal.SIGTERM


async def reap(server: asyncio.subprocess.Process, grace: float) -> int:
    """The server's status: waited for ``grace`` s, then SIGTERM and as long again (at
    least 2 s), then SIGKILL."""
    try:
        return await asyncio.wait_for(server.wait(), grace)
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError):
        server.terminate()
    try:
        return await asyncio.wait_for(server.wait(), max(grace, 2.0))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            server.kill()
        return await server.wait()


def tracing(opts: ProxyOptions) -> tuple[Settings, Callable[[], None]]:
    """Settings as ``configure(data_dir, policy, enforce=not observe)`` makes them, and a
    function that lands every span; with ``--collector``, spans go there over OTLP/HTTP
    and approvals and session control use its HTTP API."""
    enforce = not opts.observe
    if opts.collector:
        return _collector_tracing(opts, enforce)
    from tooltrail.instrumentation.config import configure

    conf = configure(
        data_dir=opts.data_dir,
        policy=opts.policy,
        enforce=enforce,
        service_name=SERVICE_NAME,
        instrument_mcp=False,
    )
    provider = conf.tracer_provider
    return settings(), provider.shutdown


def _collector_tracing(opts: ProxyOptions, enforce: bool) -> tuple[Settings, Callable[[], None]]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tooltrail.instrumentation.sampling import ToolSpanSampler

    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as e:
        raise BadInputError(
            "--collector needs the OTLP/HTTP exporter:"
            " pip install opentelemetry-exporter-otlp-proto-http"
        ) from e
    url = opts.collector.rstrip("/") if opts.collector else ""
    # The broker and the session gate read these (as for any remote agent).
    os.environ[config.ENV_COLLECTOR_URL] = url
    token = os.environ.get(config.ENV_COLLECTOR_TOKEN)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    provider = TracerProvider(
        resource=Resource.create({"service.name": SERVICE_NAME}), sampler=ToolSpanSampler()
    )
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=headers))
    )
    st = install(tracer_provider=provider, policy=opts.policy, enforce=enforce)
    return st, provider.shutdown


def run_proxy(opts: ProxyOptions) -> int:
    """Run the gateway until the client or the server goes; the exit status."""
    opts = opts.named()  # before anything starts: a bad name is the operator's error
    st, land = tracing(opts)
    # A policy that did not load was logged by install() ("every tool call will be
    # denied"): every tools/call is denied, fail closed.
    try:
        status = asyncio.run(_serve(opts, st))
    except KeyboardInterrupt:  # Ctrl-C in a terminal: the server (same group) got it too
        status = 128 + signal.SIGINT
    finally:
        try:
            land()
        except Exception:
            _log.exception("landing the spans failed")
    sys.stdout.flush()
    return status
