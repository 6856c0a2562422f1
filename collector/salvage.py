"""A protobuf trace request refused for one bad string: keep every span that is fine.

The protobuf decoder refuses a whole ``ExportTraceServiceRequest`` when any string field
in it is not valid UTF-8 (proto3 strings must be). One span with a bad attribute value
would then cost every span of the batch, the other agents' too when a gateway batches
them. :func:`salvage` walks the request's wire format down to the spans (three levels:
``resource_spans`` -> ``scope_spans`` -> ``spans``), decodes each span on its own and
drops only the ones that do not decode, with their ids and where they were, for the OTLP
``partial_success`` answer. A resource or scope that does not decode costs its own spans.

Only the decoder's UTF-8 refusal is salvaged (see ``receiver.decode``): other decode
errors (truncation, nesting past the decoder's limit) mean the body is malformed as a
whole, and it is refused as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

_LEN: Final = 2  # the length-delimited wire type
# The most fields a salvage walks before it refuses the request (see _Budget).
MAX_FIELDS: Final = 100_000


def _why(error: DecodeError) -> str:
    if "utf-8" in str(error).lower():
        return "a string is not valid UTF-8"
    return "does not decode"


@dataclass(frozen=True, slots=True)
class Salvaged:
    request: ExportTraceServiceRequest
    dropped: int
    first_error: str  # where the first dropped span was and why ("" when none)
    # The body decoded as it was (so it can be spooled as it is). False after a salvage,
    # even one that dropped no span (a bad schema URL is repaired, a bad unknown field
    # left out): the body itself would not decode again.
    whole: bool = False


class _Malformed(Exception):
    """The wire format itself is broken: nothing to salvage."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class SalvageRefused(Exception):
    """The request is too costly to salvage (the message says why): refuse it whole."""


class _Budget:
    """The fields one salvage may walk, all levels together: the walk is Python, on the
    request's thread, holding the GIL. 16 MiB of one-byte varint fields took 3.8 s; no
    real request needs anywhere near ``MAX_FIELDS`` fields (one per span, resource and
    scope, plus the ids of the first dropped span)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_FIELDS

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise SalvageRefused(
                f"a string is not valid UTF-8, and keeping the other spans would mean"
                f" walking more than {MAX_FIELDS} protobuf fields: send valid UTF-8, or"
                " fewer spans per request"
            )


def _fields(data: bytes, budget: _Budget) -> Iterator[tuple[int, bytes]]:
    """(field number, bytes) of each length-delimited field; other fields are skipped
    (each costs the budget all the same)."""
    pos, size = 0, len(data)
    while pos < size:
        budget.take()
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
            continue
        if wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        elif wire == _LEN:
            length, pos = _varint(data, pos)
            end = pos + length
        else:
            raise _Malformed  # groups: not in OTLP
        if end > size:
            raise _Malformed
        if wire == _LEN:
            yield number, data[pos:end]
        pos = end


def _span_ids(span: bytes, budget: _Budget) -> str:
    ids = {number: value.hex() for number, value in _fields(span, budget) if number in (1, 2)}
    return f"trace {ids.get(1, '?')} span {ids.get(2, '?')}"


class _Salvage:
    def __init__(self) -> None:
        self.request = ExportTraceServiceRequest()
        self.dropped = 0
        self.first_error = ""
        self.budget = _Budget()

    def drop(self, spans: list[bytes], where: str, why: str) -> None:
        if spans and not self.first_error:
            self.first_error = f"{where} ({_span_ids(spans[0], self.budget)}): {why}"
        self.dropped += len(spans)

    def resource_spans(self, r: int, data: bytes) -> None:
        try:
            whole = ResourceSpans.FromString(data)
        except DecodeError:
            pass
        else:
            self.request.resource_spans.add().CopyFrom(whole)
            return
        fields = list(_fields(data, self.budget))
        out = ResourceSpans()
        where = f"resourceSpans[{r}]"
        for number, value in fields:
            if number == 1:
                try:
                    out.resource.CopyFrom(Resource.FromString(value))
                except DecodeError as e:
                    spans = [s for n, v in fields if n == 2 for s in _spans_of(v, self.budget)]
                    self.drop(spans, f"{where}.resource", _why(e))
                    return
            elif number == 3:
                out.schema_url = value.decode("utf-8", "replace")
        for s, value in enumerate(v for n, v in fields if n == 2):
            self._scope_spans(out, f"{where}.scopeSpans[{s}]", value)
        if out.scope_spans:
            self.request.resource_spans.add().CopyFrom(out)

    def _scope_spans(self, out: ResourceSpans, where: str, data: bytes) -> None:
        try:
            whole = ScopeSpans.FromString(data)
        except DecodeError:
            pass
        else:
            out.scope_spans.add().CopyFrom(whole)
            return
        fields = list(_fields(data, self.budget))
        scope = ScopeSpans()
        for number, value in fields:
            if number == 1:
                try:
                    scope.scope.CopyFrom(InstrumentationScope.FromString(value))
                except DecodeError as e:
                    self.drop([v for n, v in fields if n == 2], f"{where}.scope", _why(e))
                    return
            elif number == 3:
                scope.schema_url = value.decode("utf-8", "replace")
        for i, value in enumerate(v for n, v in fields if n == 2):
            try:
                span = Span.FromString(value)  # decoded before add(): no empty span left
            except DecodeError as e:
                self.drop([value], f"{where}.spans[{i}]", _why(e))
            else:
                scope.spans.add().CopyFrom(span)
        if scope.spans:
            out.scope_spans.add().CopyFrom(scope)


def _spans_of(scope_spans: bytes, budget: _Budget) -> list[bytes]:
    return [v for n, v in _fields(scope_spans, budget) if n == 2]


def salvage(data: bytes) -> Salvaged | None:
    """The request without the spans that do not decode; None when the wire format itself
    is broken (then the whole body is malformed). Raises :class:`SalvageRefused` when the
    request has more than ``MAX_FIELDS`` fields to walk."""
    work = _Salvage()
    try:
        for r, value in enumerate(v for n, v in _fields(data, work.budget) if n == 1):
            work.resource_spans(r, value)
    except _Malformed:
        return None
    return Salvaged(work.request, work.dropped, work.first_error)


__all__ = ["MAX_FIELDS", "SalvageRefused", "Salvaged", "salvage"]
