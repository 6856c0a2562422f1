"""The gateway's cost per tool call, measured in one run on this machine.

    python bench/proxy.py [--calls N] [--tool get_file_info] [--peer]
    python bench/proxy.py --http [--clients 8] [--calls N]

1,000 ``tools/call`` of a cheap tool of the real npm ``server-filesystem`` (tests/js, ``npm
ci``), one after another over stdio from a minimal line-level client in this process:

* direct: the client starts the server itself;
* gateway: the client starts ``tooltrail proxy --policy P --data D -- <server>``, P a 20-rule
  policy (none matching the call, so every rule is checked; default ALLOW), enforcing,
  spans landing in D.

* peer (``--peer``): the same trip through Lasso's ``mcp-gateway`` from PyPI (pinned below; it
  needs ``mcp<2``, so it gets its own venv, built once under bench/results/), which exposes
  the server's tools as ``fs_<tool>``; no policy (its plugins off).

* http (``--http``): ``tooltrail proxy --listen 127.0.0.1:0`` with the same policy and
  server, and ``--clients`` MCP sessions at once (each its own server process, as the
  gateway gives every session), each a streamable HTTP client (httpx2, SSE answers as the
  SDK clients ask for) calling its share of the ``--calls`` one after another. Reported:
  calls/s over the whole run and per-call latency p50 / p99.

Reported: round-trip latency p50 / p99 each way and the difference (the gateway's added
latency; target: p50 added <= 0.5 ms), and the gateway process's CPU time per call (user +
system from /proc, the server's excluded). Warm-up calls come first and are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FS_SERVER = ROOT / "tests" / "js" / "node_modules" / ".bin" / "mcp-server-filesystem"
TOOLTRAIL = Path(sys.executable).with_name("tooltrail")
WARMUP = 100
PEER_REQUIREMENTS = ("mcp-gateway==1.2.1", "mcp<2")
PEER_VENV = ROOT / "bench" / "results" / "lasso-mcp-gateway-venv"


def policy_text(root: Path) -> str:
    rules = []
    for i in range(20):
        kind = i % 4
        if kind == 0:
            when = f'{{tool: write_file, args: {{path: "*forbidden-{i}*"}}}}'
        elif kind == 1:
            when = f'{{tool: "move_*", args: {{destination: "{root}/locked-{i}/*"}}}}'
        elif kind == 2:
            when = f'{{tool: edit_file, args: {{path: {{regex: ".*\\\\.secret{i}$"}}}}}}'
        else:
            when = f'{{tool: [create_directory, write_file], args: {{path: "/etc/{i}/*"}}}}'
        decision = ("DENY", "REQUIRE_APPROVAL", "DENY", "DENY")[kind]
        rules.append(f"  - id: rule-{i}\n    when: {when}\n    decision: {decision}\n")
    return "version: 1\ndefault: ALLOW\nrules:\n" + "".join(rules)


class Client:
    def __init__(self, command: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.next_id = 0

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"EOF waiting for {method}")
            reply: dict[str, Any] = json.loads(line)
            if reply.get("id") == self.next_id and "method" not in reply:
                return reply

    def initialize(self) -> None:
        self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "bench-client", "version": "1"},
            },
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def peer_gateway(tmp: Path, server: list[str]) -> list[str]:
    """Lasso's mcp-gateway in front of ``server`` (its venv built on first use)."""
    exe = PEER_VENV / "bin" / "mcp-gateway"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        pip = [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
    config = tmp / "lasso-mcp.json"
    entry = {
        "command": str(exe),
        "args": [],
        "servers": {"fs": {"command": server[0], "args": server[1:]}},
    }
    config.write_text(json.dumps({"mcpServers": {"mcp-gateway": entry}}))
    return [str(exe), "--mcp-json-path", str(config)]


def wait_for_tool(client: Client, tool: str) -> None:
    """The peer registers the proxied tools a moment after it answers initialize."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tools = client.request("tools/list")["result"]["tools"]
        if any(t["name"] == tool for t in tools):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{tool} never appeared")


def run(command: list[str], calls: int, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    client = Client(command)
    try:
        client.initialize()
        wait_for_tool(client, tool)
        params = {"name": tool, "arguments": arguments}
        for _ in range(WARMUP):
            reply = client.request("tools/call", params)
            if "error" in reply or reply["result"].get("isError"):
                raise RuntimeError(f"{tool} failed: {reply}")
        cpu0 = cpu_seconds(client.proc.pid)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            client.request("tools/call", params)
            times.append((time.perf_counter() - start) * 1000.0)
        cpu = cpu_seconds(client.proc.pid) - cpu0
    finally:
        client.close()
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[int(len(times) * 0.99) - 1],
        # The process the client started: the server (direct) or the gateway (its child,
        # the server, not counted).
        "process_cpu_ms_per_call": cpu * 1000.0 / calls,
    }


LISTENING = re.compile(r"listening on (http://\S+/mcp) ")
HTTP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def start_listener(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if m := LISTENING.search(line):
            # Keep draining its log (the servers' stderr too) so it never blocks on it.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, m.group(1)
    raise RuntimeError(f"the HTTP gateway did not start (status {proc.wait()})")


async def http_session(
    url: str, tool: str, arguments: dict[str, Any], calls: int, go: asyncio.Barrier
) -> tuple[list[float], float]:
    """One MCP session over streamable HTTP: initialize, warm-up, wait for the others at
    ``go``, then ``calls`` timed; the latencies and when the last call ended."""
    import httpx2

    async with httpx2.AsyncClient(timeout=60) as http:

        async def rpc(message: dict[str, Any], sid: str | None) -> tuple[dict[str, Any], str]:
            headers = dict(HTTP_HEADERS)
            if sid is not None:
                headers["mcp-session-id"] = sid
            async with http.stream("POST", url, json=message, headers=headers) as response:
                response.raise_for_status()
                sid = response.headers.get("mcp-session-id", sid)
                async for event in httpx2.EventSource(response):
                    reply = json.loads(event.data)
                    if reply.get("id") == message["id"] and "method" not in reply:
                        assert sid is not None
                        return reply, sid
            raise RuntimeError(f"no answer to {message['method']}")

        init = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench-http-client", "version": "1"},
        }
        _, sid = await rpc(
            {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init}, None
        )
        notify = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await http.post(url, json=notify, headers={**HTTP_HEADERS, "mcp-session-id": sid})
        params = {"name": tool, "arguments": arguments}
        times: list[float] = []
        warmup = WARMUP // 4
        for i in range(warmup + calls):
            if i == warmup:
                await go.wait()
            start = time.perf_counter()
            call = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": params}
            reply, _ = await rpc(call, sid)
            if "error" in reply or reply["result"].get("isError"):
                raise RuntimeError(f"{tool} failed: {reply}")
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
        ended = time.perf_counter()
        await http.delete(url, headers={"mcp-session-id": sid})
        return times, ended


def run_http(
    command: list[str], clients: int, calls: int, tool: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    proc, url = start_listener(command)
    try:

        async def all_sessions() -> tuple[list[list[float]], float]:
            # Sessions open and warm up first; the clock runs from when all are ready.
            share = [calls // clients + (1 if i < calls % clients else 0) for i in range(clients)]
            go = asyncio.Barrier(clients + 1)
            runs = [asyncio.create_task(http_session(url, tool, arguments, n, go)) for n in share]
            await go.wait()
            start = time.perf_counter()
            cpu0 = cpu_seconds(proc.pid)
            results = await asyncio.gather(*runs)
            cpu.append(cpu_seconds(proc.pid) - cpu0)
            return [t for t, _ in results], max(e for _, e in results) - start

        cpu: list[float] = []
        results, wall = asyncio.run(all_sessions())
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    times = sorted(t for r in results for t in r)
    return {
        "clients": clients,
        "calls": len(times),
        "calls_per_s": len(times) / wall,
        "p50_ms": statistics.median(times),
        "p99_ms": times[int(len(times) * 0.99) - 1],
        # The gateway process alone (its servers and the clients excluded).
        "gateway_cpu_ms_per_call": cpu[0] * 1000.0 / len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--tool", default="get_file_info")
    parser.add_argument("--peer", action="store_true", help="Also measure Lasso's mcp-gateway.")
    parser.add_argument(
        "--observe", action="store_true", help="The gateway records without enforcing."
    )
    parser.add_argument("--http", action="store_true", help="Measure the HTTP gateway only.")
    parser.add_argument("--clients", type=int, default=8, help="HTTP mode: sessions at once.")
    opts = parser.parse_args()
    if not FS_SERVER.exists():
        sys.exit(f"bench/proxy.py needs the npm server: run `npm ci` in {FS_SERVER.parents[2]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve() / "root"
        root.mkdir()
        (root / "file.txt").write_text("hello\n")
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(policy_text(root))
        arguments = (
            {"path": str(root / "file.txt")} if opts.tool != "list_allowed_directories" else {}
        )
        server = [str(FS_SERVER), str(root)]
        if opts.http:
            listen = [str(TOOLTRAIL), "proxy", "--listen", "127.0.0.1:0", "--policy", str(policy)]
            listen += ["--data", f"{tmp}/data", "--", *server]
            report = run_http(listen, opts.clients, opts.calls, opts.tool, arguments)
            print(
                json.dumps(
                    {"tool": opts.tool, "mode": "http, enforce (20 rules)", **report}, indent=2
                )
            )
            return
        gateway = [str(TOOLTRAIL), "proxy", "--policy", str(policy), "--data", f"{tmp}/data"]
        gateway += ["--observe", "--"] if opts.observe else ["--"]
        direct = run(server, opts.calls, opts.tool, arguments)
        through = run([*gateway, *server], opts.calls, opts.tool, arguments)
        peer = None
        if opts.peer:
            command = peer_gateway(Path(tmp), server)
            peer = run(command, opts.calls, f"fs_{opts.tool}", arguments)
    report = {
        "calls": opts.calls,
        "tool": opts.tool,
        "gateway_mode": "observe" if opts.observe else "enforce (20 rules)",
        "direct": direct,
        "gateway": through,
        "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
        "added_p99_ms": through["p99_ms"] - direct["p99_ms"],
        "gateway_cpu_ms_per_call": through["process_cpu_ms_per_call"],
    }
    if peer is not None:
        report["peer_lasso_mcp_gateway"] = peer
        report["peer_added_p50_ms"] = peer["p50_ms"] - direct["p50_ms"]
        report["peer_added_p99_ms"] = peer["p99_ms"] - direct["p99_ms"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
