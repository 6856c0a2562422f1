"""Normalize, then decide: the steps every landing path takes for a batch of spans.

The in-process exporter (SDK spans) and the collector (OTLP requests) both hand a batch to
:class:`BatchPipeline`, so a span lands identically whichever way it arrives: normalized
by :func:`~tooltrail.collector.columnar.normalize_batch`, then, with a policy, undecided
tool spans are decided after the fact by the single :func:`policy_row_hook`.

One bad span never costs another: when a batch fails (the scrubber, the normalizer, the
policy or the Arrow conversion raises on some value), it is retried span by span. A tool
span that fails again lands reduced (its identity and decision, arguments replaced by a
marker: a call never keeps itself out of the record); other spans that fail again, and
tool spans whose reduced row fails too, are set aside, as :class:`SetAside` notes (ids and
the kind of failure, never a value: the value may be the very secret the scrubber choked
on). The good path pays for one shallow copy of the batch's lists.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from tooltrail import config
from tooltrail import semconv as sc
from tooltrail.collector.columnar import (
    Columns,
    SpanColumns,
    columns_to_table,
    normalize_batch,
    row_at,
    set_row,
)
from tooltrail.collector.normalize import SPAN_TYPE_TOOL, Normalizer, classify
from tooltrail.redact import Redactor
from tooltrail.schema import SPAN_SCHEMA, Row
from tooltrail.semconv import (
    DROPPED_OTHER_SPANS,
    DROPPED_SPANS_NAME,
    DROPPED_TOOL_SPANS,
)

if TYPE_CHECKING:
    from tooltrail.collector.owners import SessionOwners
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

RowHook = Callable[[Row], None]

# The span ids of the spans a ``tooltrail.dropped_spans`` row counts as set aside (at most
# _MAX_COUNTED_IDS of them): an auditor can tell which calls are missing.
SET_ASIDE_SPAN_IDS: Final = "tooltrail.dropped.set_aside_span_ids"
_MAX_COUNTED_IDS: Final = 100
_ids: Final = RandomIdGenerator()

# Not a span's fault: retrying span by span would only fail 512 times (and mark the whole
# batch as bad data). They propagate; the caller retries the batch or keeps it.
_NOT_A_SPAN_FAULT: Final = (MemoryError, OSError)


@dataclass(frozen=True, slots=True)
class SetAside:
    """A span that could not land: which one and at what step, never any of its values."""

    trace_id: str
    span_id: str
    reason: str

    def describe(self) -> str:
        return f"trace {self.trace_id or '?'} span {self.span_id or '?'}: {self.reason}"

    def as_json(self) -> dict[str, str]:
        return {"trace_id": self.trace_id, "span_id": self.span_id, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The landed table of a batch and the spans set aside from it."""

    table: pa.Table
    set_aside: tuple[SetAside, ...] = ()


def policy_row_hook(policy: str | os.PathLike[str] | Policy | None) -> RowHook | None:
    """The exporter's single policy hook: decide tool rows that carry no decision yet.

    ``policy`` is a path, a loaded ``Policy`` or None (then ``$TOOLTRAIL_POLICY``; no policy
    at all means no hook). A policy that cannot load never fails open: rows are marked
    ``policy_rule="policy-error"`` with a null decision, and the error is logged.
    """
    return load_row_hook(policy)[0]


def load_row_hook(
    policy: str | os.PathLike[str] | Policy | None,
) -> tuple[RowHook | None, str | None]:
    """:func:`policy_row_hook` and the load error (None when the policy loaded, or when
    there is none)."""
    from tooltrail.policy import Policy, apply_to_row, load_policy

    source: Any = policy if policy is not None else os.environ.get(config.ENV_POLICY) or None
    if source is None:
        return None, None
    if isinstance(source, Policy):
        loaded: Policy = source
    else:
        try:
            loaded = load_policy(source)
        except Exception as e:  # PolicyError, or anything unexpected: fail closed
            message = str(e)
            _log.error("tooltrail: policy %s could not be loaded: %s", source, message)

            def mark_error(row: Row) -> None:
                apply_to_row(None, row, error=message)

            return mark_error, message

    def decide(row: Row) -> None:
        apply_to_row(loaded, row)

    return decide, None


class BatchPipeline:
    """A normalizer and an optional row hook (the policy), applied to whole batches."""

    __slots__ = ("_hook", "normalizer", "owners", "policy_error", "provenance")

    def __init__(
        self,
        normalizer: Normalizer,
        hook: RowHook | None,
        policy_error: str | None = None,
        *,
        provenance: str = sc.SOURCE_EXPORTER,
        owners: SessionOwners | None = None,
    ) -> None:
        self.normalizer = normalizer
        self._hook = hook
        self.policy_error = policy_error  # why the policy did not load, if it did not
        # Who lands through this pipeline (the `source` column): PROVENANCES.
        self.provenance = provenance
        # Which agent holds each session (the collector with access control): a span an
        # agent's credential sends into another agent's session lands claimed.
        self.owners = owners

    @classmethod
    def build(
        cls,
        policy: str | os.PathLike[str] | Policy | None,
        redact: bool | None,
        provenance: str = sc.SOURCE_EXPORTER,
        owners: SessionOwners | None = None,
    ) -> BatchPipeline:
        """The landing pipeline of the exporter and the collector: ``redact`` None means
        ``$TOOLTRAIL_REDACT`` decides (on unless turned off); ``policy`` as in
        :func:`policy_row_hook`; ``provenance`` one of PROVENANCES; ``owners`` the
        collector's session owners."""
        redactor = Redactor.from_env() if redact is None else Redactor(enabled=redact)
        return cls(
            Normalizer(redactor), *load_row_hook(policy), provenance=provenance, owners=owners
        )

    def with_policy(self, policy: str | os.PathLike[str] | Policy | None) -> BatchPipeline:
        """The same normalizer with another policy (as :func:`policy_row_hook` reads it)."""
        return BatchPipeline(
            self.normalizer,
            *load_row_hook(policy),
            provenance=self.provenance,
            owners=self.owners,
        )

    def columns(self, src: SpanColumns) -> Columns:
        """The landed columns of a batch, decided."""
        n = len(src)
        senders = _senders(src, self.provenance)
        columns = normalize_batch(self.normalizer, src)
        claimed = _decided(columns, n)
        if self._hook is not None:
            _decide(self._hook, columns, n)
        stamp_provenance(columns, n, self.provenance, senders, claimed, self.owners)
        return columns

    def table(self, src: SpanColumns) -> pa.Table:
        """The landed Arrow table of a batch, decided; spans that cannot land are set
        aside, logged (ids and reason only) and counted in a landed
        ``tooltrail.dropped_spans`` row: the in-process exporter has no quarantine, so the
        count lands with the batch, where an auditor sees it. See :meth:`result`."""
        result = self.result(src, count_set_aside=True)
        for item in result.set_aside:
            _log.error("tooltrail: set aside a span that cannot land: %s", item.describe())
        return result.table

    def result(self, src: SpanColumns, *, count_set_aside: bool = False) -> BatchResult:
        """The landed table of a batch, and the spans set aside because they alone fail.

        The whole batch is tried first (the fast path); if anything in it raises, each
        span is tried alone, so a value that makes a step raise costs its own span only.
        With ``count_set_aside``, a ``tooltrail.dropped_spans`` row counting the spans set
        aside lands in the table too (see :func:`_set_aside_count`).
        """
        spare = _copy(src)  # normalize_batch consumes its input
        try:
            return BatchResult(self._table(src))
        except _NOT_A_SPAN_FAULT:
            raise
        except Exception as e:
            _log.warning(
                "tooltrail: a batch of %d spans failed (%s): landing it span by span",
                len(spare),
                type(e).__name__,
            )
        result = self._span_by_span(spare)
        if not (count_set_aside and result.set_aside):
            return result
        # spare is intact: _span_by_span normalized one-span copies of it. The count keeps
        # the first set-aside span's service name; if even that fails, it goes without.
        for service in (True, False):
            try:
                count = self._table(_set_aside_count(spare, result.set_aside, service))
            except _NOT_A_SPAN_FAULT:
                raise
            except Exception:
                continue
            return BatchResult(pa.concat_tables([result.table, count]), result.set_aside)
        _log.error("tooltrail: could not count %d set-aside spans", len(result.set_aside))
        return result  # pragma: no cover - the count row without a resource is ours alone

    def _table(self, src: SpanColumns, step: _Step | None = None) -> pa.Table:
        n = len(src)
        at = step if step is not None else _Step()
        at.name = "normalizing"
        senders = _senders(src, self.provenance)
        columns = normalize_batch(self.normalizer, src)
        claimed = _decided(columns, n)
        if self._hook is not None:
            at.name = "deciding (policy)"
            _decide(self._hook, columns, n)
        stamp_provenance(columns, n, self.provenance, senders, claimed, self.owners)
        at.name = "converting to Arrow"
        return columns_to_table(columns, n)

    def _span_by_span(self, src: SpanColumns) -> BatchResult:
        tables: list[pa.Table] = []
        aside: list[SetAside] = []
        for i in range(len(src)):
            step = _Step()
            try:
                tables.append(self._table(_one(src, i), step))
                continue
            except _NOT_A_SPAN_FAULT:
                raise
            except Exception as e:
                # The type and the step only: an exception's text may quote the value.
                reason = f"{type(e).__name__} while {step.name}"
            reduced = self._reduced(src, i, reason)
            if reduced is not None:
                tables.append(reduced)
            else:
                aside.append(SetAside(str(src.trace_id[i]), str(src.span_id[i]), reason))
        table = pa.concat_tables(tables) if tables else SPAN_SCHEMA.empty_table()
        return BatchResult(table, tuple(aside))

    def _reduced(self, src: SpanColumns, i: int, reason: str) -> pa.Table | None:
        """The minimal row of a tool span whose full normalization failed, or None.

        A tool span is the audit record of a call: a value that makes a step raise must
        not keep the call out of the record. Its row keeps the ids, times, status, tool,
        session, agent and the decision attributes as sent (scalars only, strings
        capped); the arguments become :data:`REDUCED_ARGUMENTS`, the result is left out,
        and :data:`REDUCED_ATTRIBUTE` (in ``attributes``) says why. The policy is not run
        on it: it would judge the marker, not the call. Other spans are set aside.
        """
        try:
            attrs = src.attributes[i]
            if classify(attrs) != SPAN_TYPE_TOOL:
                return None
            one = _one(src, i)
            one.attributes = [_reduced_attributes(attrs, reason)]
            one.resources = [_reduced_attributes(src.resources[i], reason="")]
            one.resource_keys = [object()]  # not the batch's resource: its JSON differs
            one.exception_types = [None]
            senders = _senders(one, self.provenance)
            columns = normalize_batch(self.normalizer, one)
            stamp_provenance(
                columns, 1, self.provenance, senders, _decided(columns, 1), self.owners
            )
            return columns_to_table(columns, 1)
        except _NOT_A_SPAN_FAULT:
            raise
        except Exception:
            return None


# The arguments of a tool span landed reduced (see BatchPipeline._reduced), and the
# attribute (in the landed ``attributes`` JSON) saying why it was reduced.
REDUCED_ARGUMENTS: Final = "[REDACTED:unparseable]"
REDUCED_ATTRIBUTE: Final = "tooltrail.reduced"
# What a reduced row keeps: who, what and the decision, never a payload.
_REDUCED_KEYS: Final = frozenset(
    {
        sc.GEN_AI_OPERATION_NAME,
        sc.GEN_AI_TOOL_NAME,
        sc.GEN_AI_TOOL_CALL_ID,
        sc.GEN_AI_CONVERSATION_ID,
        sc.GEN_AI_AGENT_NAME,
        sc.GEN_AI_AGENT_ID,
        sc.MCP_METHOD_NAME,
        sc.MCP_SESSION_ID,
        sc.MCP_SERVER_NAME,
        sc.SESSION_ID,
        sc.SERVICE_NAME,
        sc.ERROR_TYPE,
        sc.OPENINFERENCE_SPAN_KIND,
        sc.OI_TOOL_NAME,
        sc.TRACELOOP_SPAN_KIND,
        sc.TRACELOOP_ENTITY_NAME,
        sc.TRACELOOP_SESSION_ID,
        sc.TT_SESSION_ID,
        sc.TT_PARENT_SESSION_ID,
        sc.TT_DECISION,
        sc.TT_POLICY_RULE,
        sc.TT_POLICY_VERSION,
        sc.TT_POLICY_REASON,
        sc.TT_ENFORCED,
        sc.TT_BLAST_RADIUS,
        sc.TT_SEQUENCE,
        sc.TT_APPROVAL_ID,
        sc.TT_APPROVAL_STATUS,
        sc.TT_APPROVAL_DECIDED_BY,
        sc.TT_APPROVAL_WAIT_MS,
        sc.TT_TRIGGER,
        # who governed the call, and whether its tool had changed (the gateway's marks)
        sc.TT_GATEWAY,
        sc.TT_MCP_CLIENT_NAME,
        sc.TT_MCP_CLIENT_VERSION,
        sc.TT_TOOL_DEFINITION_CHANGED,
        sc.TT_TOOL_DEFINITION_HASH,
    }
)
_REDUCED_MAX_CHARS: Final = 1024


def _reduced_attributes(attrs: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The kept attributes of a reduced row: scalars of :data:`_REDUCED_KEYS`, strings cut
    to ``_REDUCED_MAX_CHARS``; with a ``reason``, the arguments marker and the flag."""
    out: dict[str, Any] = {}
    for key in _REDUCED_KEYS:
        value = attrs.get(key)
        if type(value) is str:
            out[key] = value[:_REDUCED_MAX_CHARS]
        elif type(value) in (bool, int, float):
            out[key] = value
    if reason:
        out[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = REDUCED_ARGUMENTS
        out[REDUCED_ATTRIBUTE] = reason
    return out


def _set_aside_count(
    src: SpanColumns, items: tuple[SetAside, ...], service: bool = True
) -> SpanColumns:
    """One ``tooltrail.dropped_spans`` row (as the span processor lands for queue drops)
    counting the spans of ``src`` set aside: tool and other spans, their span ids, and
    ``start_time``/``end_time`` the first and last set-aside span's end; with ``service``,
    the first set-aside span's ``service.name``."""
    aside = {(item.trace_id, item.span_id) for item in items}
    tool = other = 0
    ends: list[int] = []
    resource: dict[str, Any] = {}
    for i in range(len(src)):
        if (str(src.trace_id[i]), str(src.span_id[i])) not in aside:
            continue
        if service and not ends:  # the first's (the rest of its resource may be bad)
            resource = _reduced_attributes(src.resources[i], reason="")
        try:
            is_tool = classify(src.attributes[i]) == SPAN_TYPE_TOOL
        except Exception:  # the span's attributes are what failed: count it as a tool call
            is_tool = True
        tool, other = (tool + 1, other) if is_tool else (tool, other + 1)
        end = src.end_ns[i]
        ends.append(end if type(end) is int else src.start_ns[i])
    ends = ends or [time.time_ns()]
    attributes: dict[str, Any] = {
        DROPPED_TOOL_SPANS: tool,
        DROPPED_OTHER_SPANS: other,
        SET_ASIDE_SPAN_IDS: [item.span_id for item in items[:_MAX_COUNTED_IDS]],
    }
    return SpanColumns(
        trace_id=[_ids.generate_trace_id().to_bytes(16, "big").hex()],
        span_id=[_ids.generate_span_id().to_bytes(8, "big").hex()],
        parent_span_id=[None],
        name=[DROPPED_SPANS_NAME],
        kind=["INTERNAL"],
        start_ns=[min(ends)],
        end_ns=[max(ends)],
        status_code=["UNSET"],
        status_message=[None],
        attributes=[attributes],
        resource_keys=[object()],
        resources=[resource],
        exception_types=[None],
    )


class _Step:
    """The landing step a batch is at (named in a set-aside span's reason)."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = ""


_SRC_FIELDS: Final = SpanColumns.__slots__


def _copy(src: SpanColumns) -> SpanColumns:
    """A shallow copy: the lists are new, the values (attribute mappings too) shared."""
    return SpanColumns(**{f: list(getattr(src, f)) for f in _SRC_FIELDS})


def _one(src: SpanColumns, i: int) -> SpanColumns:
    return SpanColumns(**{f: [getattr(src, f)[i]] for f in _SRC_FIELDS})


# Who lands through a pipeline: the in-process exporter, `tooltrail ingest`, or the
# collector (then each row's sender is the stamp on its resource, sc.TT_COLLECTOR_SENDER).
PROVENANCE_COLLECTOR: Final = "collector"
PROVENANCES: Final = (sc.SOURCE_EXPORTER, sc.SOURCE_INGEST, PROVENANCE_COLLECTOR)
# ``spool-unauthenticated:<stamp>``: landed from a spool record without a MAC (a TTSPOOL1
# segment, collector/spool.py): what the stamp said, not believed (its decisions claimed).
SOURCE_UNAUTHENTICATED_SPOOL: Final = "spool-unauthenticated:"


def _senders(src: SpanColumns, provenance: str) -> list[Any] | None:
    """Each span's sender as the collector stamped it, the stamp taken out of its
    resource (it lands as ``source``, not in the ``resource`` JSON). Read before
    normalize_batch consumes ``src``."""
    if provenance != PROVENANCE_COLLECTOR:
        return None
    senders: list[Any] = []
    stripped: dict[int, Mapping[str, Any]] = {}  # spans of one resource share one copy
    resources: list[Mapping[str, Any]] = []
    for r in src.resources:
        senders.append(r.get(sc.TT_COLLECTOR_SENDER))
        copy = stripped.get(id(r))
        if copy is None:
            copy = {k: v for k, v in r.items() if k != sc.TT_COLLECTOR_SENDER}
            stripped[id(r)] = copy
        resources.append(copy)
    src.resources = resources
    return senders


def _decided(columns: Columns, n: int) -> list[bool]:
    """Which rows carry a decision from the span itself (before the policy hook)."""
    return [d is not None for d in (columns["decision"] or [None] * n)]


def stamp_provenance(
    columns: Columns,
    n: int,
    provenance: str,
    senders: list[Any] | None,
    from_span: list[bool],
    owners: SessionOwners | None = None,
) -> None:
    """Fill ``source`` and ``verified``.

    A decision is tooltrail's (verified) when tooltrail made it: the in-process exporter
    (the instrumentation or the gateway decided), an agent holding an agent credential
    (the collector stamped ``agent:<name>``) for spans of that agent in a session it holds,
    or the policy run here. A decision the span carried in from an unauthenticated sender
    (``otlp``), a file (``ingest``), a spool record without a MAC
    (``spool-unauthenticated:<stamp>``), an agent credential speaking for another agent,
    or one sending into a session another agent holds (``owners``: its ``source`` becomes
    ``agent:<sender>/session-of:<holder>``) is only claimed (false). Rows without a
    decision: null.
    """
    if senders is None:
        sources: list[str] = [provenance] * n
    else:
        sources = [_source(s) for s in senders]
    decisions = columns["decision"] or [None] * n
    agents = list(columns["agent_name"] or [None] * n)
    held = _held(columns, n, sources, owners) if owners is not None and senders else {}
    session_ids = columns["session_id"] or [None] * n
    filled = False
    verified: list[bool | None] = []
    for i, (source, decision, spanned) in enumerate(
        zip(sources, decisions, from_span, strict=True)
    ):
        credential_agent = (
            source[len(sc.SOURCE_AGENT_PREFIX) :]
            if source.startswith(sc.SOURCE_AGENT_PREFIX)
            else None
        )
        if credential_agent is not None and agents[i] is None:
            agents[i] = credential_agent  # a span that names no agent is its sender's
            filled = True
        holder = held.get(session_ids[i]) if credential_agent is not None else None
        foreign = holder is not None and holder != credential_agent
        if foreign:
            # Sent into a session another agent holds: the row says whose it is.
            sources[i] = f"{source}{sc.SOURCE_SESSION_OF}{holder}"
        if decision is None:
            verified.append(None)
        elif not spanned:
            verified.append(True)  # the policy run here decided it
        elif source in (sc.SOURCE_OTLP, sc.SOURCE_INGEST) or source.startswith(
            SOURCE_UNAUTHENTICATED_SPOOL
        ):
            verified.append(False)  # an unauthenticated sender, a file, a MAC-less record
        elif credential_agent is None:
            verified.append(True)  # the in-process exporter: tooltrail decided it
        else:
            # An agent's credential vouches for that agent's own calls only: a span that
            # names another agent is a claim (security review: forged records of others).
            verified.append(agents[i] == credential_agent and not foreign)
    if filled:
        columns["agent_name"] = agents
    columns["source"] = sources
    columns["verified"] = verified


def _source(stamp: Any) -> str:
    """A collector-stamped sender as a row's ``source``: ``agent:<name>`` and
    ``spool-unauthenticated:<stamp>`` as stamped, anything else ``otlp``."""
    if isinstance(stamp, str) and stamp.startswith(
        (sc.SOURCE_AGENT_PREFIX, SOURCE_UNAUTHENTICATED_SPOOL)
    ):
        return stamp
    return sc.SOURCE_OTLP


def _held(columns: Columns, n: int, sources: list[str], owners: SessionOwners) -> dict[Any, str]:
    """The holder of each held session an agent's credential sent rows of (one store
    round trip at most per batch, none once its sessions are cached)."""
    session_ids = columns["session_id"] or [None] * n
    trace_ids = columns["trace_id"] or [None] * n
    prefix = sc.SOURCE_AGENT_PREFIX
    wanted = [
        (sid, source[len(prefix) :], sid != trace_id)
        for source, sid, trace_id in zip(sources, session_ids, trace_ids, strict=True)
        if sid is not None and source.startswith(prefix)
    ]
    return owners.held(wanted) if wanted else {}


def _decide(hook: RowHook, columns: Columns, n: int) -> None:
    # The policy looks at undecided tool spans only: the others never become rows.
    types = columns["span_type"] or []
    decisions = columns["decision"] or [None] * n
    for i in range(n):
        if types[i] == SPAN_TYPE_TOOL and decisions[i] is None:
            row = row_at(columns, i)
            hook(row)
            set_row(columns, i, row, n)


__all__ = [
    "PROVENANCES",
    "PROVENANCE_COLLECTOR",
    "REDUCED_ARGUMENTS",
    "REDUCED_ATTRIBUTE",
    "SET_ASIDE_SPAN_IDS",
    "SOURCE_UNAUTHENTICATED_SPOOL",
    "BatchPipeline",
    "BatchResult",
    "RowHook",
    "SetAside",
    "load_row_hook",
    "policy_row_hook",
    "stamp_provenance",
]
