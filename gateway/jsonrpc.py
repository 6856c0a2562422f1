"""JSON-RPC 2.0 lines as the gateway reads and writes them (MCP's stdio framing: one
message per line), for every transport: ids, errors, the duplicate-key-refusing reader, the
canonical re-serialization the server gets, and a line reader that skips over-long lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Final

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
# JSON-RPC's range for implementation-defined server errors.
SERVER_GONE: Final = -32000


class LineTooLong(Exception):
    """A line longer than its side's limit: skipped whole."""


def valid_id(request_id: Any) -> bool:
    """JSON-RPC ids the gateway keeps books by: strings and integers (MCP forbids null;
    a float or an object would compare otherwise at the server)."""
    return isinstance(request_id, str) or (
        isinstance(request_id, int) and not isinstance(request_id, bool)
    )


def request_key(request_id: Any) -> str:
    # 1 and "1" are different ids; the JSON text tells them apart.
    return json.dumps(request_id, sort_keys=True)


def dumps(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class DuplicateKey(ValueError):
    """A JSON object naming one key twice: readers disagree on which value counts."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise DuplicateKey("an object names a key twice")
    return out


def read_client(text: bytes) -> Any:
    """A client's message as the gateway decides it. Duplicate keys are refused: the
    gateway must not read ``method`` or ``arguments`` otherwise than the server does."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def canonical(message: Any) -> bytes:
    """The one line the server gets for a client's message: the object the gateway read,
    written again (ASCII, compact), never the client's own bytes. A bare CR or a U+2028
    inside a line, legal JSON whitespace to us, is a line break to some servers' readers:
    relaying the raw bytes would let a second request ride past the gate."""
    return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """The next line (b"" at EOF); a last line without its newline counts. A line longer
    than the reader's limit is read past and dropped: LineTooLong."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        return e.partial
    except asyncio.LimitOverrunError as e:
        await _skip_line(reader, e.consumed)
        raise LineTooLong("a line longer than the limit was dropped") from None


async def _skip_line(reader: asyncio.StreamReader, consumed: int) -> None:
    """Drop the rest of an over-long line, never holding more than the limit."""
    while True:
        if consumed:
            await reader.readexactly(consumed)
        try:
            await reader.readuntil(b"\n")  # the line's tail: dropped
            return
        except asyncio.IncompleteReadError:
            return
        except asyncio.LimitOverrunError as e:
            consumed = e.consumed
