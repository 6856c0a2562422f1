"""``GET /v1/events`` on a real ``tooltrail collect`` process (issue 17, "Live").

Spans posted over OTLP and approvals filed over HTTP come out of the Server-Sent Events
stream; a reconnect with ``Last-Event-ID`` resumes after the last event; filters apply;
streams are bounded, kept alive with comments and released when their client goes; with
access control a viewer reads everything, an agent only its own sessions.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from access_support import people
from collect_support import CollectorProcess, metric, post_traces, request, wait_until
from webhook_support import Receiver

from tooltrail import semconv as sc
from tooltrail.webhooks import WebhookStore

TOKEN = "events-token-0123456789abcdef"
BIN = Path(sys.executable).parent


def span_body(session: str, agent: str, decision: str, radius: str = "Low") -> bytes:
    attrs = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "git_push",
        sc.TT_SESSION_ID: session,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.TT_DECISION: decision,
        sc.TT_BLAST_RADIUS: radius,
    }
    now = time.time_ns()
    span = {
        "traceId": secrets.token_hex(16),
        "spanId": secrets.token_hex(8),
        "name": "execute_tool git_push",
        "startTimeUnixNano": str(now - 1_000_000),
        "endTimeUnixNano": str(now),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()],
    }
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}
    return json.dumps(doc).encode()


class Stream:
    """A raw SSE client: the status, the headers, then events and comments as they come."""

    def __init__(self, url: str, query: str = "", headers: dict[str, str] | None = None):
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        lines = [f"GET /v1/events{query} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.file = self.sock.makefile("rb")
        self.status = int(self.file.readline().split()[1])
        self.headers: dict[str, str] = {}
        while (line := self.file.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            self.headers[name.lower()] = value.strip()
        self.comments = 0

    def body(self) -> bytes:
        return self.file.read(int(self.headers["content-length"]))

    def events(self, count: int, timeout: float = 20.0) -> list[tuple[str, dict[str, Any]]]:
        self.sock.settimeout(timeout)
        out: list[tuple[str, dict[str, Any]]] = []
        event_id, data = "", ""
        while len(out) < count:
            line = self.file.readline().decode()
            if line == "":
                break
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                out.append((event_id, json.loads(data)))
                data = ""
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def col(tmp_path: Path) -> Any:
    with CollectorProcess(
        tmp_path / "data", "--token", TOKEN, "--max-streams", "2", "--events-heartbeat", "0.3"
    ) as proc:
        yield proc


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(col: CollectorProcess, body: bytes, token: str = TOKEN) -> None:
    status, _, raw = post_traces(
        col.url, body, "application/json", {"Authorization": f"Bearer {token}"}
    )
    assert status == 200, raw


def test_spans_and_approvals_stream_and_a_reconnect_resumes(col: CollectorProcess) -> None:
    stream = Stream(col.url, "", AUTH)
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        post(col, span_body("s-1", "bot-a", "ALLOW"))
        post(col, span_body("s-1", "bot-a", "DENY", "High"))
        filed = {"tool_name": "deploy", "arguments": {"env": "prod"}, "session_id": "s-1"}
        status, _, _ = request(col.url, "POST", "/v1/approvals", json.dumps(filed).encode(), AUTH)
        assert status == 201
        got = stream.events(3)
    finally:
        stream.close()
    kinds = sorted(doc["kind"] for _, doc in got)
    assert kinds == ["action", "action", "approval.requested"]
    assert "prod" not in json.dumps(got)  # the request's arguments are not in the event
    first_id = got[0][0]
    # A reconnect with the first id gets the other two, and then what lands meanwhile.
    again = Stream(col.url, "", {**AUTH, "Last-Event-ID": first_id})
    try:
        post(col, span_body("s-2", "bot-b", "ALLOW"))
        rest = again.events(3)
    finally:
        again.close()
    assert [doc for _, doc in rest[:2]] == [doc for _, doc in got[1:]]
    assert rest[2][1]["session"] == "s-2"


def test_filters_follow_0_and_bad_input(col: CollectorProcess) -> None:
    post(col, span_body("s-1", "bot-a", "ALLOW"))
    post(col, span_body("s-2", "bot-b", "DENY", "Critical"))
    post(col, span_body("s-2", "bot-b", "ALLOW"))

    def history(query: str) -> list[dict[str, Any]]:
        status, _, raw = request(
            col.url, "GET", f"/v1/events?since=all&follow=0{query}", None, AUTH
        )
        assert status == 200
        return [
            json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
        ]

    wait_until(lambda: len(history("")) == 3, what="three landed actions")
    assert [d["session"] for d in history("&decision=deny")] == ["s-2"]
    assert {d["agent"] for d in history("&session=s-2")} == {"bot-b"}
    assert len(history("&agent=bot-a&kind=action")) == 1
    assert history("&kind=approval") == []
    # tooltrail tail --url reads the same stream (the token from the environment).
    tail = subprocess.run(
        [
            str(BIN / "tooltrail"),
            "tail",
            "--url",
            col.url,
            "--since",
            "all",
            "--format",
            "json",
            "--decision",
            "DENY",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOOLTRAIL_TOKEN": TOKEN},
    )
    assert tail.returncode == 0, tail.stderr
    assert [json.loads(line)["session"] for line in tail.stdout.splitlines()] == ["s-2"]
    refused = subprocess.run(
        [str(BIN / "tooltrail"), "tail", "--url", col.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TOOLTRAIL_TOKEN": "wrong-token-0123456789"},
    )
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr
    status, _, raw = request(col.url, "GET", "/v1/events?kind=nope", None, AUTH)
    assert status == 400 and b"nope" in raw
    bad_id = {**AUTH, "Last-Event-ID": "garbage"}
    assert request(col.url, "GET", "/v1/events", None, bad_id)[0] == 400
    assert request(col.url, "GET", "/v1/events", None, {})[0] == 401
    assert request(col.url, "POST", "/v1/events", b"", AUTH)[0] == 405


def test_streams_are_bounded_kept_alive_and_released_when_the_client_goes(
    col: CollectorProcess,
) -> None:
    first, second = Stream(col.url, "", AUTH), Stream(col.url, "", AUTH)
    third = Stream(col.url, "", AUTH)
    try:
        assert (first.status, second.status, third.status) == (200, 200, 503)
        assert b"too many event streams" in third.body()
        # Heartbeats (a comment every 0.3 s here) while nothing happens.
        first.sock.settimeout(5)
        assert first.file.readline() == b"retry: 1000\n"
        first.file.readline()
        assert first.file.readline() == b": keep-alive\n"
        assert metric(col.url, "event_streams_open") == 2
        # Other requests are still served while both streams are open.
        assert request(col.url, "GET", "/healthz")[0] == 200
    finally:
        first.close()
        second.close()
        third.close()
    wait_until(lambda: metric(col.url, "event_streams_open") == 0, what="streams released")
    fourth = Stream(col.url, "", AUTH)
    try:
        assert fourth.status == 200
    finally:
        fourth.close()


def test_with_access_control_viewers_read_all_and_agents_their_own(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    creds = people(data)
    with CollectorProcess(data, "--token", TOKEN) as col:
        # bot-a holds s-a (it filed a request there); bot-b holds s-b.
        for agent, session in (("bot-a", "s-a"), ("bot-b", "s-b")):
            filed = {"tool_name": "deploy", "arguments": {}, "session_id": session}
            headers = {"Authorization": f"Bearer {creds[agent]}"}
            status, _, raw = request(
                col.url, "POST", "/v1/approvals", json.dumps(filed).encode(), headers
            )
            assert status == 201, raw
            post(col, span_body(session, agent, "ALLOW"), creds[agent])

        def read(token: str | None) -> tuple[int, list[dict[str, Any]]]:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            status, _, raw = request(col.url, "GET", "/v1/events?since=all&follow=0", None, headers)
            docs = [
                json.loads(line[6:])
                for line in raw.decode().splitlines()
                if line.startswith("data: ")
            ]
            return status, docs

        wait_until(lambda: len(read(creds["vic"])[1]) == 4, what="four events for the viewer")
        status, mine = read(creds["bot-a"])
        assert status == 200
        assert {d["session"] for d in mine} == {"s-a"} and len(mine) == 2
        assert read(None)[0] == 401
        assert read(TOKEN)[0] == 401  # the shared agents' token reads nothing once users exist


def test_the_collector_delivers_webhooks_for_its_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    receiver = Receiver()
    try:
        with WebhookStore(data) as store:
            _, secret = store.add(receiver.url, ["session.paused"])
        receiver.secrets.append(secret)
        with CollectorProcess(data, "--token", TOKEN) as col:
            filed = {"tool_name": "deploy", "arguments": {}, "session_id": "s-1"}
            body = json.dumps(filed).encode()
            assert request(col.url, "POST", "/v1/approvals", body, AUTH)[0] == 201
            pause = json.dumps({"action": "pause", "by": "olga"}).encode()
            status, _, raw = request(col.url, "POST", "/v1/sessions/s-1/control", pause, AUTH)
            assert status == 200, raw
            wait_until(lambda: len(receiver.received) == 1, what="the pause delivered")
        assert receiver.received[0]["event"]["summary"] == "session paused by olga"
        assert receiver.bad_signatures == 0
    finally:
        receiver.close()


def test_a_client_gone_while_nothing_happens_frees_its_stream_at_once(tmp_path: Path) -> None:
    # The default heartbeat (15 s): no write would notice the client gone for 15 s or more;
    # the once-a-second look at the socket does.
    with CollectorProcess(tmp_path / "data", "--token", TOKEN) as col:
        stream = Stream(col.url, "", AUTH)
        assert stream.status == 200
        wait_until(lambda: metric(col.url, "event_streams_open") == 1, what="the stream open")
        stream.close()
        started = time.monotonic()
        wait_until(lambda: metric(col.url, "event_streams_open") == 0, what="the stream freed")
        assert time.monotonic() - started < 5
