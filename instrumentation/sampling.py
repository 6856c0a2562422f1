"""``ToolSpanSampler``: tool spans are the audit record, so they are always sampled.

OpenTelemetry's default sampler is parent-based: an agent serving a request whose upstream
chose not to sample (``traceparent`` flags ``00``), or a process run with
``OTEL_TRACES_SAMPLER=always_off`` / a low ``traceidratio``, would drop its tool spans, and
with them the record of every call and every DENY. This sampler records and samples every
span that starts with ``gen_ai.operation.name=execute_tool`` (the attribute tooltrail's
tool spans carry at start), keeping the parent's trace state, and hands every other span to
the configured sampler unchanged.

``configure()`` and the zero-code configurator wrap the sampler of the provider they build;
an application that builds its own provider can wrap its sampler the same way::

    TracerProvider(sampler=ToolSpanSampler(ParentBased(TraceIdRatioBased(0.1))))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    Sampler,
    SamplingResult,
    StaticSampler,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from tooltrail.semconv import GEN_AI_OPERATION_NAME, OP_EXECUTE_TOOL, TT_SESSION_OUTCOME

__all__ = ["ToolSpanSampler", "env_sampler", "keeps_tool_spans"]

_log = logging.getLogger("tooltrail.instrumentation")
_SAMPLE: Final = Decision.RECORD_AND_SAMPLE


class ToolSpanSampler(Sampler):
    """Samples every tool span; delegates every other span to ``delegate``.

    Args:
        delegate: the sampler for everything else (default: the one the ``OTEL_TRACES_SAMPLER``
            environment selects, as the SDK would pick).
    """

    def __init__(self, delegate: Sampler | None = None) -> None:
        self.delegate: Sampler = delegate if delegate is not None else env_sampler()

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        # Called for every span of the process: one dict lookup before delegating.
        # A session's end record is part of the record too (it says how the session ended).
        if attributes is not None and (
            attributes.get(GEN_AI_OPERATION_NAME) == OP_EXECUTE_TOOL
            or TT_SESSION_OUTCOME in attributes
        ):
            parent = get_current_span(parent_context).get_span_context()
            state = parent.trace_state if parent.is_valid else None
            return SamplingResult(_SAMPLE, attributes, state)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"ToolSpanSampler{{tools:AlwaysOnSampler,others:{self.delegate.get_description()}}}"


def env_sampler() -> Sampler:
    """The sampler the environment asks for (``OTEL_TRACES_SAMPLER`` / ``_ARG``), as the SDK
    builds it: through the ``opentelemetry_traces_sampler`` entry points, as the zero-code
    configurator does, else the SDK's built-in names (``parentbased_always_on`` default)."""
    # Both helpers are SDK-private; anything unexpected falls back to the next one.
    try:
        from opentelemetry.sdk._configuration import _get_sampler, _import_sampler

        found = _import_sampler(_get_sampler())
        if isinstance(found, Sampler):
            return found
    except Exception:  # the SDK's built-in names below are the fallback
        _log.debug("tooltrail: no sampler from the entry points", exc_info=True)
    try:
        from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

        return _get_from_env_or_default()
    except Exception:
        from opentelemetry.sdk.trace.sampling import ParentBased

        return ParentBased(ALWAYS_ON)


def keeps_tool_spans(sampler: Sampler) -> bool:
    """Whether ``sampler`` samples every tool span whatever its parent decided."""
    if sampler is ALWAYS_ON or isinstance(sampler, ToolSpanSampler):
        return True
    # Another StaticSampler(RECORD_AND_SAMPLE): its decision is only in its description.
    return isinstance(sampler, StaticSampler) and sampler.get_description() == "AlwaysOnSampler"
