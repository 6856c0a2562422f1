"""Shared by the gateway tests: the real npm client and server (tests/js, installed by
``npm ci``), the real ``mcp-server-git``, ``tooltrail proxy`` as a command, and a raw
line-level client for what no well-behaved client sends (malformed JSON)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from git_support import clean_env

JS = Path(__file__).parent / "js"
NODE_MODULES = JS / "node_modules"
CLIENT = JS / "client.mjs"
FS_SERVER = NODE_MODULES / ".bin" / "mcp-server-filesystem"
EVERYTHING = NODE_MODULES / ".bin" / "mcp-server-everything"
INSPECTOR = NODE_MODULES / ".bin" / "mcp-inspector"
_BIN = Path(sys.executable).parent
TOOLTRAIL = str(_BIN / "tooltrail")


def require_node() -> None:
    """Skip (with the reason) where node or tests/js/node_modules is missing; in CI
    (``CI`` or ``TOOLTRAIL_REQUIRE_NODE`` set) fail instead: there .ci/run installs them."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not on PATH")
    if (
        not FS_SERVER.exists()
        or not EVERYTHING.exists()
        or not (NODE_MODULES / "@modelcontextprotocol" / "sdk").exists()
    ):
        missing.append(f"{NODE_MODULES} is not installed (run `npm ci` in {JS})")
    if not missing:
        return
    reason = "; ".join(missing)
    if os.environ.get("CI") or os.environ.get("TOOLTRAIL_REQUIRE_NODE"):
        pytest.fail(f"the gateway tests need the npm packages: {reason}")
    pytest.skip(reason)


def proxy_command(policy: Path | None, data: Path, server: Sequence[str], *extra: str) -> list[str]:
    cmd = [TOOLTRAIL, "proxy", "--data", str(data), *extra]
    if policy is not None:
        cmd += ["--policy", str(policy)]
    return [*cmd, "--", *server]


def fs_server(root: Path) -> list[str]:
    return [str(FS_SERVER), str(root)]


def git_server(repo: Path) -> list[str]:
    return [sys.executable, "-m", "mcp_server_git", "--repository", str(repo)]


def write_plan(tmp: Path, command: Sequence[str], steps: list[dict[str, Any]], **kw: Any) -> Path:
    plan = {"command": command[0], "args": list(command[1:]), "steps": steps, "env": clean_env()}
    plan.update(kw)
    path = tmp / f"plan-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(plan))
    return path


def start_client(plan: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["node", str(CLIENT), str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def client_results(proc: subprocess.Popen[str], timeout: float = 90) -> list[dict[str, Any]]:
    """The client's step lines; fails with its stderr when it did not finish cleanly."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the client timed out; stdout={out!r} stderr={err[-3000:]}") from None
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and lines[-1] == {"done": True}, f"stdout={out!r} stderr={err[-3000:]}"
    return lines[:-1]


def run_client(
    tmp: Path, command: Sequence[str], steps: list[dict[str, Any]], **kw: Any
) -> list[dict[str, Any]]:
    return client_results(start_client(write_plan(tmp, command, steps, **kw)))


def inspector(home: Path, target: Sequence[str], *args: str) -> tuple[int, Any]:
    """The MCP Inspector's CLI mode (``--cli``): one method against ``target``; its exit
    status and the first JSON document it printed. Its catalog lives under ``home``."""
    proc = subprocess.run(
        [str(INSPECTOR), "--cli", *target, *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=clean_env(HOME=str(home), MCP_CATALOG_PATH=str(home / "catalog.json")),
    )
    try:
        document, _ = json.JSONDecoder().raw_decode(proc.stdout.lstrip())
    except ValueError:
        raise AssertionError(
            f"no JSON from the inspector: {proc.stdout!r} {proc.stderr!r}"
        ) from None
    return proc.returncode, document


def text_of(step: Mapping[str, Any]) -> str:
    assert "result" in step, step
    return "\n".join(c.get("text", "") for c in step["result"]["content"])


class RawClient:
    """Line-level JSON-RPC over a process's stdin/stdout (reads in a thread, with timeouts)."""

    def __init__(self, command: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float = 30) -> dict[str, Any] | None:
        """The next message (None at EOF); every line must be JSON (stdout is protocol only)."""
        line = self.lines.get(timeout=timeout)
        if line is None:
            return None
        message: dict[str, Any] = json.loads(line)
        return message

    def response(self, request_id: Any, timeout: float = 30) -> dict[str, Any]:
        """The response to ``request_id`` (notifications on the way are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.1, deadline - time.monotonic()))
            assert message is not None, f"EOF before the response to {request_id}"
            if "method" not in message and message.get("id") == request_id:
                return message

    def initialize(self) -> dict[str, Any]:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-client", "version": "0.1"},
                },
            }
        )
        result = self.response(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def close(self) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextmanager
def raw_client(command: Sequence[str]) -> Iterator[RawClient]:
    client = RawClient(command)
    try:
        yield client
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
        client.proc.wait()
        kill_children(client.proc.pid)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def kill_children(pid: int) -> None:
    for child in children(pid):
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
