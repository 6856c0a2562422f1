"""tooltrail.collector: exporter, normalizer, Parquet writer (runs where spans land)."""

from __future__ import annotations

from tooltrail.collector.writer import ParquetSpanWriter

__all__ = ["ParquetSpanWriter"]
