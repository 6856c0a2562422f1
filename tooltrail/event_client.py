"""Reading a collector's event stream (``GET /v1/events``, Server-Sent Events).

A small reader of ``text/event-stream`` over the standard library's HTTP client: events
come as they are written (the response is read line by line, never buffered whole). While
following, a dropped connection is resumed from the last event id (``Last-Event-ID``), as a
browser's EventSource does.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from tooltrail.errors import BadInputError, NotAuthenticatedError, StoreError

EVENTS_PATH: Final = "/v1/events"
_RECONNECT_S: Final = 1.0
_READ_TIMEOUT_S: Final = 60.0  # the collector sends a keep-alive every 15 s by default


def events_url(base: str, params: Mapping[str, Sequence[str] | str | None]) -> str:
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"--url {base!r}: give the collector's http:// or https:// URL")
    pairs = [
        (k, v)
        for k, values in params.items()
        if values is not None
        for v in ([values] if isinstance(values, str) else values)
    ]
    query = urlencode(pairs)
    return base.rstrip("/") + EVENTS_PATH + (f"?{query}" if query else "")


def parse_sse(lines: Iterator[bytes]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(id, event document) per event block of a ``text/event-stream``."""
    event_id: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            data = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


def read_stream(
    base: str,
    params: Mapping[str, Sequence[str] | str | None],
    *,
    token: str | None = None,
    keep_following: bool = False,
) -> Iterator[dict[str, Any]]:
    """The events of a collector's stream as JSON documents. A refusal (401, 403, 400)
    raises; while following, a dropped connection reconnects from the last id."""
    last_id: str | None = None
    query = dict(params)
    query["follow"] = "1" if keep_following else "0"
    while True:
        request = urllib.request.Request(events_url(base, query))
        request.add_header("Accept", "text/event-stream")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if last_id is not None:
            request.add_header("Last-Event-ID", last_id)
        try:
            with urllib.request.urlopen(request, timeout=_READ_TIMEOUT_S) as answer:
                for event_id, doc in parse_sse(iter(answer.readline, b"")):
                    last_id = event_id or last_id
                    yield doc
        except urllib.error.HTTPError as e:
            raise _refusal(e) from None
        except (urllib.error.URLError, OSError) as e:
            if not keep_following:
                raise StoreError(f"cannot read the event stream at {base}: {e}") from e
        if not keep_following:
            return
        time.sleep(_RECONNECT_S)


def _refusal(e: urllib.error.HTTPError) -> Exception:
    try:
        message = json.loads(e.read() or b"{}").get("message") or e.reason
    except ValueError:
        message = e.reason
    text = f"the collector refused the event stream: HTTP {e.code}: {message}"
    if e.code in (401, 403):
        return NotAuthenticatedError(text)
    return BadInputError(text) if e.code == 400 else StoreError(text)


__all__ = ["events_url", "parse_sse", "read_stream"]
