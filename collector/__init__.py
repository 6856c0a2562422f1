"""tooltrail.collector: exporter, normalizer, Parquet writer (runs where spans land)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tooltrail.collector.exporter import TooltrailSpanExporter
    from tooltrail.collector.writer import ParquetSpanWriter

__all__ = ["ParquetSpanWriter", "TooltrailSpanExporter"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import tooltrail.collector.writer` does not load the exporter's imports.
    if name == "TooltrailSpanExporter":
        from tooltrail.collector.exporter import TooltrailSpanExporter

        return TooltrailSpanExporter
    if name == "ParquetSpanWriter":
        from tooltrail.collector.writer import ParquetSpanWriter

        return ParquetSpanWriter
    raise AttributeError(name)
