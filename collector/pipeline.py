"""Normalize, then decide: the steps every landing path takes for a batch of spans.

The in-process exporter (SDK spans) and the collector (OTLP requests) both hand a batch to
:class:`BatchPipeline`, so a span lands identically whichever way it arrives: normalized
by :func:`~tooltrail.collector.columnar.normalize_batch`, then, with a policy, undecided
tool spans are decided after the fact by the single :func:`policy_row_hook`.

One bad span never costs another: when a batch fails (the scrubber, the normalizer, the
policy or the Arrow conversion raises on some value), it is retried span by span, and only
the spans that fail again are set aside, as :class:`SetAside` notes (ids and the kind of
failure, never a value: the value may be the very secret the scrubber choked on). The
good path pays for one shallow copy of the batch's lists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from tooltrail import config
from tooltrail.collector.columnar import (
    Columns,
    SpanColumns,
    columns_to_table,
    normalize_batch,
    row_at,
    set_row,
)
from tooltrail.collector.normalize import SPAN_TYPE_TOOL, Normalizer
from tooltrail.redact import Redactor
from tooltrail.schema import SPAN_SCHEMA, Row

if TYPE_CHECKING:
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

RowHook = Callable[[Row], None]

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

    __slots__ = ("_hook", "normalizer", "policy_error")

    def __init__(
        self, normalizer: Normalizer, hook: RowHook | None, policy_error: str | None = None
    ) -> None:
        self.normalizer = normalizer
        self._hook = hook
        self.policy_error = policy_error  # why the policy did not load, if it did not

    @classmethod
    def build(
        cls, policy: str | os.PathLike[str] | Policy | None, redact: bool | None
    ) -> BatchPipeline:
        """The landing pipeline of the exporter and the collector: ``redact`` None means
        ``$TOOLTRAIL_REDACT`` decides (on unless turned off); ``policy`` as in
        :func:`policy_row_hook`."""
        redactor = Redactor.from_env() if redact is None else Redactor(enabled=redact)
        return cls(Normalizer(redactor), *load_row_hook(policy))

    def with_policy(self, policy: str | os.PathLike[str] | Policy | None) -> BatchPipeline:
        """The same normalizer with another policy (as :func:`policy_row_hook` reads it)."""
        return BatchPipeline(self.normalizer, *load_row_hook(policy))

    def columns(self, src: SpanColumns) -> Columns:
        """The landed columns of a batch, decided."""
        columns = normalize_batch(self.normalizer, src)
        if self._hook is not None:
            _decide(self._hook, columns, len(src))
        return columns

    def table(self, src: SpanColumns) -> pa.Table:
        """The landed Arrow table of a batch, decided; spans that cannot land are set
        aside and logged (ids and reason only). See :meth:`result`."""
        result = self.result(src)
        for item in result.set_aside:
            _log.error("tooltrail: set aside a span that cannot land: %s", item.describe())
        return result.table

    def result(self, src: SpanColumns) -> BatchResult:
        """The landed table of a batch, and the spans set aside because they alone fail.

        The whole batch is tried first (the fast path); if anything in it raises, each
        span is tried alone, so a value that makes a step raise costs its own span only.
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
        return self._span_by_span(spare)

    def _table(self, src: SpanColumns, step: _Step | None = None) -> pa.Table:
        n = len(src)
        at = step if step is not None else _Step()
        at.name = "normalizing"
        columns = normalize_batch(self.normalizer, src)
        if self._hook is not None:
            at.name = "deciding (policy)"
            _decide(self._hook, columns, n)
        at.name = "converting to Arrow"
        return columns_to_table(columns, n)

    def _span_by_span(self, src: SpanColumns) -> BatchResult:
        tables: list[pa.Table] = []
        aside: list[SetAside] = []
        for i in range(len(src)):
            step = _Step()
            try:
                tables.append(self._table(_one(src, i), step))
            except _NOT_A_SPAN_FAULT:
                raise
            except Exception as e:
                # The type and the step only: an exception's text may quote the value.
                reason = f"{type(e).__name__} while {step.name}"
                aside.append(SetAside(str(src.trace_id[i]), str(src.span_id[i]), reason))
        table = pa.concat_tables(tables) if tables else SPAN_SCHEMA.empty_table()
        return BatchResult(table, tuple(aside))


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
    "BatchPipeline",
    "BatchResult",
    "RowHook",
    "SetAside",
    "load_row_hook",
    "policy_row_hook",
]
