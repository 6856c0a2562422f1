"""The HTTP gateway serves the live event stream of its data directory (issue 17:
``GET /v1/events`` on ``collect`` and on the gateway's HTTP mode), behind the same bearer
token as its MCP endpoint. The gateway is the real ``tooltrail proxy --listen`` process;
the spans land through the real OTel SDK and exporter."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from events_support import land
from gateway_http_support import listener

SERVER = Path(__file__).parent / "servers" / "changing_tool_server.py"


def _events(body: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def test_the_gateway_streams_what_lands_behind_its_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "d.txt").write_text("Greets.")
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\ndefault: ALLOW\n")
    server = [sys.executable, str(SERVER), str(tmp_path / "d.txt"), str(tmp_path / "c.txt")]
    args = ["--listen", "127.0.0.1:0", "--token", "s3cret", "--data", str(data)]
    land(data, "bot-a", "s-1", 2)
    land(data, "bot-b", "s-2", 1)
    with listener([*args, "--policy", str(policy), "--", *server]) as gw:
        url = gw.urls["/mcp"]
        parts = urlsplit(url)
        events_url = f"{parts.scheme}://{parts.netloc}/v1/events"
        assert httpx2.get(events_url, params={"follow": "0"}, timeout=30).status_code == 401
        bearer = {"authorization": "Bearer s3cret"}
        answer = httpx2.get(
            events_url,
            params={"follow": "0", "session": "s-1", "since": "all"},
            headers=bearer,
            timeout=30,
        )
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        first = _events(answer.text)
        assert [(e["kind"], e["session"], e["agent"]) for e in first] == [
            ("action", "s-1", "bot-a")
        ] * 2
        # Resumable: after the first event's id, only the second comes again.
        resumed = httpx2.get(
            events_url,
            params={"follow": "0", "session": "s-1"},
            headers={**bearer, "last-event-id": str(first[0]["id"])},
            timeout=30,
        )
        assert [e["id"] for e in _events(resumed.text)] == [first[1]["id"]]
        bad = httpx2.get(
            events_url, params={"follow": "0", "kind": "nonsense"}, headers=bearer, timeout=30
        )
        assert bad.status_code == 400
