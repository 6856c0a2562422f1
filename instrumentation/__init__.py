"""tooltrail.instrumentation: runs inside agent processes (no duckdb/polars/streamlit)."""

from __future__ import annotations

__all__: list[str] = []
