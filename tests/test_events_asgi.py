"""The event stream mounted in an ASGI app (starlette + uvicorn, as the gateway's HTTP
mode is built): ``sse_stream`` is plain bytes from a plain iterator, so any server can
serve it; starlette runs it in a worker thread."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from pathlib import Path

import uvicorn
from events_support import land
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tooltrail.event_stream import EventSource, sse_stream
from tooltrail.events import Cursor, make_filter


def test_sse_stream_serves_from_a_starlette_app(tmp_path: Path) -> None:
    data = tmp_path / "data"
    land(data, "bot-a", "s-1", 2)
    land(data, "bot-b", "s-2", 1)

    async def events(request: Request) -> StreamingResponse:
        source = EventSource(data, Cursor())
        wanted = make_filter(sessions=request.query_params.getlist("session"))
        chunks = sse_stream(source, wanted, keep_following=False)
        return StreamingResponse(chunks, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/events", events)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/v1/events?session=s-1")
        answer = conn.getresponse()
        body = answer.read().decode()
        conn.close()
    finally:
        server.should_exit = True
        thread.join(10)
    assert answer.status == 200
    assert answer.getheader("content-type", "").startswith("text/event-stream")
    docs = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [(d["kind"], d["session"], d["agent"]) for d in docs] == [("action", "s-1", "bot-a")] * 2
    ids = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
    assert ids == [d["id"] for d in docs]
