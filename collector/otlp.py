"""OTLP/JSON ingest: files written by the OpenTelemetry Collector's file exporter.

The file exporter writes one ``ExportTraceServiceRequest`` per line, in the OTLP/JSON
encoding. That encoding differs from protobuf's canonical JSON mapping in one way that
matters here: trace and span ids are hex strings, not base64. Each line is therefore read
as plain JSON, its ids are checked and re-encoded as base64, and the result is parsed by
``google.protobuf.json_format`` into the real protobuf message (so every field is checked
against the OTLP schema); :func:`records_from_request` then turns the message into
:class:`~tooltrail.collector.normalize.SpanRecord` objects. The same function serves
protobuf bodies (a later HTTP receiver).

Ingest is all or nothing per run for bad input: every file is parsed and validated before
anything is landed, and a bad line raises :class:`~tooltrail.errors.IngestError` naming the
file, the line and what is wrong. A span that is valid OTLP but cannot be normalized (a
value the scrubber or the normalizer raises on) is set aside alone by the shared
:class:`~tooltrail.collector.pipeline.BatchPipeline`, as the collector does, and reported.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tooltrail import semconv as sc
from tooltrail.collector import jsontext
from tooltrail.collector.columnar import columns_of_records
from tooltrail.collector.normalize import Normalizer, SpanRecord
from tooltrail.collector.pipeline import BatchPipeline, RowHook, SetAside
from tooltrail.collector.writer import LandingError, ParquetSpanWriter
from tooltrail.errors import IngestError, StoreError
from tooltrail.redact import Redactor

TRACE_ID_BYTES: Final = 16
SPAN_ID_BYTES: Final = 8
# Rows landed per Parquet file when ingesting (bounds the Arrow table built per write).
INGEST_BATCH_ROWS: Final = 50_000

# OTLP/JSON field names (lowerCamelCase) whose values are hex ids.
_RESOURCE_SPANS: Final = "resourceSpans"
_SCOPE_SPANS: Final = "scopeSpans"
_SPANS: Final = "spans"
_LINKS: Final = "links"
_ID_FIELDS: Final = (("traceId", TRACE_ID_BYTES), ("spanId", SPAN_ID_BYTES))
_PARENT_SPAN_ID: Final = "parentSpanId"
# Requests for other signals, named in the error when one is ingested by mistake.
_OTHER_SIGNALS: Final = ("resourceLogs", "resourceMetrics", "resourceProfiles")

# OTLP enum numbers -> the OTel API names the normalizer lands. UNSPECIFIED kind is read as
# INTERNAL, as the OTLP spec allows.
_KINDS: Final = {
    0: "INTERNAL",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
_STATUS: Final = {0: "UNSET", 1: "OK", 2: "ERROR"}


# Given span ids, the (trace_id, span_id) pairs among them already landed.
AlreadyLanded = Callable[[list[str]], Iterable[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ingest run did."""

    files: int
    spans: int
    rows: int
    written: tuple[Path, ...] = ()
    skipped: int = 0  # spans already landed (or twice in the input): not landed again
    set_aside: tuple[SetAside, ...] = ()  # spans that could not be normalized: not landed


# --- protobuf message -> records -------------------------------------------------------


def _any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value (None when empty)."""
    # Most attribute values are strings, and the value is a oneof: a non-empty string_value
    # is the value, found with one accessor instead of WhichOneof + getattr (the collector
    # reads every attribute of every span through here).
    text = value.string_value
    if text:
        return text
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(_any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return _key_values(value.kvlist_value.values)
    return getattr(value, which)  # string / bool / int / double / bytes


def _key_values(pairs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in pairs}


def _hex_id(raw: bytes, size: int, where: str, *, optional: bool = False) -> str | None:
    if not raw and optional:
        return None
    if len(raw) != size:
        raise IngestError(f"{where}: expected a {size}-byte id, got {len(raw)} bytes")
    if not any(raw):
        raise IngestError(f"{where}: an all-zero id is invalid")
    return raw.hex()


def records_from_request(req: ExportTraceServiceRequest) -> list[SpanRecord]:
    """Every span of an OTLP trace request, as source-neutral records.

    Raises IngestError (naming the span's path in the request) for invalid ids or a span
    without a start time.
    """
    records: list[SpanRecord] = []
    for r, resource_spans in enumerate(req.resource_spans):
        # One mapping per resource, shared by its spans: the normalizer caches its JSON.
        resource = _key_values(resource_spans.resource.attributes)
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for i, span in enumerate(scope_spans.spans):
                trace_id, span_id, parent_id = _ids(span, r, s, i)
                status = span.status
                records.append(
                    SpanRecord(
                        trace_id=trace_id,
                        span_id=span_id,
                        parent_span_id=parent_id,
                        name=span.name,
                        kind=_KINDS.get(span.kind, "INTERNAL"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano or None,
                        status_code=_STATUS.get(status.code, "UNSET"),
                        status_message=status.message or None,
                        attributes=_key_values(span.attributes),
                        resource=resource,
                        events=[(e.name, _key_values(e.attributes)) for e in span.events],
                    )
                )
    return records


_ZERO_TRACE_ID: Final = bytes(TRACE_ID_BYTES)
_ZERO_SPAN_ID: Final = bytes(SPAN_ID_BYTES)


def _ids(span: Any, r: int, s: int, i: int) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id or None) in hex; IngestError naming the span's
    path in the request when one is invalid or the start time is missing. The common,
    valid case costs a few comparisons (the path is only formatted for an error)."""
    trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
    if (
        span.start_time_unix_nano != 0
        and len(trace_id) == TRACE_ID_BYTES
        and trace_id != _ZERO_TRACE_ID
        and len(span_id) == SPAN_ID_BYTES
        and span_id != _ZERO_SPAN_ID
        and (not parent or (len(parent) == SPAN_ID_BYTES and parent != _ZERO_SPAN_ID))
    ):
        return trace_id.hex(), span_id.hex(), parent.hex() if parent else None
    where = f"{_RESOURCE_SPANS}[{r}].{_SCOPE_SPANS}[{s}].{_SPANS}[{i}]"
    if span.start_time_unix_nano == 0:
        raise IngestError(f"{where}: startTimeUnixNano is missing")
    _hex_id(trace_id, TRACE_ID_BYTES, f"{where}.traceId")
    _hex_id(span_id, SPAN_ID_BYTES, f"{where}.spanId")
    _hex_id(parent, SPAN_ID_BYTES, f"{where}.parentSpanId", optional=True)
    raise AssertionError("unreachable: one of the checks above failed")  # pragma: no cover


# --- OTLP/JSON -> protobuf message -----------------------------------------------------


def _b64_id(
    value: Any, size: int, where: str, *, optional: bool = False, strict: bool = True
) -> str:
    """An OTLP/JSON id (hex, as the spec says; base64 also read) as protobuf-JSON base64.

    Not ``strict`` (the HTTP receiver), a missing id or hex of the wrong length is passed
    on as those bytes, for the per-span check to reject that span alone; only a value that
    cannot be bytes at all fails the request."""
    if value is None or value == "":
        if optional or not strict:
            return ""
        raise IngestError(f"{where}: missing")
    if not isinstance(value, str):
        raise IngestError(f"{where}: expected a hex string, got {type(value).__name__}")
    if len(value) == 4 * ((size + 2) // 3):
        # Protobuf's own JSON mapping writes base64; hex and base64 lengths never collide.
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise IngestError(f"{where}: {value!r} is neither hex nor base64") from None
    elif strict and len(value) != 2 * size:
        raise IngestError(f"{where}: expected {2 * size} hex digits, got {value!r}")
    else:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise IngestError(f"{where}: {value!r} is not hex") from None
    return base64.b64encode(raw).decode("ascii")


def _fix_ids(doc: dict[str, Any], strict: bool) -> None:
    """Rewrite the hex ids of an OTLP/JSON trace request as base64, in place."""
    for r, rs in enumerate(_list(doc, _RESOURCE_SPANS, "")):
        for s, ss in enumerate(_list(rs, _SCOPE_SPANS, f"{_RESOURCE_SPANS}[{r}]")):
            spans_at = f"{_RESOURCE_SPANS}[{r}].{_SCOPE_SPANS}[{s}]"
            for i, span in enumerate(_list(ss, _SPANS, spans_at)):
                where = f"{spans_at}.{_SPANS}[{i}]"
                _fix_span_ids(span, where, strict)
                for k, link in enumerate(_list(span, _LINKS, where)):
                    _fix_span_ids(link, f"{where}.{_LINKS}[{k}]", strict, links=True)


def _fix_span_ids(obj: Any, where: str, strict: bool, *, links: bool = False) -> None:
    if not isinstance(obj, dict):
        raise IngestError(f"{where}: expected an object, got {type(obj).__name__}")
    for name, size in _ID_FIELDS:
        obj[name] = _b64_id(obj.get(name), size, f"{where}.{name}", strict=strict)
    if not links and _PARENT_SPAN_ID in obj:
        obj[_PARENT_SPAN_ID] = _b64_id(
            obj[_PARENT_SPAN_ID],
            SPAN_ID_BYTES,
            f"{where}.{_PARENT_SPAN_ID}",
            optional=True,
            strict=strict,
        )


def _list(obj: Any, name: str, where: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise IngestError(f"{where or 'request'}: expected an object, got {type(obj).__name__}")
    value = obj.get(name, [])
    if not isinstance(value, list):
        at = f"{where}.{name}" if where else name
        raise IngestError(f"{at}: expected a list, got {type(value).__name__}")
    return value


def request_from_json(doc: Any, *, strict: bool = True) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` from one parsed OTLP/JSON document.

    Raises IngestError saying what is wrong (and where in the document). ``strict`` (file
    ingest) also refuses a document without spans and ids of the wrong length; the HTTP
    receiver reads ``{}`` as the empty request the OTLP spec says it is, and leaves
    wrong ids to its per-span check.
    """
    if not isinstance(doc, dict):
        raise IngestError(f"expected a JSON object, got {type(doc).__name__}")
    if _RESOURCE_SPANS not in doc:
        other = next((k for k in _OTHER_SIGNALS if k in doc), None)
        if other is not None:
            raise IngestError(f"holds {other}, not traces (no {_RESOURCE_SPANS})")
        if not strict:
            return ExportTraceServiceRequest()
        raise IngestError(f"not an ExportTraceServiceRequest: no {_RESOURCE_SPANS}")
    _fix_ids(doc, strict)
    req = ExportTraceServiceRequest()
    try:
        # Unknown fields are ignored, as OTLP/JSON receivers must (newer senders).
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise IngestError(f"not a valid ExportTraceServiceRequest: {e}") from e
    return req


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line.

    A file holding one pretty-printed request (not one per line) is read as a single
    document at line 1.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise IngestError(f"{path}: cannot read: {e.strerror or e}") from e
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            try:
                doc = jsontext.loads(line)
            except json.JSONDecodeError as e:
                if first:
                    whole = _whole_document(text)
                    if whole is not None:
                        yield 1, whole
                        return
                raise IngestError(f"not valid JSON: {e.msg} (column {e.colno})") from e
            except RecursionError as e:
                raise IngestError("not valid JSON: nested too deeply") from e
        except (IngestError, jsontext.HugeIntegerError) as e:  # the latter names the field
            raise IngestError(f"{path}:{number}: {e}") from e
        first = False
        yield number, doc


def _whole_document(text: str) -> Any:
    try:
        return jsontext.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def read_otlp_json(path: str | os.PathLike[str]) -> list[SpanRecord]:
    """Every span of an OTLP/JSON file (one ExportTraceServiceRequest per line).

    Raises IngestError naming the file, the line and what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        raise IngestError(f"{p}: is a directory, expected an OTLP/JSON file")
    records: list[SpanRecord] = []
    for number, doc in _documents(p):
        try:
            records.extend(records_from_request(request_from_json(doc)))
        except IngestError as e:
            raise IngestError(f"{p}:{number}: {e}") from e
        except RecursionError as e:  # json_format on pathological nesting
            raise IngestError(f"{p}:{number}: nested too deeply") from e
    return records


def ingest_files(
    paths: Sequence[str | os.PathLike[str]],
    data_dir: str | os.PathLike[str],
    normalizer: Normalizer | None = None,
    row_hook: RowHook | None = None,
    already_landed: AlreadyLanded | None = None,
) -> IngestReport:
    """Land the spans of OTLP/JSON files under ``data_dir``, all or nothing.

    Every file is parsed and validated first; if any is bad, IngestError is raised and
    nothing is landed. Then every span is normalized (``normalizer``, by default one with
    the redactor ``$TOOLTRAIL_REDACT`` selects: on unless turned off), ``row_hook`` is
    applied to each undecided tool row (it may change the row in place: the policy hook),
    and the rows are landed through :class:`ParquetSpanWriter`. This is the collector's
    :class:`BatchPipeline`: a span that makes a step raise is set aside alone
    (``IngestReport.set_aside``: ids and reason) and the others land.

    A span is landed once: one that appears twice in the input, or that
    ``already_landed`` (given the span ids, returning the landed ``(trace_id, span_id)``
    pairs) reports, is skipped and counted, so ingesting a file again adds nothing.
    """
    parsed = [read_otlp_json(path) for path in paths]
    records = [record for file_records in parsed for record in file_records]
    seen: set[tuple[str, str]] = set()
    if already_landed is not None:
        seen = set(already_landed(sorted({r.span_id for r in records})))
    fresh: list[SpanRecord] = []
    for record in records:
        key = (record.trace_id, record.span_id)
        if key not in seen:
            seen.add(key)
            fresh.append(record)
    norm = normalizer if normalizer is not None else Normalizer(Redactor.from_env())
    pipeline = BatchPipeline(norm, row_hook, provenance=sc.SOURCE_INGEST)
    tables: list[pa.Table] = []
    aside: list[SetAside] = []
    # The collector's batch pipeline: normalized a batch at a time, and a span that makes
    # any step raise is set aside alone instead of failing the run.
    for start in range(0, len(fresh), INGEST_BATCH_ROWS):
        result = pipeline.result(columns_of_records(fresh[start : start + INGEST_BATCH_ROWS]))
        tables.append(result.table)
        aside.extend(result.set_aside)
    written = _land(tables, data_dir)
    return IngestReport(
        files=len(paths),
        spans=len(records),
        rows=sum(t.num_rows for t in tables),
        written=tuple(written),
        skipped=len(records) - len(fresh),
        set_aside=tuple(aside),
    )


def _land(tables: list[pa.Table], data_dir: str | os.PathLike[str]) -> list[Path]:
    writer = ParquetSpanWriter(data_dir)
    written: list[Path] = []
    total = sum(t.num_rows for t in tables)
    landed = 0
    for table in tables:
        try:
            written.extend(writer.write_arrow(table))
        except LandingError as e:
            # Each file lands atomically, but earlier batches are already visible: say so.
            cause = e.__cause__
            why = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause or e
            landed += table.num_rows - e.unwritten.num_rows
            raise StoreError(
                f"cannot write to {data_dir}: {why}; "
                f"{landed} of {total} rows were landed before the failure"
            ) from e
        landed += table.num_rows
    return written


__all__ = [
    "INGEST_BATCH_ROWS",
    "IngestReport",
    "ingest_files",
    "read_otlp_json",
    "records_from_request",
    "request_from_json",
]
