"""The zero-code path: an OpenTelemetry SDK configurator for ``opentelemetry-instrument``.

``opentelemetry-instrument`` only sets up the SDK through a configurator registered under
the ``opentelemetry_configurator`` entry point (``opentelemetry-distro`` ships the generic
one). This one is that generic configurator with tooltrail's defaults, applied only where
the environment says nothing:

* ``OTEL_TRACES_EXPORTER=tooltrail`` (spans land in ``$TOOLTRAIL_DATA``);
* ``OTEL_METRICS_EXPORTER=none`` and ``OTEL_LOGS_EXPORTER=none`` (tooltrail records spans
  only; the SDK's default ``otlp`` would need an exporter package and a collector);
* the tooltrail exporter behind ``TooltrailSpanProcessor``, as ``configure()`` uses it
  (tool spans get back-pressure, never a silent drop; a span lands within 0.5 s); other
  exporters keep the SDK's ``BatchSpanProcessor`` and its ``OTEL_BSP_*`` settings;
* ``OTEL_SERVICE_NAME`` from ``$TOOLTRAIL_AGENT_NAME``, unless ``OTEL_SERVICE_NAME`` or
  ``OTEL_RESOURCE_ATTRIBUTES`` already names the service;
* the sampler ``OTEL_TRACES_SAMPLER`` selects, wrapped in ``ToolSpanSampler``: tool spans
  are the audit record and are always sampled (a sampler passed in is wrapped too);
* ``multiprocessing`` children started by fork land their spans, as under ``configure()``.

Every ``OTEL_*`` variable still works (e.g. ``OTEL_TRACES_EXPORTER=tooltrail,otlp``). The
SDK reads ``otlp`` as the gRPC exporter unless a protocol is set; when only the HTTP one is
installed, ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf`` is set, since otherwise
the SDK fails to start at all and not even tooltrail's own spans would land. With several
configurators installed, pick this one with ``OTEL_PYTHON_CONFIGURATOR=tooltrail``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from tooltrail.config import ENV_AGENT_NAME
from tooltrail.instrumentation.config import (
    land_in_multiprocessing_children,
    service_name_from_environment,
)
from tooltrail.instrumentation.processor import TooltrailSpanProcessor
from tooltrail.instrumentation.sampling import ToolSpanSampler, keeps_tool_spans

__all__ = ["ZERO_CODE_DEFAULTS", "TooltrailConfigurator"]

ZERO_CODE_DEFAULTS: Final = {
    "OTEL_TRACES_EXPORTER": "tooltrail",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
}


class TooltrailConfigurator(_OTelSDKConfigurator):
    """``opentelemetry-instrument``'s SDK setup with tooltrail's defaults (see module doc)."""

    def _configure(self, **kwargs: Any) -> None:
        for name, value in ZERO_CODE_DEFAULTS.items():
            if not os.environ.get(name):
                os.environ[name] = value
        agent = os.environ.get(ENV_AGENT_NAME)
        # The service the environment names wins, as configure() does.
        if agent and service_name_from_environment() is None:
            os.environ["OTEL_SERVICE_NAME"] = agent
        _otlp_protocol_that_is_installed()
        sampler = kwargs.get("sampler")
        # A declarative config file (OTEL_CONFIG_FILE) makes the SDK ignore every argument.
        if not os.environ.get(_CONFIG_FILE) and not (sampler and keeps_tool_spans(sampler)):
            kwargs["sampler"] = ToolSpanSampler(sampler)
        kwargs["export_span_processor"] = _ProcessorFor(kwargs.get("export_span_processor"))
        super()._configure(**kwargs)  # type: ignore[no-untyped-call]
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            land_in_multiprocessing_children(provider)


class _ProcessorFor:
    """The SDK builds one processor per exporter with this: the tooltrail exporter gets
    ``TooltrailSpanProcessor``, any other the processor it would have had."""

    def __init__(self, other: Callable[[SpanExporter], SpanProcessor] | None) -> None:
        self.other = other

    def __call__(self, exporter: SpanExporter) -> SpanProcessor:
        if type(exporter).__name__ == "TooltrailSpanExporter":
            return TooltrailSpanProcessor(exporter)
        if self.other is not None:
            return self.other(exporter)
        return BatchSpanProcessor(exporter)


_CONFIG_FILE: Final = "OTEL_CONFIG_FILE"
_PROTOCOL_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_EXPORTERS_GROUP: Final = "opentelemetry_traces_exporter"


def _otlp_protocol_that_is_installed() -> None:
    """``otlp`` means the gRPC exporter to the SDK unless a protocol is set; pick HTTP when
    only its exporter is installed (as here: the collector speaks OTLP/HTTP)."""
    traces = {e.strip() for e in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
    if "otlp" not in traces or any(os.environ.get(v) for v in _PROTOCOL_VARIABLES):
        return
    installed = {ep.name for ep in entry_points(group=_EXPORTERS_GROUP)}
    if "otlp_proto_grpc" not in installed and "otlp_proto_http" in installed:
        os.environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
