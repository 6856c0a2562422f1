"""``HttpSessionGate`` against scripted collectors: what a remote agent does when the
collector is slow, busy, old or broken (the happy path runs against a real collector in
tests/test_collect_approvals.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from loop_support import Ticker

from tooltrail.collector.server import CollectorConfig, start
from tooltrail.instrumentation import http_broker
from tooltrail.instrumentation.http_broker import CollectorSessionError, HttpSessionGate

Answer = Callable[[int], tuple[int, bytes]]  # request number -> (status, body)


def _state(state: str) -> tuple[int, bytes]:
    return 200, json.dumps({"session_id": "s", "state": state}).encode()


@pytest.fixture
def scripted() -> Iterator[Callable[[Answer, float], str]]:
    """Starts a collector stand-in answering GETs by ``answer(n)``, after ``delay`` s."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer, delay: float = 0.0) -> str:
        count = iter(range(10**6))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                n = next(count)
                time.sleep(delay)
                status, body = answer(n)
                if status == 0:  # not HTTP at all
                    self.wfile.write(body)
                    return
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_broker, "_BACKOFF_S", (0.01,))


def test_a_busy_collector_keeps_a_paused_call_waiting(
    scripted: Callable[[Answer, float], str], fast_backoff: None
) -> None:
    """503s while paused are not failures: more of them than the failure budget, and the
    call still waits for the resume instead of being denied."""
    busy = http_broker._MAX_POLL_FAILURES + 3
    url = scripted(lambda n: (503, b"{}") if n < busy else _state("running"), 0.0)
    assert HttpSessionGate(url).wait_while_paused("s") == "running"


def test_real_failures_while_paused_end_in_an_error(
    scripted: Callable[[Answer, float], str], fast_backoff: None
) -> None:
    url = scripted(lambda n: (500, b'{"message": "boom"}'), 0.0)
    with pytest.raises(CollectorSessionError, match="boom"):
        HttpSessionGate(url).wait_while_paused("s")


def test_a_404_fails_closed_instead_of_reading_as_running(
    scripted: Callable[[Answer, float], str],
) -> None:
    """A proxy or a misrouted path answering 404 must not turn pause and cancel off."""
    url = scripted(lambda n: (404, b'{"message": "no such endpoint"}'), 0.0)
    gate = HttpSessionGate(url, refresh_s=60)
    for _ in range(2):  # and nothing is cached as running
        with pytest.raises(CollectorSessionError, match="HTTP 404") as caught:
            gate.state("s")
        assert caught.value.status == 404
    with pytest.raises(CollectorSessionError, match="HTTP 404"):
        gate.wait_while_paused("s")


def test_a_real_collector_reads_a_new_session_as_running_and_a_wrong_prefix_fails(
    tmp_path: Path,
) -> None:
    """The current collector answers a session it has never seen with 200 running (an
    agent's first call goes on); the same collector behind a wrong path prefix answers
    404, which refuses."""
    running = start(CollectorConfig(data_dir=tmp_path / "data", port=0, workers=0))
    try:
        assert HttpSessionGate(running.url).state("never-seen-before") == "running"
        with pytest.raises(CollectorSessionError, match="HTTP 404"):
            HttpSessionGate(running.url + "/otlp").state("never-seen-before")
    finally:
        running.stop()


def test_a_non_http_answer_is_a_session_error(scripted: Callable[[Answer, float], str]) -> None:
    url = scripted(lambda n: (0, b"garbage\r\n\r\n"), 0.0)
    with pytest.raises(CollectorSessionError):
        HttpSessionGate(url, refresh_s=0).state("s")


def test_an_older_answer_never_replaces_a_newer_one() -> None:
    gate = HttpSessionGate("http://127.0.0.1:9")
    now = time.monotonic()
    gate._remember("s", now, "paused")
    gate._remember("s", now - 0.5, "running")  # asked before the pause was seen
    assert not gate._cached("s")
    gate._remember("s", now + 0.1, "running")
    assert gate._cached("s")


def test_the_async_check_does_not_block_the_event_loop(
    scripted: Callable[[Answer, float], str],
) -> None:
    url = scripted(lambda n: _state("running"), 0.8)
    gate = HttpSessionGate(url, refresh_s=0)

    async def main() -> tuple[str, int]:
        async with Ticker() as ticker:
            state = await gate.astate("s")
        return state, ticker.ticks

    try:
        state, ticks = asyncio.run(main())
        assert state == "running"
        assert ticks >= 10  # ~40 expected over the 0.8 s answer
    finally:
        gate.close()


def test_a_collector_that_never_answers_is_given_up_on_quickly() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(CollectorSessionError):
            HttpSessionGate(url, check_timeout_s=0.5).state("s")
        assert time.monotonic() - started < 5


def test_an_async_tool_call_checks_session_control_off_the_loop(
    scripted: Callable[[Answer, float], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring: an async @tool's pre-call check goes through the async path."""
    import tooltrail.instrumentation as tt
    from tooltrail.instrumentation import _settings

    url = scripted(lambda n: _state("running"), 0.8)
    monkeypatch.setenv("TOOLTRAIL_COLLECTOR_URL", url)

    @tt.tool
    async def git_status(repo_path: str) -> str:
        return "clean"

    async def main() -> tuple[str, int]:
        async with Ticker() as ticker:
            with tt.session("s-async"):
                result = await git_status("/srv/app")
        return result, ticker.ticks

    try:
        _settings.install(enforce=True, policy={"version": 1, "default": "ALLOW", "rules": []})
        result, ticks = asyncio.run(main())
        assert result == "clean"
        assert ticks >= 10
    finally:
        _settings.reset()
