"""Batch normalization: a whole export batch becomes landed columns at once.

The exporter and the collector receive spans in batches (the SDK's BatchSpanProcessor hands
over up to 512; an OTLP request carries hundreds), and the spans of one batch nearly
always share a handful of attribute-name sets. :func:`normalize_batch` therefore works a
column at a time: for each name set it reads one attribute across all its spans with a
list comprehension and checks the whole column with one C-level test (``all(type(v) is
str ...)``, ``set(values) <= DECISIONS``) instead of converting every value on its own.
The result is the same as :meth:`Normalizer._build` span by span, only cheaper:

* The fast path takes a span only when nothing about it needs a per-span decision: every
  mapped attribute fits its column, every synonym equals the winning value, and its texts
  hold nothing the redactor could act on. Any other span (a value that does not fit, a
  differing synonym, a possible secret, OpenLLMetry / OpenInference payload keys) goes
  through ``Normalizer._build`` itself, so there is exactly one definition of the mapping
  and of redaction; ``tests/test_columnar.py`` checks the two agree on generated spans.
* The redaction pre-check runs on each column joined into one string; only a column that
  may hold a secret is searched further, by halving, to find the spans to scrub.
* The ``attributes`` JSON of a name set has fixed keys, so it is one ``%`` template filled
  with each value's JSON (the C encoder's own string escaping), in the sorted key order
  :func:`~tooltrail.collector.normalize.to_json` produces.

Output is a :data:`Columns` mapping (column name -> list, ``None`` for an all-null column),
which :func:`columns_to_table` turns into Arrow without a row-by-row transposition.

One file just past 600 lines on purpose: the batch path must stay beside the checks that
send a span to the per-span path, so that the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
from opentelemetry.sdk.trace import ReadableSpan

from tooltrail import semconv as sc
from tooltrail.collector.normalize import (
    _ELLIPSIS,
    _EMPTY_JSON,
    _FLAT,
    _INT64_MAX,
    _INT64_MIN,
    _KIND_NAMES,
    _PROBED_COLUMNS,
    _SCRUB_MARGIN,
    _STATUS_NAMES,
    REDACTIONS_MAX,
    SPAN_TYPE_TOOL,
    Converter,
    Normalizer,
    SpanRecord,
    _exception_type_of_events,
    _exception_type_of_pairs,
    _json_text,
    _to_any,
    _to_blast_radius,
    _to_bool,
    _to_decision,
    _to_gateway,
    _to_int,
    _to_str,
    _tool_from_span_name,
    classify,
    derive_summary,
    from_readable_span,
    to_json,
)
from tooltrail.redact import Redactor
from tooltrail.schema import BLAST_RADII, COLUMNS, DECISIONS, SPAN_SCHEMA, Row

Columns = dict[str, list[Any] | None]
"""Landed columns of a batch: every name in ``COLUMNS``; None stands for all-null.
Timestamps are int nanoseconds, as in a :data:`~tooltrail.schema.Row`."""

# Keys whose mapping depends on another attribute's value (OpenLLMetry's span kind decides
# whether traceloop.entity.* name a tool; input/output values are arguments only on tool
# spans): spans carrying them take the per-span path.
_PER_SPAN_KEYS: Final = frozenset(
    {
        sc.TRACELOOP_SPAN_KIND,
        sc.TRACELOOP_ENTITY_NAME,
        sc.TRACELOOP_ENTITY_INPUT,
        sc.TRACELOOP_ENTITY_OUTPUT,
        sc.OI_INPUT_VALUE,
        sc.OI_OUTPUT_VALUE,
    }
)
_DECISION_SET: Final = frozenset(DECISIONS)
_RADIUS_SET: Final = frozenset(BLAST_RADII)
_encode_str: Final[Callable[[str], str]] = json.encoder.encode_basestring
_SAMPLE: Final = 32
# Enum members are singletons: looking their names up by id skips Enum.__hash__, a Python
# function call per span per field.
_KIND_BY_ID: Final = {id(k): name for k, name in _KIND_NAMES.items()}
_STATUS_BY_ID: Final = {id(c): name for c, name in _STATUS_NAMES.items()}


@dataclass(slots=True)
class SpanColumns:
    """A batch of spans before normalization, one list per field (all of one length).

    ``resource_keys`` identify each span's resource (spans of one resource share the
    object, so its JSON is built once); ``exception_types`` come from exception events.
    """

    trace_id: list[str]
    span_id: list[str]
    parent_span_id: list[str | None]
    name: list[str]
    kind: list[str]
    start_ns: list[int]
    end_ns: list[int | None]
    status_code: list[str]
    status_message: list[str | None]
    attributes: list[Mapping[str, Any]]
    resource_keys: list[object]
    resources: list[Mapping[str, Any]]
    exception_types: list[str | None]

    def __len__(self) -> int:
        return len(self.name)


def columns_of_records(records: Sequence[SpanRecord]) -> SpanColumns:
    """Source-neutral records (OTLP ingest, tests) as batch input."""
    return SpanColumns(
        trace_id=[r.trace_id for r in records],
        span_id=[r.span_id for r in records],
        parent_span_id=[r.parent_span_id or None for r in records],
        name=[r.name for r in records],
        kind=[r.kind for r in records],
        start_ns=[r.start_ns for r in records],
        end_ns=[r.end_ns for r in records],
        status_code=[r.status_code for r in records],
        status_message=[r.status_message for r in records],
        attributes=[r.attributes for r in records],
        resource_keys=[r.resource for r in records],
        resources=[r.resource for r in records],
        exception_types=[_exception_type_of_pairs(r.events) if r.events else None for r in records],
    )


def columns_of_spans(spans: Sequence[ReadableSpan]) -> SpanColumns:
    """SDK spans as batch input, read from the SDK's own fields (as
    :meth:`Normalizer.normalize_readable` does); other ReadableSpan-likes via records."""
    try:
        ctxs = [s._context for s in spans]
        parents = [s._parent for s in spans]
        statuses = [s._status for s in spans]
        raws = [s._attributes for s in spans]
        resources = [s._resource for s in spans]
        events = [s._events for s in spans]
        names = [s._name for s in spans]
        kinds = [_KIND_BY_ID[id(s._kind)] for s in spans]
        starts = [s._start_time or 0 for s in spans]
        ends = [s._end_time for s in spans]
    except AttributeError:
        return columns_of_records([from_readable_span(s) for s in spans])
    if None in ctxs:
        name = names[ctxs.index(None)]
        raise ValueError(f"span {name!r} has no span context")
    return SpanColumns(
        # "%x" formatting: twice as fast as format() per id, same text.
        trace_id=["%032x" % c.trace_id for c in ctxs],  # type: ignore[union-attr]  # noqa: UP031
        span_id=["%016x" % c.span_id for c in ctxs],  # type: ignore[union-attr]  # noqa: UP031
        parent_span_id=[
            "%016x" % p.span_id if p is not None else None  # noqa: UP031
            for p in parents
        ],
        name=names,
        kind=kinds,
        start_ns=starts,
        end_ns=ends,
        status_code=[_STATUS_BY_ID[id(s.status_code)] for s in statuses],
        status_message=[s.description for s in statuses],
        # BoundedAttributes keeps a plain dict: read it without the wrapper's lock.
        attributes=[getattr(r, "_dict", None) or r or {} for r in raws],
        resource_keys=list(resources),
        resources=[r.attributes for r in resources],
        exception_types=[_exception_type_of_events(e) if e else None for e in events],
    )


# --- column conversion ---------------------------------------------------------------


def _only(values: list[Any], cls: type) -> bool:
    """Every value is exactly of type ``cls`` (not a subclass: bool is not an int here)."""
    return set(map(type, values)) == {cls}


def _convert(values: list[Any], conv: Converter) -> list[Any]:
    """``conv`` over a column, skipping the per-value calls when one C-level check shows
    every value already is what the converter would return."""
    if conv is _to_str:
        if _only(values, str) and all(values):
            return values
    elif conv is _to_int:
        if _only(values, int) and min(values) >= _INT64_MIN and max(values) <= _INT64_MAX:
            return values
    elif conv is _to_bool:
        if _only(values, bool):
            return values
    elif conv is _to_decision or conv is _to_blast_radius:
        vocab = _DECISION_SET if conv is _to_decision else _RADIUS_SET
        try:
            if set(values) <= vocab:
                return values
        except TypeError:  # an unhashable value: convert one by one
            pass
    elif conv is _to_any:
        return values
    elif conv is _to_gateway and _only(values, bool) and all(values):
        return [sc.GOVERNED_BY_GATEWAY] * len(values)
    return [conv(v) for v in values]


def _mark_none(values: list[Any], slow: list[bool]) -> None:
    """A value that does not fit its column stays in the span's attributes JSON: the
    span's leftover keys differ from its name set's, so it takes the per-span path."""
    if None in values:
        for j, v in enumerate(values):
            if v is None:
                slow[j] = True


def _first_of(
    attrs: list[Mapping[str, Any]], keys: tuple[str, ...], conv: Converter, slow: list[bool]
) -> list[Any]:
    """The first key's converted values; spans where a later synonym differs from it (and
    so stays in ``attributes``) or where it does not fit are marked slow."""
    raw = [a[keys[0]] for a in attrs]
    values = _convert(raw, conv)
    _mark_none(values, slow)
    for other in keys[1:]:
        synonym = [a[other] for a in attrs]
        # operator.eq, not list ==: the list comparison treats an object as equal to
        # itself (a NaN), the per-span path's == does not.
        if not all(map(operator.eq, synonym, raw)):
            for j, same in enumerate(map(operator.eq, synonym, raw)):
                if not same:
                    slow[j] = True
    return values


# --- redaction pre-check -------------------------------------------------------------


def _probe_text(value: Any) -> str | bool | None:
    """What the pre-check reads of a leftover value: its text, None for nothing, True when
    it must be walked (a mapping, bytes), exactly as ``Normalizer._needs_scrub``."""
    if type(value) is str:
        return value
    if isinstance(value, list | tuple):
        if not all(isinstance(v, _FLAT) for v in value):
            return True  # a mapping or a list inside: walk it
        return "\x00".join(v for v in value if isinstance(v, str))
    if isinstance(value, int | float):
        return None
    return True


def _flag_sensitive(
    redactor: Redactor, texts: list[Any], lo: int, hi: int, slow: list[bool]
) -> None:
    """Marks the spans in ``texts[lo:hi]`` whose text may hold a secret, halving the range
    while the joined text says so: a few flagged spans cost a few probes, not one each."""
    if not redactor.maybe_sensitive("\x00".join(filter(None, texts[lo:hi]))):
        return
    if hi - lo == 1:
        slow[lo] = True
        return
    mid = (lo + hi) // 2
    _flag_sensitive(redactor, texts, lo, mid, slow)
    _flag_sensitive(redactor, texts, mid, hi, slow)


# --- the batch -------------------------------------------------------------------------


def normalize_batch(normalizer: Normalizer, src: SpanColumns) -> Columns:
    """The landed columns of a batch; equal, row for row, to ``normalize`` per span.

    ``src`` is consumed: its lists may become output columns (no copy per batch) and be
    written to, so a caller must not use it afterwards.
    """
    n = len(src)
    out: Columns = dict.fromkeys(COLUMNS)
    if n == 0:
        for c in COLUMNS:
            out[c] = []
        return out
    names = [tuple(a) for a in src.attributes]
    first = names[0]
    if names.count(first) == n:
        groups: dict[tuple[str, ...], list[int]] = {first: list(range(n))}
    else:
        groups = {}
        for i, key in enumerate(names):
            groups.setdefault(key, []).append(i)
    whole = len(groups) == 1
    slow_rows: list[int] = []
    for key, idx in groups.items():
        part, slow = _group(normalizer, src, key, idx, whole)
        if whole:
            out = part
        else:
            for column, values in part.items():
                _scatter(out, column, values, idx, n)
        slow_rows.extend(i for i, s in zip(idx, slow, strict=True) if s)
    for i in slow_rows:
        row = normalizer._build(
            src.trace_id[i],
            src.span_id[i],
            src.parent_span_id[i],
            src.name[i],
            src.kind[i],
            src.start_ns[i],
            src.end_ns[i],
            src.status_code[i],
            src.status_message[i],
            src.attributes[i],
            src.resource_keys[i],
            src.resources[i],
            src.exception_types[i],
        )
        for column, value in row.items():
            if value is not None or out[column] is not None:
                _scatter(out, column, [value], [i], n)
    return out


def _scatter(out: Columns, column: str, values: list[Any] | None, idx: list[int], n: int) -> None:
    if values is None:
        return  # all null in this group: nothing to place
    target = out[column]
    if target is None:
        target = out[column] = [None] * n
    for i, v in zip(idx, values, strict=True):
        target[i] = v


def _pick(values: list[Any], idx: list[int], whole: bool) -> list[Any]:
    return values if whole else [values[i] for i in idx]


def _group(
    normalizer: Normalizer,
    src: SpanColumns,
    key: tuple[str, ...],
    idx: list[int],
    whole: bool,
) -> tuple[Columns, list[bool]]:
    """Columns for the spans of one attribute-name set, and which of them are slow."""
    m = len(idx)
    if _PER_SPAN_KEYS.intersection(key):
        return dict.fromkeys(COLUMNS), [True] * m
    plan = normalizer._plan(dict.fromkeys(key))
    attrs = _pick(src.attributes, idx, whole)
    slow = [False] * m
    out: Columns = {}
    consumed: set[str] = set()

    for k, column, conv in plan.simple:
        values = _convert([a[k] for a in attrs], conv)
        _mark_none(values, slow)
        out[column] = values
        consumed.add(k)
    _governed_by(out)

    span_names = _pick(src.name, idx, whole)
    trace_ids = _pick(src.trace_id, idx, whole)
    if (
        sc.GEN_AI_OPERATION_NAME in key
        and [a[sc.GEN_AI_OPERATION_NAME] for a in attrs].count(sc.OP_EXECUTE_TOOL) == m
    ):
        span_types = [SPAN_TYPE_TOOL] * m
    else:
        span_types = [classify(a) for a in attrs]

    # Without a session attribute the trace id stands in (below); it is not a text the
    # producer controls, so, as on the per-span path, it is not probed for secrets.
    sessions = _first_of(attrs, plan.session, _to_str, slow) if plan.session else None
    out["session_id"] = sessions
    consumed.update(plan.session)
    tools: list[Any] = (
        _first_of(attrs, plan.tool_name, _to_str, slow) if plan.tool_name else [None] * m
    )
    consumed.update(plan.tool_name)
    for j in range(m):
        if tools[j] is None and span_types[j] == SPAN_TYPE_TOOL:
            tools[j] = _tool_from_span_name(span_names[j], None)
    out["tool_name"] = tools
    # Without the per-span keys, the tool-only argument / result keys are the plain ones.
    raw_args = _first_of(attrs, plan.arguments, _to_any, slow) if plan.arguments else None
    raw_results = _first_of(attrs, plan.result, _to_any, slow) if plan.result else None
    consumed.update(plan.arguments, plan.result)
    for keys, column in (
        (plan.input_tokens, "input_tokens"),
        (plan.output_tokens, "output_tokens"),
    ):
        if keys:
            out[column] = _first_of(attrs, keys, _to_int, slow)
            consumed.update(keys)
    if plan.model:
        out["model"] = _first_of(attrs, plan.model, _to_str, slow)
        consumed.update(plan.model)

    redactions = _resources(normalizer, src, idx, whole, out)
    if sc.TT_REDACTIONS in key:
        consumed.add(sc.TT_REDACTIONS)
        at_call = [a[sc.TT_REDACTIONS] for a in attrs]
        redactions = [
            min(r + v, REDACTIONS_MAX) if type(v) is int and v > 0 else r
            for r, v in zip(redactions, at_call, strict=True)
        ]
    out["redactions"] = redactions

    parsed: list[Any] = [None] * m
    if raw_args is not None:
        pairs = [_json_text(v) for v in raw_args]
        out["arguments"] = [p[0] for p in pairs]
        parsed = [p[1] for p in pairs]
    rewritten = out.get("arguments_rewritten")
    if rewritten is not None:
        out["arguments_rewritten"] = [_json_text(v)[0] for v in rewritten]
    results: list[Any] | None = None
    if raw_results is not None:
        results = [v if isinstance(v, str) else to_json(v) for v in raw_results]
    out["status_message"] = [msg or None for msg in _pick(src.status_message, idx, whole)]
    out["name"] = span_names

    exceptions = _pick(src.exception_types, idx, whole)
    errors = out.get("error_type")
    if errors is not None:
        exceptions = [e if e is not None else x for e, x in zip(errors, exceptions, strict=True)]
    out["error_type"] = exceptions

    rest_keys = sorted(k for k in key if k not in consumed)
    redactor = normalizer.redactor
    if redactor is not None:
        if not redactor.all_keys_clean(rest_keys):
            return dict.fromkeys(COLUMNS), [True] * m
        _probe(normalizer, redactor, out, results, [[a[k] for a in attrs] for k in rest_keys], slow)

    if results is not None:
        cut = normalizer._preview_chars
        out["result_preview"] = [r[: cut - 1] + _ELLIPSIS if len(r) > cut else r for r in results]
    nothing = [None] * m
    out["action_summary"] = [
        derive_summary(tool, repo, branch, path, args)
        if given is None and kind == SPAN_TYPE_TOOL and tool is not None
        else given
        for given, kind, tool, repo, branch, path, args in zip(
            out.get("action_summary") or nothing,
            span_types,
            tools,
            out.get("target_repo") or nothing,
            out.get("target_branch") or nothing,
            out.get("target_path") or nothing,
            parsed,
            strict=True,
        )
    ]

    starts = _pick(src.start_ns, idx, whole)
    ends = _pick(src.end_ns, idx, whole)
    out["trace_id"] = trace_ids
    out["span_id"] = _pick(src.span_id, idx, whole)
    out["parent_span_id"] = _pick(src.parent_span_id, idx, whole)
    out["kind"] = _pick(src.kind, idx, whole)
    out["span_type"] = span_types
    out["start_time"] = starts
    out["end_time"] = ends
    out["duration_ms"] = [
        (e - s) / 1e6 if e is not None else None for s, e in zip(starts, ends, strict=True)
    ]
    out["status_code"] = _pick(src.status_code, idx, whole)
    out["session_id"] = (
        list(trace_ids)  # a copy: set_row writes columns back one by one
        if sessions is None
        else [s if s is not None else t for s, t in zip(sessions, trace_ids, strict=True)]
    )
    out["attributes"] = _attributes_json(rest_keys, attrs)
    return {c: out.get(c) for c in COLUMNS}, slow


def _governed_by(out: Columns) -> None:
    """``governed_by`` as ``Normalizer._build`` derives it: the gateway's mark, else
    ``instrumentation`` where the span carries a sequence number."""
    sequences = out.get("sequence")
    if sequences is None:
        return
    marks = out.get("governed_by")
    if marks is None:
        marks = [None] * len(sequences)
    out["governed_by"] = [
        g if g is not None else (sc.GOVERNED_BY_INSTRUMENTATION if q is not None else None)
        for g, q in zip(marks, sequences, strict=True)
    ]


def _resources(
    normalizer: Normalizer, src: SpanColumns, idx: list[int], whole: bool, out: Columns
) -> list[int]:
    """Fills ``resource`` and ``service_name``; returns the resource redaction counts."""
    keys = _pick(src.resource_keys, idx, whole)
    m = len(keys)
    first = keys[0]
    if all(k is first for k in keys):
        text, service, count = normalizer._resource(first, src.resources[idx[0]])
        out["resource"] = [text] * m
        out["service_name"] = [service] * m
        return [count] * m
    triples = [normalizer._resource(k, src.resources[i]) for k, i in zip(keys, idx, strict=True)]
    out["resource"] = [t[0] for t in triples]
    out["service_name"] = [t[1] for t in triples]
    return [t[2] for t in triples]


def _probe(
    normalizer: Normalizer,
    redactor: Redactor,
    out: Columns,
    results: list[str] | None,
    rest_columns: list[list[Any]],
    slow: list[bool],
) -> None:
    """Marks slow every span any of whose landed texts the redactor might change."""
    if redactor.maybe_sensitive(""):
        # Custom patterns: the pre-check cannot rule anything out, so every span is
        # scrubbed on the per-span path (probing would only add cost).
        slow[:] = [True] * len(slow)
        return
    texts: list[list[Any]] = [v for c in _PROBED_COLUMNS if (v := out.get(c)) is not None]
    if results is not None:
        window = normalizer._preview_chars + _SCRUB_MARGIN
        texts.append([r[:window] for r in results])
    for values in rest_columns:
        if _only(values, str):
            texts.append(values)
            continue
        probed = [_probe_text(v) for v in values]
        for j, p in enumerate(probed):
            if p is True:
                slow[j] = True
        texts.append([p if type(p) is str else None for p in probed])
    for column in texts:
        # A column of few values (agent, server, span name) is probed once per value; a
        # sample decides, as hashing every distinct argument text would cost more.
        if len(set(column[:_SAMPLE])) * 4 <= min(len(column), _SAMPLE):
            distinct = set(column)
            distinct.discard(None)
            if not redactor.maybe_sensitive("\x00".join(distinct)):
                continue
        _flag_sensitive(redactor, column, 0, len(column), slow)


def _attributes_json(rest_keys: list[str], attrs: list[Mapping[str, Any]]) -> list[str]:
    """The ``attributes`` JSON of spans whose leftovers are exactly ``rest_keys``."""
    m = len(attrs)
    if not rest_keys:
        return [_EMPTY_JSON] * m
    template = "{" + ",".join(_encode_str(k).replace("%", "%%") + ":%s" for k in rest_keys) + "}"
    encoded = []
    for k in rest_keys:
        values = [a[k] for a in attrs]
        if _only(values, str):
            encoded.append([_encode_str(v) for v in values])
        else:
            encoded.append([_encode_str(v) if type(v) is str else to_json(v) for v in values])
    return [template % t for t in zip(*encoded, strict=True)]


# --- output ----------------------------------------------------------------------------


def columns_to_table(columns: Columns, n: int) -> pa.Table:
    """Arrow in the landed schema, column by column (no per-row transposition)."""
    if n == 0:
        return SPAN_SCHEMA.empty_table()
    arrays: list[pa.Array] = []
    for field in SPAN_SCHEMA:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(n, field.type))
            continue
        first = values[0]
        if pa.types.is_timestamp(field.type):
            # Rows carry nanoseconds; microseconds are what DuckDB and polars read natively.
            arrays.append(
                pa.array([v // 1000 if v is not None else None for v in values], type=field.type)
            )
        elif values.count(first) == n:
            # One value for the whole batch (kind, decision, resource JSON, service, ...):
            # no per-value conversion. count() is cheap: equal values are mostly the
            # same object.
            arrays.append(pa.repeat(pa.scalar(first, type=field.type), n))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def row_at(columns: Columns, i: int) -> Row:
    """One span of a batch as a row (for hooks that work a row at a time)."""
    return {c: (v[i] if (v := columns[c]) is not None else None) for c in COLUMNS}


def set_row(columns: Columns, i: int, row: Row, n: int) -> None:
    """Writes a (changed) row back into the batch."""
    for c in COLUMNS:
        value = row.get(c)
        values = columns[c]
        if values is None:
            if value is None:
                continue
            values = columns[c] = [None] * n
        values[i] = value


__all__ = [
    "Columns",
    "SpanColumns",
    "columns_of_records",
    "columns_of_spans",
    "columns_to_table",
    "normalize_batch",
    "row_at",
    "set_row",
]
