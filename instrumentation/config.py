"""``configure()``: the one line that turns tooltrail on inside an agent process.

It sets up OpenTelemetry so tool spans land in the tooltrail data directory, installs the
enforcement settings shared by MCP and ``@tool`` spans, and instruments the MCP client:

* Tracer provider: when the application already set an SDK ``TracerProvider``, tooltrail
  adds its exporter to that provider (the application's own exporters keep working);
  otherwise it installs a new one whose resource names the agent (``service.name``).
  Either way the tooltrail exporter is added at most once per provider, also when the
  provider was built by ``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=tooltrail``.
* Sampling: a provider built here samples every tool span (``ToolSpanSampler`` around the
  sampler ``OTEL_TRACES_SAMPLER`` selects); an application's own provider keeps its sampler,
  with a warning when that sampler may drop tool spans.
* Export: a ``TooltrailSpanProcessor`` (instrumentation/processor.py): tool spans get
  back-pressure instead of being dropped by a full queue (a drop after its bounded wait is
  counted in the landed data), and a span lands within 0.5 s of ending at any call rate;
  flushed again, exporter included, at interpreter exit and when a ``multiprocessing``
  child started by fork exits normally (such children end with ``os._exit``, skipping
  ``atexit``).
* Data directory: the one spans land in. When this provider already exports to another
  (``opentelemetry-instrument``'s exporter, an earlier ``configure``), that one wins, for
  the control store too, with a warning naming both.
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
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from tooltrail import config
from tooltrail.instrumentation import _session, _settings
from tooltrail.instrumentation.broker import ApprovalBroker
from tooltrail.instrumentation.processor import TooltrailSpanProcessor
from tooltrail.instrumentation.sampling import ToolSpanSampler, keeps_tool_spans
from tooltrail.semconv import GEN_AI_OPERATION_NAME, OP_EXECUTE_TOOL, SERVICE_NAME

if TYPE_CHECKING:
    from tooltrail.collector.exporter import TooltrailSpanExporter

__all__ = ["Configuration", "configure", "service_name_from_environment"]

_log = logging.getLogger("tooltrail.instrumentation")

DEFAULT_SERVICE_NAME: Final = "tooltrail-agent"

# multiprocessing runs a child's exit finalizers highest priority first; a queue's is 10.
CHILD_FLUSH_PRIORITY: Final = 100
# How long SIGTERM waits for the buffered spans to land before the process ends
# (container runtimes wait 10 s before SIGKILL).
SIGTERM_FLUSH_S: Final = 5.0

_lock = threading.Lock()
# Providers tooltrail already exports from (by id; a provider lives for the process): the
# data directory, and the exporter and its processor when configure() added them (None:
# one found there).
_exporting: dict[int, tuple[Path, SpanProcessor | None, TooltrailSpanExporter | None]] = {}
# Providers whose sampler was found to drop tool spans (warned once each).
_sampler_warned: set[int] = set()


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
    instrument_mcp: bool = True,
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
        instrument_mcp: patch the MCP Python SDK client (False: the process makes its
            spans itself, as the gateway does, and need not import ``mcp``).

    Calling it again replaces the settings; the exporter is not added twice. When the
    provider already lands tooltrail spans elsewhere, ``data_dir`` is that directory (a
    warning names both): the control store must be where the spans are.
    """
    requested = config.data_dir(data_dir)
    if agent_name is not None:
        _session.set_default_agent_name(agent_name)
    with _lock:
        provider, created = _tracer_provider(service_name or agent_name)
        if not created:
            _warn_if_sampler_drops(provider)
        root = _landing_dir(provider, requested)
        st = _settings.install(
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
        if exporter is not None and data_dir is None:
            _warn_if_collector_without_spans(root)
    instrumented = _instrument_mcp() if instrument_mcp else False
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
    # Tool spans are the audit record: sampled whatever the parent or the ratio says.
    provider = TracerProvider(resource=_resource(service_name), sampler=ToolSpanSampler())
    trace.set_tracer_provider(provider)
    # set_tracer_provider refuses a second provider; use whichever won.
    actual = trace.get_tracer_provider()
    if isinstance(actual, TracerProvider) and actual is not provider:
        return actual, False
    return provider, True


def _resource(service_name: str | None) -> Resource:
    detected = Resource.create()
    if _named(detected) is not None:
        return detected  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win
    fallback = service_name or _session.default_agent_name() or DEFAULT_SERVICE_NAME
    return Resource.create({SERVICE_NAME: fallback})


def service_name_from_environment() -> str | None:
    """The ``service.name`` that ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (or a
    resource detector) set, or None when only the SDK's ``unknown_service`` default would."""
    return _named(Resource.create())


def _named(resource: Resource) -> str | None:
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    return name if name and not name.startswith("unknown_service") else None


def _warn_if_sampler_drops(provider: TracerProvider) -> None:
    """The application owns this provider's sampler; say once if it may drop tool spans."""
    sampler = getattr(provider, "sampler", None)
    if sampler is None or keeps_tool_spans(sampler) or id(provider) in _sampler_warned:
        return
    _sampler_warned.add(id(provider))
    _log.warning(
        "tooltrail: the application's tracer provider samples with %s, which may drop tool"
        " spans, and with them the audit record of those calls (DENYs included); build it"
        " with sampler=tooltrail.instrumentation.ToolSpanSampler(<your sampler>)"
        " (docs/INSTRUMENTATION.md: Sampling)",
        sampler.get_description(),
    )


def _landing_dir(provider: TracerProvider, requested: Path) -> Path:
    """Where tooltrail spans of ``provider`` land: the directory of the tooltrail exporter it
    already has (added by an earlier ``configure`` or ``opentelemetry-instrument``), else
    ``requested``. The control store goes with the spans: ``tooltrail cancel --data D``
    must reach agents whose spans land in ``D``."""
    known = _exporting.get(id(provider))
    if known is not None:
        actual = known[0]
    else:
        found = _tooltrail_processor(provider)
        if found is None:
            return requested
        actual = Path(getattr(found[1], "data_dir", None) or config.data_dir())
        _exporting[id(provider)] = (actual, None, None)
    if _same_dir(actual, requested):
        return actual
    _log.warning(
        "tooltrail: the tracer provider already lands tooltrail spans in %s;"
        " configure(data_dir=%s) cannot change it, so spans and the control store"
        " (approvals, pause, cancel) stay in %s",
        actual,
        requested,
        actual,
    )
    return actual


def _same_dir(a: Path, b: Path) -> bool:
    return a == b or a.absolute() == b.absolute()


def _warn_if_collector_without_spans(root: Path) -> None:
    """``$TOOLTRAIL_COLLECTOR_URL`` carries approvals and session control, not spans: an
    agent that set only it lands its spans here, in its own working directory, and the
    collector never sees them. Say so once, with the setting that sends them."""
    url = os.environ.get(config.ENV_COLLECTOR_URL, "").strip()
    if url and not os.environ.get(config.ENV_DATA):
        _log.warning(
            "tooltrail: %s=%s carries approvals and session control only; spans land in %s."
            " To send them to the collector, configure an OTLP exporter to %s/v1/traces"
            " (docs/COLLECTOR.md)",
            config.ENV_COLLECTOR_URL,
            url,
            root.absolute(),
            url.rstrip("/"),
        )


def _add_exporter(
    provider: TracerProvider, root: Path, policy: Any
) -> TooltrailSpanExporter | None:
    """Add the tooltrail exporter to ``provider`` once; on later calls hand the one added
    here the new policy. Returns that exporter (None when one was already there).
    ``_landing_dir`` has already recorded an exporter found on the provider."""
    known = _exporting.get(id(provider))
    if known is not None:
        _, processor, exporter = known
        if processor is not None and exporter is not None:
            # Spans that ended under the old policy are decided by it, not the new one.
            processor.force_flush()
            exporter.set_policy(policy)
        return exporter
    from tooltrail.collector.exporter import TooltrailSpanExporter

    exporter = TooltrailSpanExporter(data_dir=root, policy=policy)
    processor = TooltrailSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _exporting[id(provider)] = (root, processor, exporter)
    flusher = _Flusher(provider, processor, exporter)
    # The SDK's own exit hook shuts the provider down; this one also covers a provider
    # the application built with shutdown_on_exit=False.
    atexit.register(flusher.flush)
    _keep_landing(flusher)
    return exporter


class _Flusher:
    """Lands everything the processor queued and the exporter buffered. The processor's
    ``force_flush`` only hands batches to the exporter, which keeps a large one (a backed-up
    queue) for its timer thread: a thread that does not outlive the interpreter."""

    __slots__ = ("__weakref__", "exporter", "landing_each", "processor", "provider")

    def __init__(
        self, provider: TracerProvider, processor: SpanProcessor, exporter: SpanExporter
    ) -> None:
        self.provider = provider
        self.processor = processor
        self.exporter = exporter
        # Set in a multiprocessing child once tool spans land as they end (inherited by
        # its own children, which so add no second processor).
        self.landing_each = False

    def flush(self) -> None:
        try:
            self.processor.force_flush()
            self.exporter.force_flush()
        except Exception:  # at exit or after a tool call; never break the host
            _log.exception("tooltrail: flushing spans failed")


class _LandEachToolSpan(SpanProcessor):
    """In a ``multiprocessing`` child: land each tool span as it ends. A pool's workers are
    ended with SIGTERM (``Pool.terminate``, also on leaving ``with Pool()``), which runs no
    exit hook at all; a Parquet file per tool call is the price of not losing the record."""

    def __init__(self, flusher: _Flusher) -> None:
        self._flusher = flusher

    def on_end(self, span: ReadableSpan) -> None:
        attributes = span.attributes
        if attributes is not None and attributes.get(GEN_AI_OPERATION_NAME) == OP_EXECUTE_TOOL:
            self._flusher.flush()


# Kept for the process's life: multiprocessing holds after-fork hooks by weak reference.
_flushers: list[_Flusher] = []


def _flush_in_multiprocessing_children(flusher: _Flusher) -> None:
    """Land the spans of ``multiprocessing`` children started by fork.

    Such a child ends with ``os._exit`` (no ``atexit``) after multiprocessing's own exit
    finalizers, or, as a pool worker, by SIGTERM (no hook at all). Its bootstrap clears the
    finalizers it inherited, then runs the after-fork hooks registered in the parent: so
    the hook, in the child, registers a flush at exit and lands each tool span as it ends.
    The parent's own calls pay nothing for it."""
    from multiprocessing import util

    util.register_after_fork(flusher, _in_multiprocessing_child)


def _in_multiprocessing_child(flusher: _Flusher) -> None:
    from multiprocessing import util

    try:
        util.Finalize(flusher, flusher.flush, exitpriority=CHILD_FLUSH_PRIORITY)
        if not flusher.landing_each:
            flusher.landing_each = True
            flusher.provider.add_span_processor(_LandEachToolSpan(flusher))
    except Exception:  # never break the child's start
        _log.exception("tooltrail: could not set up landing in a multiprocessing child")


def _tooltrail_processor(provider: TracerProvider) -> tuple[SpanProcessor, SpanExporter] | None:
    """The processor and ``TooltrailSpanExporter`` the provider lands spans with, or None
    (best effort: the processor list is SDK-internal, so anything unexpected reads as
    "none")."""
    try:
        multi = getattr(provider, "_active_span_processor", None)
        processors: tuple[SpanProcessor, ...] = getattr(multi, "_span_processors", ())
        for p in processors:
            batch = getattr(p, "_batch_processor", None)
            exporter = getattr(batch, "_exporter", None) or getattr(p, "span_exporter", None)
            if type(exporter).__name__ == "TooltrailSpanExporter":
                return p, cast(SpanExporter, exporter)
    except Exception:
        _log.debug("tooltrail: could not inspect the tracer provider", exc_info=True)
    return None


def land_in_multiprocessing_children(provider: TracerProvider) -> None:
    """For a provider built elsewhere (the zero-code configurator) with the tooltrail
    exporter: land the spans of its ``multiprocessing`` children, and on SIGTERM, as
    ``configure`` does."""
    found = _tooltrail_processor(provider)
    if found is None:
        return
    processor, exporter = found
    _keep_landing(_Flusher(provider, processor, exporter))


def _keep_landing(flusher: _Flusher) -> None:
    """Land the last spans however the process ends: in its ``multiprocessing`` children,
    and on SIGTERM."""
    _flushers.append(flusher)
    _flush_in_multiprocessing_children(flusher)
    _flush_on_sigterm()


def _flush_on_sigterm() -> None:
    """SIGTERM (how containers and service managers stop a process) ends Python without
    exit hooks: the calls of its last half second, which ran, would have no record. When
    the application has not taken SIGTERM itself (it is still SIG_DFL), tooltrail lands
    what is buffered, then lets the signal end the process exactly as it would have."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if not config.env_flag(config.ENV_SIGTERM_FLUSH, default=True):
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _land_then_terminate)
            _sigterm_installed = True
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        _log.debug("tooltrail: cannot watch SIGTERM", exc_info=True)


_sigterm_installed = False


def _land_then_terminate(signum: int, frame: object) -> None:
    try:
        # In a thread of its own, and bounded: the signal may have interrupted the main
        # thread while it held the SDK's or the exporter's lock, which the landing needs.
        lander = threading.Thread(target=_flush_all, name="tooltrail-sigterm-flush", daemon=True)
        lander.start()
        lander.join(SIGTERM_FLUSH_S)
    finally:
        # Whatever happened above (a second signal, no thread at interpreter shutdown), the
        # process ends as SIGTERM ends it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _flush_all() -> None:
    for flusher in list(_flushers):
        flusher.flush()


def _instrument_mcp() -> bool:
    if importlib.util.find_spec("mcp") is None:
        return False
    from tooltrail.instrumentation.mcp import McpInstrumentor

    instrumentor = McpInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # No arguments: the settings just installed stay in force.
        instrumentor.instrument()
    return bool(instrumentor.is_instrumented_by_opentelemetry)
