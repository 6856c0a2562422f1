"""OTLP/HTTP trace requests: decode, validate, answer (no sockets, no disk).

Everything the ``tooltrail collect`` HTTP handler decides about a ``POST /v1/traces`` body
lives here as plain functions, so the rules are testable without a server:

* ``Content-Type`` is ``application/x-protobuf`` or ``application/json`` (415 otherwise);
  ``Content-Encoding`` is ``identity``, ``gzip`` or ``deflate`` (415 otherwise); a body
  that does not decompress is 400, one that decompresses past the limit is 413.
* A body that does not decode as an ``ExportTraceServiceRequest`` is rejected whole (400):
  malformed protobuf, malformed JSON, nesting past the decoder's recursion limit, or (JSON
  only) an id that is not hex, since the JSON body cannot be mapped to protobuf at all.
  One exception: a protobuf body refused only because a string in it is not valid UTF-8
  loses just the spans holding such a string (:mod:`~tooltrail.collector.salvage`).
* A body that decodes is checked span by span: a span with a bad id, no start time or an
  oversized encoding (huge attribute values) is dropped and counted in the OTLP
  ``partial_success`` (``rejected_spans`` and a message naming the first offender), and
  the request's other spans are accepted, as the OTLP/HTTP specification prescribes.

Error bodies are ``google.rpc.Status`` messages, encoded like the request (protobuf or
JSON), as the specification asks.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tooltrail import semconv as sc
from tooltrail.collector import jsontext
from tooltrail.collector.otlp import SPAN_ID_BYTES, TRACE_ID_BYTES, request_from_json
from tooltrail.collector.salvage import Salvaged, SalvageRefused, salvage
from tooltrail.errors import IngestError

CT_PROTOBUF: Final = "application/x-protobuf"
CT_JSON: Final = "application/json"
CONTENT_TYPES: Final = (CT_PROTOBUF, CT_JSON)
ENC_IDENTITY: Final = "identity"
ENC_GZIP: Final = "gzip"
ENC_DEFLATE: Final = "deflate"

# Defaults; the server takes them as options.
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
DEFAULT_MAX_DECODED_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_SPAN_BYTES: Final = 1024 * 1024
_READ_CHUNK: Final = 1024 * 1024


class RequestRejected(Exception):
    """The whole request is refused: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    max_span_bytes: int = DEFAULT_MAX_SPAN_BYTES


@dataclass(frozen=True, slots=True)
class Accepted:
    """A decoded request after per-span validation.

    ``payload`` is the protobuf encoding of exactly the accepted spans (the body itself
    when it was protobuf and nothing was dropped), which is what gets spooled.
    """

    request: ExportTraceServiceRequest
    payload: bytes
    spans: int
    rejected: int
    error_message: str


def media_type(header: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (header or "").split(";", 1)[0].strip().lower()


def check_content_type(header: str | None) -> str:
    mt = media_type(header)
    if mt not in CONTENT_TYPES:
        shown = header or "none"
        raise RequestRejected(
            415, f"unsupported Content-Type {shown!r}: send {CT_PROTOBUF} or {CT_JSON}"
        )
    return mt


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding``, refusing to inflate past ``limit``."""
    enc = (encoding or ENC_IDENTITY).strip().lower()
    if enc in ("", ENC_IDENTITY):
        return body
    if enc == ENC_GZIP:
        wbits = 16 + zlib.MAX_WBITS
    elif enc == ENC_DEFLATE:
        wbits = zlib.MAX_WBITS
    else:
        raise RequestRejected(415, f"unsupported Content-Encoding {encoding!r}: use gzip")
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    data = body
    try:
        # Inflate in bounded steps: a small bomb must not allocate gigabytes first.
        while data:
            out += inflater.decompress(data, _READ_CHUNK)
            if len(out) > limit:
                raise RequestRejected(413, f"body inflates past the {limit}-byte limit")
            data = inflater.unconsumed_tail
        out += inflater.flush()
    except zlib.error as e:
        raise RequestRejected(400, f"body is not valid {enc}: {e}") from e
    if not inflater.eof:
        raise RequestRejected(400, f"body is not valid {enc}: truncated stream")
    if len(out) > limit:
        raise RequestRejected(413, f"body inflates past the {limit}-byte limit")
    return bytes(out)


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 (test and bench helper)."""
    return gzip.compress(data, mtime=0)


def decode(media: str, data: bytes) -> ExportTraceServiceRequest:
    """Parse a decompressed body; RequestRejected(400) names what is wrong."""
    return decode_salvaging(media, data).request


def decode_salvaging(media: str, data: bytes) -> Salvaged:
    """:func:`decode`, except that a protobuf body refused for a string that is not valid
    UTF-8 loses only the spans holding one (see :mod:`~tooltrail.collector.salvage`)."""
    if media == CT_PROTOBUF:
        try:
            return Salvaged(ExportTraceServiceRequest.FromString(data), 0, "", whole=True)
        except DecodeError as e:
            try:
                salvaged = salvage(data) if "utf-8" in str(e).lower() else None
            except SalvageRefused as refused:
                raise RequestRejected(
                    400, f"protobuf ExportTraceServiceRequest refused: {refused}"
                ) from e
            if salvaged is None:
                raise RequestRejected(
                    400, f"malformed protobuf ExportTraceServiceRequest: {e}"
                ) from e
            return salvaged
    return Salvaged(_decode_json(data), 0, "", whole=True)


def _decode_json(data: bytes) -> ExportTraceServiceRequest:
    try:
        doc = jsontext.loads(data)
    except jsontext.HugeIntegerError as e:
        raise RequestRejected(400, f"invalid OTLP/JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise RequestRejected(400, f"JSON body is not UTF-8 ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise RequestRejected(
            400, f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from e
    except RecursionError as e:
        raise RequestRejected(400, "malformed JSON: nested too deeply") from e
    try:
        return request_from_json(doc, strict=False)
    except IngestError as e:
        raise RequestRejected(400, f"invalid OTLP/JSON: {e}") from e
    except RecursionError as e:  # json_format on pathological nesting
        raise RequestRejected(400, "invalid OTLP/JSON: nested too deeply") from e


def _span_problem(span: Any, max_span_bytes: int | None) -> str | None:
    if len(span.trace_id) != TRACE_ID_BYTES or not any(span.trace_id):
        return f"traceId must be {TRACE_ID_BYTES} bytes, not all zero"
    if len(span.span_id) != SPAN_ID_BYTES or not any(span.span_id):
        return f"spanId must be {SPAN_ID_BYTES} bytes, not all zero"
    parent = span.parent_span_id
    if parent and (len(parent) != SPAN_ID_BYTES or not any(parent)):
        return f"parentSpanId must be empty or {SPAN_ID_BYTES} non-zero bytes"
    if span.start_time_unix_nano == 0:
        return "startTimeUnixNano is missing"
    if max_span_bytes is None:
        return None
    size = span.ByteSize()
    if size > max_span_bytes:
        return f"span encodes to {size} bytes, over the {max_span_bytes}-byte limit"
    return None


def validate(
    req: ExportTraceServiceRequest,
    body: bytes | None,
    max_span_bytes: int,
    dropped: Salvaged | None = None,
) -> Accepted:
    """Drop the spans that cannot land; ``body`` is reused as payload when nothing is.
    ``dropped``: spans the decoder already lost (counted as rejected too)."""
    total = rejected = dropped.dropped if dropped is not None else 0
    first_error = dropped.first_error if dropped is not None else ""
    # A span's encoding is part of the body's: when the whole protobuf body is within the
    # limit, no span can exceed it, and sizing each span (a re-encode) is skipped.
    limit: int | None = max_span_bytes
    if body is not None and len(body) <= max_span_bytes:
        limit = None
    for r, rs in enumerate(req.resource_spans):
        for s, ss in enumerate(rs.scope_spans):
            bad: list[int] = []
            for i, span in enumerate(ss.spans):
                total += 1
                problem = _span_problem(span, limit)
                if problem is not None:
                    bad.append(i)
                    if not first_error:
                        first_error = f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}]: {problem}"
            for i in reversed(bad):
                del ss.spans[i]
            rejected += len(bad)
    # Spool the body itself unless spans were dropped from it (or it was JSON).
    payload = body if rejected == 0 and body is not None else req.SerializeToString()
    message = ""
    if rejected:
        message = f"{rejected} of {total} spans rejected; first: {first_error}"
    return Accepted(req, payload, total - rejected, rejected, message)


def stamp_sender(accepted: Accepted, sender: str) -> Accepted:
    """``accepted`` with every resource stamped ``tooltrail.collector.sender = sender``,
    replacing any value the sender set itself (a sender cannot vouch for itself), and
    its payload re-encoded to hold the stamp (issue 17, provenance)."""
    req = accepted.request
    for rs in req.resource_spans:
        attrs = rs.resource.attributes
        for i in reversed(range(len(attrs))):
            if attrs[i].key == sc.TT_COLLECTOR_SENDER:
                del attrs[i]
        kv = attrs.add()
        kv.key = sc.TT_COLLECTOR_SENDER
        kv.value.string_value = sender
    return dataclasses.replace(accepted, payload=req.SerializeToString())


def read_request(
    content_type: str | None, encoding: str | None, body: bytes, limits: Limits
) -> Accepted:
    """Everything between the raw body and the spans to land."""
    media = check_content_type(content_type)
    data = decompress(body, encoding, limits.max_decoded_bytes)
    decoded = decode_salvaging(media, data)
    # The body itself is the payload only when it decoded as it was.
    reusable = data if media == CT_PROTOBUF and decoded.whole else None
    return validate(decoded.request, reusable, limits.max_span_bytes, decoded)


# --- responses ---------------------------------------------------------------------------


def success_body(media: str, rejected: int = 0, message: str = "") -> bytes:
    """``ExportTraceServiceResponse``: empty on full success, partial_success otherwise."""
    if media == CT_JSON:
        doc: dict[str, Any] = {}
        if rejected:
            # int64 fields are strings in OTLP/JSON.
            doc["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
        return json.dumps(doc).encode()
    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    encoded: bytes = resp.SerializeToString()
    return encoded


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# google.rpc.Code values for the HTTP statuses we answer with.
_RPC_CODES: Final = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    409: 6,  # ALREADY_EXISTS
    411: 3,
    413: 8,  # RESOURCE_EXHAUSTED
    414: 3,
    415: 3,
    431: 3,
    500: 13,  # INTERNAL
    501: 12,
    503: 14,  # UNAVAILABLE
    505: 12,
}


def status_body(media: str, http_status: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code, message), encoded without googleapis-common-protos."""
    code = _RPC_CODES.get(http_status, 2)  # 2 = UNKNOWN
    if media == CT_PROTOBUF:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return json.dumps({"code": code, "message": message}).encode()


__all__ = [
    "CONTENT_TYPES",
    "CT_JSON",
    "CT_PROTOBUF",
    "Accepted",
    "Limits",
    "RequestRejected",
    "check_content_type",
    "decode",
    "decompress",
    "media_type",
    "read_request",
    "status_body",
    "success_body",
    "validate",
]
