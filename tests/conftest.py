"""Shared fixtures: build landed rows and write them through the real Parquet writer.

``make_row(**fields)`` returns a ``tooltrail.schema`` row: every column present, sensible
defaults for a tool call (override any column by keyword; an unknown column name is an
error), non-tool span types get no tool defaults. ``landed(rows)`` writes rows with
``ParquetSpanWriter`` into ``tmp_path / "data"`` and returns that data directory.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import pytest

from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.schema import COLUMNS, Row, empty_row

# A writer's first landing starts a background build of tooltrail.duckdb
# (collector/duckdb_file.py): off for the suite, whose tests land into hundreds of
# directories; the tests of that build turn it on.
os.environ.setdefault("TOOLTRAIL_DUCKDB_FILE", "0")

BASE_TIME = dt.datetime(2024, 6, 3, 12, 0, tzinfo=dt.UTC)
"""Default start time of rows: fixed, so partitions and orderings are reproducible."""


class MakeRow(Protocol):
    def __call__(self, **fields: Any) -> Row: ...


_ids = itertools.count(1)


def _make_row(**fields: Any) -> Row:
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"make_row: not landed columns: {sorted(unknown)}")
    n = next(_ids)
    span_type = fields.get("span_type", "tool")
    start = fields.get("start_time", BASE_TIME)
    row = empty_row()
    row.update(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        kind="INTERNAL",
        span_type=span_type,
        name=span_type,
        start_time=start,
        end_time=start + dt.timedelta(milliseconds=10) if isinstance(start, dt.datetime) else None,
        duration_ms=10.0,
        status_code="OK",
        session_id="session-1",
        agent_name="agent-a",
        service_name="test-agent",
    )
    if span_type == "tool":
        tool = fields.get("tool_name", "git_status")
        row.update(
            name=f"execute_tool {tool}",
            tool_name=tool,
            mcp_server="git",
            arguments="{}",
            decision="ALLOW",
            policy_rule="pass",
            enforced=True,
            blast_radius="Low",
        )
    row.update(fields)
    return row


@pytest.fixture
def make_row() -> MakeRow:
    """Factory of landed rows with defaults: ``make_row(session_id="s", decision="DENY")``."""
    return _make_row


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data directory ``landed`` writes into (not created until something lands)."""
    return tmp_path / "data"


@pytest.fixture
def landed(data_dir: Path) -> Callable[[Iterable[Row]], Path]:
    """``landed(rows)`` writes rows through the real ParquetSpanWriter; returns the data dir.

    Each call lands new files (one per UTC day), as a separate exporter batch would.
    """
    writer = ParquetSpanWriter(data_dir)

    def land(rows: Iterable[Row]) -> Path:
        writer.write(list(rows))
        return data_dir

    return land
