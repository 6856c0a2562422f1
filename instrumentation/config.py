"""``configure()``: the one line that turns tooltrail on inside an agent process.

It sets up OpenTelemetry so tool spans land in the tooltrail data directory, installs the
enforcement settings shared by MCP and ``@tool`` spans, and instruments the MCP client:

* Tracer provider: when the application already set an SDK ``TracerProvider``, tooltrail
  adds its exporter to that provider (the application's own exporters keep working);
  otherwise it installs a new one whose resource names the agent (``service.name``).
  Either way the tooltrail exporter is added at most once per provider, also when the
  provider was built by ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=tooltrail``.
* Export: a ``BatchSpanProcessor`` with a queue of 65,536 spans (tool spans are the audit
  record; the SDK default of 2,048 drops spans under bursts) flushing every 500 ms, and
  flushed again at interpreter exit.
* Enforcement: off unless ``enforce=True`` or ``TOOLTRAIL_ENFORCE=1``. The policy is loaded
  once, here. A policy that cannot load does not raise: it is logged and every call is
  denied with rule ``policy-error`` (fail closed).
* Control plane: the data directory's ``control.sqlite``. REQUIRE_APPROVAL calls wait there
  for a person's decision (``ControlStoreBroker``; ``$TOOLTRAIL_COLLECTOR_URL`` selects the
  collector's HTTP broker instead), and, when enforcing, every call first checks whether
  its session was paused or canceled (see docs/APPROVALS.md).

The collector (and so pyarrow) is imported only inside ``configure``; nothing here imports
duckdb, polars or streamlit.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tooltrail import config
from tooltrail.instrumentation import _session, _spans
from tooltrail.instrumentation.broker import ApprovalBroker
from tooltrail.semconv import SERVICE_NAME

if TYPE_CHECKING:
    from tooltrail.collector.exporter import TooltrailSpanExporter

__all__ = ["Configuration", "configure"]

_log = logging.getLogger("tooltrail.instrumentation")

MAX_QUEUE_SIZE: Final = 65_536
SCHEDULE_DELAY_MILLIS: Final = 500
MAX_EXPORT_BATCH_SIZE: Final = 2_048
DEFAULT_SERVICE_NAME: Final = "tooltrail-agent"

_lock = threading.Lock()
# Providers tooltrail already exports from (by id; a provider lives for the process): the
# data directory, and the exporter and its processor when configure() added them (None:
# one found there).
_exporting: dict[int, tuple[Path, BatchSpanProcessor | None, TooltrailSpanExporter | None]] = {}


@dataclass(frozen=True, slots=True)
class Configuration:
    """What ``configure`` set up."""

    tracer_provider: TracerProvider
    data_dir: Path
    enforce: bool
    policy_version: str | None
    policy_error: str | None
    created_provider: bool
    mcp_instrumented: bool


def configure(
    data_dir: str | os.PathLike[str] | None = None,
    policy: Any = None,
    enforce: bool | None = None,
    agent_name: str | None = None,
    capture_results: bool | None = None,
    *,
    broker: ApprovalBroker | None = None,
    service_name: str | None = None,
    session_control: bool | None = None,
) -> Configuration:
    """Turn tooltrail on for this process: spans land in ``data_dir``, MCP is instrumented.

    Args:
        data_dir: where spans land (default ``$TOOLTRAIL_DATA``, else ``./tooltrail-data``).
        policy: a policy file path, mapping or loaded ``Policy`` (default ``$TOOLTRAIL_POLICY``).
            Enforced at call time when ``enforce``; otherwise the exporter decides after the
            fact (``tooltrail.enforced=false``).
        enforce: decide before each call and block DENY (default ``$TOOLTRAIL_ENFORCE``).
        agent_name: the agent's name for sessions that name none (default
            ``$TOOLTRAIL_AGENT_NAME``); also the ``service.name`` of a new provider.
        capture_results: keep a truncated result preview on spans (default
            ``$TOOLTRAIL_CAPTURE_RESULTS``, else off: results may hold file contents).
        broker: where REQUIRE_APPROVAL calls wait (default: the control store in
            ``data_dir``; the collector's HTTP broker when ``$TOOLTRAIL_COLLECTOR_URL`` is set).
        service_name: ``service.name`` of a new provider (default the agent name).
        session_control: check pause / cancel in the control store before each call
            (default ``$TOOLTRAIL_SESSION_CONTROL``, else on when enforcing).

    Calling it again replaces the settings; the exporter is not added twice.
    """
    root = config.data_dir(data_dir)
    if agent_name is not None:
        _session.set_default_agent_name(agent_name)
    with _lock:
        provider, created = _tracer_provider(service_name or agent_name)
        st = _spans.install(
            tracer_provider=provider,
            policy=policy,
            enforce=enforce,
            broker=broker,
            capture_results=capture_results,
            data_dir=root,
            session_control=session_control,
        )
        # The exporter decides, after the fact, tool spans nobody decided at call time
        # (e.g. made by other instrumentations); give it the policy already loaded.
        exporter_policy = st.policy if st.policy is not None else policy
        exporter = _add_exporter(provider, root, exporter_policy)
    instrumented = _instrument_mcp()
    # Not enforcing, the policy is loaded by the exporter only: report its error too.
    policy_error = st.policy_error or (exporter.policy_error if exporter is not None else None)
    return Configuration(
        tracer_provider=provider,
        data_dir=root,
        enforce=st.enforce,
        policy_version=st.policy_version,
        policy_error=policy_error,
        created_provider=created,
        mcp_instrumented=instrumented,
    )


def _tracer_provider(service_name: str | None) -> tuple[TracerProvider, bool]:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, False
    provider = TracerProvider(resource=_resource(service_name))
    trace.set_tracer_provider(provider)
    # set_tracer_provider refuses a second provider; use whichever won.
    actual = trace.get_tracer_provider()
    if isinstance(actual, TracerProvider) and actual is not provider:
        return actual, False
    return provider, True


def _resource(service_name: str | None) -> Resource:
    detected = Resource.create()
    name = str(detected.attributes.get(SERVICE_NAME, ""))
    if name and not name.startswith("unknown_service"):
        return detected  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win
    fallback = service_name or _session.default_agent_name() or DEFAULT_SERVICE_NAME
    return Resource.create({SERVICE_NAME: fallback})


def _add_exporter(
    provider: TracerProvider, root: Path, policy: Any
) -> TooltrailSpanExporter | None:
    """Add the tooltrail exporter to ``provider`` once; on later calls hand the one added
    here the new policy. Returns that exporter (None when one was already there)."""
    known = _exporting.get(id(provider))
    if known is not None:
        known_root, processor, exporter = known
        if known_root != root:
            _log.warning(
                "tooltrail: already exporting to %s; configure(data_dir=%s) cannot change it",
                known_root,
                root,
            )
        if processor is not None and exporter is not None:
            # Spans that ended under the old policy are decided by it, not the new one.
            processor.force_flush()
            exporter.set_policy(policy)
        return exporter
    if _has_tooltrail_exporter(provider):
        _exporting[id(provider)] = (root, None, None)
        return None
    from tooltrail.collector.exporter import TooltrailSpanExporter

    exporter = TooltrailSpanExporter(data_dir=root, policy=policy)
    processor = BatchSpanProcessor(
        exporter,
        max_queue_size=MAX_QUEUE_SIZE,
        schedule_delay_millis=SCHEDULE_DELAY_MILLIS,
        max_export_batch_size=MAX_EXPORT_BATCH_SIZE,
    )
    provider.add_span_processor(processor)
    _exporting[id(provider)] = (root, processor, exporter)
    # The SDK's own exit hook shuts the provider down; this one also covers a provider
    # the application built with shutdown_on_exit=False.
    atexit.register(processor.force_flush)
    return exporter


def _has_tooltrail_exporter(provider: TracerProvider) -> bool:
    """Whether the provider already lands spans with a ``TooltrailSpanExporter`` (best effort:
    the processor list is SDK-internal, so anything unexpected reads as "no")."""
    try:
        multi = getattr(provider, "_active_span_processor", None)
        processors: tuple[SpanProcessor, ...] = getattr(multi, "_span_processors", ())
        for p in processors:
            batch = getattr(p, "_batch_processor", None)
            exporter = getattr(batch, "_exporter", None) or getattr(p, "span_exporter", None)
            if type(exporter).__name__ == "TooltrailSpanExporter":
                return True
    except Exception:
        _log.debug("tooltrail: could not inspect the tracer provider", exc_info=True)
    return False


def _instrument_mcp() -> bool:
    if importlib.util.find_spec("mcp") is None:
        return False
    from tooltrail.instrumentation.mcp import McpInstrumentor

    instrumentor = McpInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # No arguments: the settings just installed stay in force.
        instrumentor.instrument()
    return bool(instrumentor.is_instrumented_by_opentelemetry)
