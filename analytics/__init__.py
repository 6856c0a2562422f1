"""tooltrail.analytics: DuckDB / polars queries over the landed data."""

from __future__ import annotations

__all__: list[str] = []
