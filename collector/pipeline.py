"""Normalize, then decide: the steps every landing path takes for a batch of spans.

The in-process exporter (SDK spans) and the collector (OTLP requests) both hand a batch to
:class:`BatchPipeline`, so a span lands identically whichever way it arrives: normalized
by :func:`~tooltrail.collector.columnar.normalize_batch`, then, with a policy, undecided
tool spans are decided after the fact by the single :func:`policy_row_hook`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
from tooltrail.schema import Row

if TYPE_CHECKING:
    from tooltrail.policy import Policy

_log = logging.getLogger(__name__)

RowHook = Callable[[Row], None]


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
        """The landed Arrow table of a batch, decided."""
        return columns_to_table(self.columns(src), len(src))


def _decide(hook: RowHook, columns: Columns, n: int) -> None:
    # The policy looks at undecided tool spans only: the others never become rows.
    types = columns["span_type"] or []
    decisions = columns["decision"] or [None] * n
    for i in range(n):
        if types[i] == SPAN_TYPE_TOOL and decisions[i] is None:
            row = row_at(columns, i)
            hook(row)
            set_row(columns, i, row, n)


__all__ = ["BatchPipeline", "RowHook", "load_row_hook", "policy_row_hook"]
