"""``tooltrail proxy --listen``: the streamable HTTP gateway, between the official
TypeScript MCP SDK client (``StreamableHTTPClientTransport``, tests/js/client.mjs) and real
npm servers nobody here wrote: server-filesystem per MCP session (stdio, one process each)
and server-everything both as a stdio server and in its own streamable HTTP mode (the
remote ``--upstream``). The gateway runs as the real command, on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from approval_support import pending, run_cli
from collect_support import wait_until
from gateway_http_support import everything_http, http_plan, listener, start_http_client
from gateway_support import (
    EVERYTHING,
    TOOLTRAIL,
    children,
    client_results,
    fs_server,
    require_node,
    text_of,
)
from git_support import clean_env

from tooltrail import analytics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-http", "version": "0.1"},
    },
}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(autouse=True)
def _node() -> None:
    require_node()


def _policy(tmp: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


FS_POLICY = """\
version: 1
default: ALLOW
rules:
  - id: no-secrets
    when: {tool: write_file, args: {path: "*secret*"}}
    decision: DENY
    reason: secrets stay out of reach
  - id: approve-reports
    when: {tool: write_file, args: {path: "*report*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 2m, on_timeout: DENY}
"""

EVERYTHING_POLICY = """\
version: 1
default: ALLOW
rules:
  - id: no-sums
    when: {tool: get-sum}
    decision: DENY
    reason: no arithmetic today
"""


def _write(root: Path, name: str, **kw: Any) -> dict[str, Any]:
    arguments = {"path": str(root / name), "content": "hello"}
    return {"op": "call", "name": "write_file", "arguments": arguments, **kw}


def _denial(step: dict[str, Any]) -> dict[str, Any]:
    assert step["result"]["isError"] is True, step
    denial: dict[str, Any] = json.loads(text_of(step))
    assert denial["error"] == "tool_call_denied"
    return denial


def _sessions(data: Path) -> dict[str, dict[str, Any]]:
    frame = analytics.sessions(data)
    return {r["session_id"]: r for r in frame.iter_rows(named=True)}


def _actions(data: Path, session_id: str) -> list[dict[str, Any]]:
    return list(analytics.session_actions(data, session_id).iter_rows(named=True))


def _finish(client: subprocess.Popen[str], timeout: float = 90) -> list[dict[str, Any]]:
    try:
        return client_results(client, timeout)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def test_two_clients_get_two_sessions_and_a_hold_stalls_only_its_own(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    policy = _policy(tmp_path, FS_POLICY)
    args = ["--listen", "127.0.0.1:0", "--data", str(data), "--policy", str(policy)]
    with listener([*args, "--", *fs_server(root)]) as gw:
        a = start_http_client(
            http_plan(
                tmp_path,
                gw.url,
                [_write(root, "report-a.txt", progress=True)],
                clientName="client-a",
            )
        )
        b = None
        try:
            held_a = pending(data, 1, timeout=60)[0]
            b_steps = [
                {"op": "sessionId"},
                _write(root, "b.txt"),
                _write(root, "secret-b.txt"),
                _write(root, "report-b.txt"),
            ]
            b = start_http_client(http_plan(tmp_path, gw.url, b_steps, clientName="client-b"))
            both = pending(data, 2, timeout=60)
            held_b = next(r for r in both if r.approval_id != held_a.approval_id)
            # Two MCP sessions, two server processes, both alive while both calls wait.
            assert held_a.session_id != held_b.session_id
            assert len(children(gw.proc.pid)) == 2
            assert (root / "b.txt").read_text() == "hello"  # b ran while a was held

            done = run_cli(data, "approve", held_b.approval_id, "--by", "bob", timeout=60)
            assert done.returncode == 0, done.stderr
            b_sid, wrote, denied, approved = _finish(b)  # b finishes; a still waits
            assert a.poll() is None
            assert [r.approval_id for r in pending(data, 1, timeout=10)] == [held_a.approval_id]
            assert "isError" not in wrote["result"] and "isError" not in approved["result"]
            assert _denial(denied)["rule"] == "no-secrets"
            assert not (root / "secret-b.txt").exists()
            assert (root / "report-b.txt").read_text() == "hello"
            assert not (root / "report-a.txt").exists()

            done = run_cli(data, "approve", held_a.approval_id, "--by", "alice", timeout=60)
            assert done.returncode == 0, done.stderr
            (approved_a,) = _finish(a)
        finally:
            for client in (a, b):
                if client is not None and client.poll() is None:
                    client.kill()
                    client.wait()
        assert approved_a["result"]["_progressSeen"] >= 1  # progress while held, over SSE
        assert (root / "report-a.txt").read_text() == "hello"
        # Each client ended its session (DELETE): the gateway ended its server.
        wait_until(lambda: children(gw.proc.pid) == [], 20, "the servers to be ended")
        assert gw.stop() == 0

    sessions = _sessions(data)
    assert set(sessions) == {held_a.session_id, held_b.session_id}
    # The Mcp-Session-Id the client was given is the tooltrail session of its spans.
    assert b_sid["result"]["sessionId"] == held_b.session_id
    assert sessions[held_a.session_id]["agent_name"] == "client-a"
    assert sessions[held_b.session_id]["agent_name"] == "client-b"
    b_actions = _actions(data, held_b.session_id)
    assert [x["decision"] for x in b_actions] == ["ALLOW", "DENY", "REQUIRE_APPROVAL"]
    for action in [*b_actions, *_actions(data, held_a.session_id)]:
        assert action["governed_by"] == "gateway"
        # the operator's name for the server (from the command), not its serverInfo name
        assert action["mcp_server"] == "mcp-server-filesystem"
        reported = json.loads(action["attributes"])["tooltrail.mcp.server.reported_name"]
        assert reported == "secure-filesystem-server"


def test_a_non_loopback_bind_needs_a_token_and_every_request_its_bearer(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    server = fs_server(root)
    refused = subprocess.run(
        [TOOLTRAIL, "proxy", "--listen", "0.0.0.0:0", "--data", str(data), "--", *server],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert refused.returncode == 2
    assert "refusing to listen on non-loopback address '0.0.0.0' without --token" in refused.stderr

    policy = _policy(tmp_path, FS_POLICY)
    args = ["--listen", "0.0.0.0:0", "--data", str(data), "--policy", str(policy)]
    with listener([*args, "--", *server], TOOLTRAIL_PROXY_TOKEN="s3cret") as gw:
        url = gw.url.replace("0.0.0.0", "127.0.0.1")
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            answer = httpx2.post(url, json=INIT, headers={**HEADERS, **headers}, timeout=30)
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"] == "Bearer"
        assert children(gw.proc.pid) == []  # nothing was started for them
        good = httpx2.post(url, json=INIT, headers={**HEADERS, "authorization": "Bearer s3cret"})
        assert good.status_code == 200, good.text
        assert good.headers["mcp-session-id"]


def test_the_token_is_enforced_for_the_sdk_client_too(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    policy = _policy(tmp_path, FS_POLICY)
    args = [
        "--listen",
        "0.0.0.0:0",
        "--token",
        "s3cret",
        "--data",
        str(data),
        "--policy",
        str(policy),
    ]
    with listener([*args, "--", *fs_server(root)]) as gw:
        url = gw.url.replace("0.0.0.0", "127.0.0.1")
        client = start_http_client(http_plan(tmp_path, url, [_write(root, "a.txt")]))
        out, err = client.communicate(timeout=60)
        assert client.returncode != 0 and "401" in err, (out, err)
        assert not (root / "a.txt").exists()

        auth = {"Authorization": "Bearer s3cret"}
        (wrote,) = _finish(
            start_http_client(http_plan(tmp_path, url, [_write(root, "a.txt")], headers=auth))
        )
        assert "isError" not in wrote["result"]
        assert (root / "a.txt").read_text() == "hello"


def test_loopback_binds_refuse_other_hosts_and_origins(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    args = ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "data")]
    with listener([*args, "--", *fs_server(root)]) as gw:
        port = gw.url.split(":")[2].split("/")[0]
        refusals = [
            ({"origin": "http://evil.example"}, 403),  # a page elsewhere, DNS rebound
            ({"origin": "null"}, 403),
            ({"host": f"evil.example:{port}"}, 421),  # rebound name, same-origin request
        ]
        for headers, status in refusals:
            answer = httpx2.post(gw.url, json=INIT, headers={**HEADERS, **headers}, timeout=30)
            assert answer.status_code == status, (headers, answer.text)
        assert children(gw.proc.pid) == []
        local = {"origin": f"http://localhost:{port}", "host": f"localhost:{port}"}
        answer = httpx2.post(gw.url, json=INIT, headers={**HEADERS, **local}, timeout=30)
        assert answer.status_code == 200, answer.text
        sid = answer.headers["mcp-session-id"]
        assert len(children(gw.proc.pid)) == 1
        gone = httpx2.delete(gw.url, headers={"mcp-session-id": sid}, timeout=30)
        assert gone.status_code == 200
        wait_until(lambda: children(gw.proc.pid) == [], 20, "the server to be ended")
        again = httpx2.post(
            gw.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={**HEADERS, "mcp-session-id": sid},
            timeout=30,
        )
        assert again.status_code == 404


def test_a_remote_upstream_is_governed_and_passed_through_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    policy = _policy(tmp_path, EVERYTHING_POLICY)
    steps: list[dict[str, Any]] = [
        {"op": "info"},
        {"op": "list"},
        {"op": "call", "name": "echo", "arguments": {"message": "through"}},
        {"op": "call", "name": "get-sum", "arguments": {"a": 1, "b": 2}},
    ]
    with everything_http() as upstream:
        upstream_port = urlsplit(upstream).port
        direct = _finish(start_http_client(http_plan(tmp_path, upstream, steps)))
        args = ["--listen", "127.0.0.1:0", "--data", str(data), "--policy", str(policy)]
        with listener([*args, "--upstream", upstream]) as gw:
            plan = http_plan(tmp_path, gw.url, [{"op": "sessionId"}, *steps])
            sid, info, listed, echoed, summed = _finish(start_http_client(plan))
            assert gw.stop() == 0

    assert info["result"] == direct[0]["result"] and info["result"]["name"]
    assert listed["result"] == direct[1]["result"]  # tool definitions untouched
    assert echoed["result"] == direct[2]["result"]
    assert "3" in text_of(direct[3])  # the upstream runs get-sum when asked directly
    assert _denial(summed)["rule"] == "no-sums"

    sessions = _sessions(data)
    assert list(sessions) == [sid["result"]["sessionId"]]
    actions = _actions(data, sid["result"]["sessionId"])
    assert [(a["tool_name"], a["decision"]) for a in actions] == [
        ("echo", "ALLOW"),
        ("get-sum", "DENY"),
    ]
    # named by the operator (the --upstream URL's host and port), its own name recorded
    assert {a["mcp_server"] for a in actions} == {f"127.0.0.1:{upstream_port}"}
    reported = {json.loads(a["attributes"])["tooltrail.mcp.server.reported_name"] for a in actions}
    assert reported == {info["result"]["name"]}


def test_servers_file_serves_each_server_at_its_own_path_with_its_own_policy(
    tmp_path: Path,
) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    _policy(tmp_path, EVERYTHING_POLICY, "b-policy.yaml")
    servers = tmp_path / "servers.yaml"
    servers.write_text(
        f"""\
servers:
  a:
    command: {fs_server(root)[0]}
    args: [{root}]
  b:
    command: [{EVERYTHING}]
    policy: b-policy.yaml   # relative to this file
"""
    )
    policy = _policy(tmp_path, FS_POLICY)
    args = ["--listen", "127.0.0.1:0", "--data", str(data), "--policy", str(policy)]
    with listener([*args, "--servers", str(servers)], paths=2) as gw:
        assert set(gw.urls) == {"/mcp/a", "/mcp/b"}
        a_plan = [{"op": "sessionId"}, {"op": "info"}, _write(root, "secret.txt")]
        b_plan = [
            {"op": "sessionId"},
            {"op": "info"},
            {"op": "call", "name": "echo", "arguments": {"message": "hi"}},
            {"op": "call", "name": "get-sum", "arguments": {"a": 1, "b": 2}},
        ]
        a = start_http_client(http_plan(tmp_path, gw.urls["/mcp/a"], a_plan))
        b = start_http_client(http_plan(tmp_path, gw.urls["/mcp/b"], b_plan))
        a_sid, a_info, a_denied = _finish(a)
        b_sid, b_info, echoed, b_denied = _finish(b)

        # A session belongs to its path: /mcp/b does not know /mcp/a's.
        init = httpx2.post(gw.urls["/mcp/a"], json=INIT, headers=HEADERS, timeout=30)
        sid = init.headers["mcp-session-id"]
        wrong = httpx2.delete(gw.urls["/mcp/b"], headers={"mcp-session-id": sid}, timeout=30)
        assert wrong.status_code == 404
        assert httpx2.delete(gw.urls["/mcp/a"], headers={"mcp-session-id": sid}).status_code == 200
        assert gw.stop() == 0

    assert a_info["result"]["name"] == "secure-filesystem-server"
    assert _denial(a_denied)["rule"] == "no-secrets"  # the command's --policy
    assert not (root / "secret.txt").exists()
    assert b_info["result"]["name"] != a_info["result"]["name"]
    assert "hi" in text_of(echoed)
    assert _denial(b_denied)["rule"] == "no-sums"  # b's own policy
    sessions = _sessions(data)
    assert {a_sid["result"]["sessionId"], b_sid["result"]["sessionId"]} <= set(sessions)


def test_a_bad_servers_file_is_refused_naming_file_line_and_field(tmp_path: Path) -> None:
    servers = tmp_path / "servers.yaml"
    servers.write_text(
        """\
servers:
  a:
    command: npx
    args: -y
  b:
    url: ftp://example.com/mcp
  c/d:
    command: x
  e:
    command: x
    url: http://127.0.0.1:1/mcp
    policy: missing.yaml
"""
    )
    done = subprocess.run(
        [TOOLTRAIL, "proxy", "--listen", "127.0.0.1:0", "--servers", str(servers)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 2, done.stderr
    for expected in (
        f"{servers}:4: servers.a.args: needs a list of strings",
        f"{servers}:6: servers.b.url: 'ftp://example.com/mcp' is not an http:// or https:// URL",
        f"{servers}:7: servers.c/d: a server name is 1-64 letters, digits, '-' or '_'",
        f"{servers}:9: servers.e: needs exactly one of command (a stdio server) or url",
        f"{servers}:12: servers.e.policy: {tmp_path / 'missing.yaml'} is not a file",
    ):
        assert expected in done.stderr, done.stderr


def test_an_idle_session_ends_its_server_and_unknown_versions_are_refused(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    args = ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "data"), "--idle-timeout", "3"]
    with listener([*args, "--", *fs_server(root)]) as gw:
        answer = httpx2.post(gw.url, json=INIT, headers=HEADERS, timeout=30)
        assert answer.status_code == 200, answer.text
        session = {**HEADERS, "mcp-session-id": answer.headers["mcp-session-id"]}
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        old = httpx2.post(
            gw.url, json=ping, headers={**session, "mcp-protocol-version": "1999-01-01"}
        )
        assert old.status_code == 400 and "1999-01-01" in old.text
        known = httpx2.post(
            gw.url, json=ping, headers={**session, "mcp-protocol-version": "2025-06-18"}
        )
        assert known.status_code == 200 and '"result":{}' in known.text.replace(" ", "")
        assert len(children(gw.proc.pid)) == 1
        # No request and no open stream for longer than --idle-timeout: the session ends.
        wait_until(lambda: children(gw.proc.pid) == [], 20, "the idle session's server to end")
        gone = httpx2.post(gw.url, json=ping, headers=session, timeout=30)
        assert gone.status_code == 404
        assert any("idle for longer than --idle-timeout" in line for line in gw.log)


def test_a_client_cancellation_over_http_withdraws_a_held_call(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    policy = _policy(tmp_path, FS_POLICY)
    args = ["--listen", "127.0.0.1:0", "--data", str(data), "--policy", str(policy)]
    steps = [
        _write(root, "report.txt", abortAfterMs=1500),
        _write(root, "after.txt"),
        {"op": "sessionId"},
    ]
    with listener([*args, "--", *fs_server(root)]) as gw:
        client = start_http_client(http_plan(tmp_path, gw.url, steps))
        withdrawn_request = pending(data, 1, timeout=60)[0]
        withdrawn, after, sid = _finish(client)
        # What the client withdrew is abandoned: approving it is refused, and runs nothing.
        done = run_cli(data, "approve", withdrawn_request.approval_id, "--by", "a", timeout=60)
        assert done.returncode == 2 and "abandoned" in done.stderr, done.stderr
        wait_until(lambda: children(gw.proc.pid) == [], 20, "the session's server to end")
        assert gw.stop() == 0
    assert "error" in withdrawn, withdrawn  # the SDK reports its own abort
    assert not after["result"].get("isError")
    assert (root / "after.txt").read_text() == "hello"  # the session went on
    assert not (root / "report.txt").exists()
    actions = _actions(data, sid["result"]["sessionId"])
    assert actions[0]["decision"] == "REQUIRE_APPROVAL"
    assert actions[0]["error_type"] == "CancelledError"


def test_a_session_whose_server_dies_is_ended_and_its_id_forgotten(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    args = ["--listen", "127.0.0.1:0", "--data", str(tmp_path / "data")]
    with listener([*args, "--", *fs_server(root)]) as gw:
        answer = httpx2.post(gw.url, json=INIT, headers=HEADERS, timeout=30)
        assert answer.status_code == 200, answer.text
        session = {**HEADERS, "mcp-session-id": answer.headers["mcp-session-id"]}
        (server,) = children(gw.proc.pid)
        os.kill(server, signal.SIGKILL)
        wait_until(
            lambda: any("the MCP server exited (status -9)" in line for line in gw.log),
            20,
            "the gateway to notice",
        )
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        assert httpx2.post(gw.url, json=ping, headers=session, timeout=30).status_code == 404
        # The gateway goes on: a new session gets a new server.
        again = httpx2.post(gw.url, json=INIT, headers=HEADERS, timeout=30)
        assert again.status_code == 200 and len(children(gw.proc.pid)) == 1
        assert gw.stop() == 0


def test_everything_server_over_http_behaves_as_on_a_direct_connection(tmp_path: Path) -> None:
    """npm server-everything (stdio) behind --listen: progress, resources, prompts,
    sampling, roots and elicitation (server-to-client requests, answered in their own POSTs),
    cancellation and a large result give the transcript of a direct stdio connection."""
    policy = _policy(tmp_path, "version: 1\ndefault: ALLOW\n")
    big = "x" * 1_500_000
    long_running = {"duration": 1, "steps": 4}
    steps: list[dict[str, Any]] = [
        {"op": "list"},
        {"op": "listResources"},
        {"op": "readResource", "uri": "demo://resource/static/document/features.md"},
        {"op": "listPrompts"},
        {"op": "getPrompt", "name": "simple-prompt"},
        {"op": "ping"},
        {"op": "call", "name": "get-sum", "arguments": {"a": 2, "b": 40}},
        {"op": "call", "name": "get-tiny-image"},
        {"op": "call", "name": "get-structured-content", "arguments": {"location": "New York"}},
        {"op": "call", "name": "echo", "arguments": {"message": big}},
        {
            "op": "call",
            "name": "trigger-long-running-operation",
            "arguments": long_running,
            "progress": True,
        },
        {"op": "call", "name": "trigger-sampling-request", "arguments": {"prompt": "hi"}},
        {"op": "call", "name": "get-roots-list"},
        {"op": "call", "name": "trigger-elicitation-request"},
        {
            "op": "call",
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 5, "steps": 5},
            "abortAfterMs": 300,
        },
        {"op": "call", "name": "get-sum", "arguments": {"a": 1, "b": 1}},
    ]
    server = [str(EVERYTHING), "stdio"]
    plan = tmp_path / "direct.json"
    plan.write_text(
        json.dumps({"command": server[0], "args": server[1:], "steps": steps, "handlers": True})
    )
    direct = _finish(start_http_client(plan))  # client.mjs over stdio: no url in the plan
    data = tmp_path / "data"
    args = ["--listen", "127.0.0.1:0", "--data", str(data), "--policy", str(policy)]
    with listener([*args, "--", *server]) as gw:
        through = _finish(start_http_client(http_plan(tmp_path, gw.url, steps, handlers=True)))
        assert gw.stop() == 0
    seen = [t[10]["result"].pop("_progressSeen") for t in (direct, through)]
    assert min(seen) >= long_running["steps"] - 1
    assert through == direct
    by_op = dict(enumerate(direct))
    assert big in text_of(by_op[9])
    assert "sampled: 1 message(s)" in json.dumps(by_op[11])
    assert "file:///srv/project" in json.dumps(by_op[12])
    assert "decline" in json.dumps(by_op[13])
    assert "error" in by_op[14]
    (session,) = _sessions(data)
    assert len(_actions(data, session)) == 10  # one span per tools/call


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "127.0.0.1:0", "--upstream", "http://x/mcp", "--", "srv"], {}, "one of"),
        (["--listen", "127.0.0.1:0"], {}, "one of"),
        (["--listen", "nonsense", "--", "srv"], {}, "is not HOST:PORT"),
        (["--listen", "127.0.0.1:0", "--upstream", "ftp://x/mcp"], {}, "--upstream: 'ftp"),
        (["--upstream", "http://x/mcp", "--", "srv"], {}, "go with --listen"),
        (["--token", "t", "--", "srv"], {}, "--token goes with --listen"),
        (["--listen", "127.0.0.1:0", "--session-id", "s", "--", "srv"], {}, "each MCP session"),
        (["--listen", "127.0.0.1:0", "--", "srv"], {"TOOLTRAIL_PROXY_TOKEN": ""}, "is empty"),
    ],
)
def test_listen_options_are_checked_before_anything_starts(
    args: list[str], env: dict[str, str], message: str
) -> None:
    from click.testing import CliRunner

    from tooltrail.cli import cli

    result = CliRunner().invoke(cli, ["proxy", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
