"""Shared by the streamable HTTP gateway tests and bench: ``tooltrail proxy --listen`` as
a real process on a free port (read from its log line), the npm everything server in its
own streamable HTTP mode, and the official TypeScript client (tests/js/client.mjs) on a
URL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gateway_support import CLIENT, EVERYTHING, TOOLTRAIL, children, kill_children
from git_support import clean_env

LISTENING = re.compile(r"listening on (http://\S+?)(/mcp(?:/[\w-]+)?) -> ")


class Listener:
    """A ``tooltrail proxy --listen`` process; ``urls`` maps each path to its URL."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [TOOLTRAIL, "proxy", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(**(env or {})),
        )
        self.log: list[str] = []
        self.urls: dict[str, str] = {}
        self._seen = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if m := LISTENING.search(line):
                self.urls[m.group(2)] = m.group(1) + m.group(2)
                self._seen.set()
        self._seen.set()

    def wait_ready(self, paths: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.urls) < paths:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not start: {''.join(self.log)[-3000:]}")
            self._seen.wait(0.05)
        # The listening line comes just before uvicorn serves: wait for a connection.
        host, port = self.urls[next(iter(self.urls))].split("//")[1].split("/")[0].rsplit(":", 1)
        wait_port(host, int(port), deadline - time.monotonic())

    @property
    def url(self) -> str:
        return self.urls["/mcp"]

    def stop(self) -> int:
        """SIGTERM (as a service manager ends it), then its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def listener(args: Sequence[str], paths: int = 1, **env: str) -> Iterator[Listener]:
    gw = Listener(args, env)
    try:
        gw.wait_ready(paths)
        yield gw
    finally:
        servers = children(gw.proc.pid)
        gw.stop()
        for pid in servers:  # a server the gateway failed to end must not outlive the test
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + max(timeout, 0.1)
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def everything_http() -> Iterator[str]:
    """The npm everything server in its own streamable HTTP mode on a free port: its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(EVERYTHING), "streamableHttp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(PORT=str(port)),
    )
    try:
        wait_port("127.0.0.1", port, 30)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_children(proc.pid)


def http_plan(tmp: Path, url: str, steps: list[dict[str, Any]], **kw: Any) -> Path:
    plan = {"url": url, "steps": steps, **kw}
    path = tmp / f"plan-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(plan))
    return path


def start_http_client(plan: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["node", str(CLIENT), str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
