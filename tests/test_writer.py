"""The Parquet writer: atomic files, partitions, unique names, no clobbering."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tooltrail.collector.writer import (
    ParquetSpanWriter,
    iter_span_files,
    rows_to_table,
    sweep_temp_files,
    write_table_atomic,
)
from tooltrail.schema import COLUMNS, SPAN_SCHEMA, Row, empty_row


def _row(session: str = "s1", day: int = 21, **fields: object) -> Row:
    row = empty_row()
    start = dt.datetime(2026, 11, day, 12, 0, tzinfo=dt.UTC)
    row.update(
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        name="execute_tool git_status",
        span_type="tool",
        start_time=int(start.timestamp() * 1e9),
        end_time=int(start.timestamp() * 1e9) + 5_000_000,
        duration_ms=5.0,
        session_id=session,
        tool_name="git_status",
        policy_matched=["a", "b"],
        redactions=0,
    )
    row.update(fields)
    return row


def test_rows_land_in_date_partitions_with_schema(tmp_path: Path) -> None:
    writer = ParquetSpanWriter(tmp_path)
    rows = [_row(day=20), _row(day=21), _row(day=21, session="s2")]
    written = writer.write(rows)
    assert sorted(p.parent.name for p in written) == ["date=2026-11-20", "date=2026-11-21"]
    table = pq.read_table(written[1], partitioning=None)
    assert table.schema.names == list(COLUMNS)
    assert table.schema.equals(SPAN_SCHEMA, check_metadata=False)
    assert table.num_rows == 2
    # Sorted by session then time inside a file, so row-group statistics prune well.
    assert table.column("session_id").to_pylist() == ["s1", "s2"]
    meta = pq.ParquetFile(written[1]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_timestamps_from_ns_and_datetime_agree(tmp_path: Path) -> None:
    start = dt.datetime(2026, 11, 21, 8, 30, 1, 123456, tzinfo=dt.UTC)
    ns = _row(start_time=int(start.timestamp() * 1_000_000) * 1000)
    as_dt = _row(start_time=start)
    table = rows_to_table([ns, as_dt])
    assert table.column("start_time").to_pylist() == [start, start]


def test_session_id_bloom_filter_written(tmp_path: Path) -> None:
    (path,) = ParquetSpanWriter(tmp_path).write([_row()])
    col = (
        pq.ParquetFile(path).metadata.row_group(0).column(SPAN_SCHEMA.get_field_index("session_id"))
    )
    # pyarrow exposes the bloom filter's location through the column chunk metadata.
    assert col.to_dict().get("bloom_filter_offset") not in (None, -1, 0)


def test_file_names_unique_per_writer_and_sequence(tmp_path: Path) -> None:
    a, b = ParquetSpanWriter(tmp_path), ParquetSpanWriter(tmp_path)
    paths = [w.write([_row()])[0] for w in (a, b, a, b)]
    assert len({p.name for p in paths}) == 4
    assert len(list(iter_span_files(tmp_path))) == 4


def test_atomic_write_never_clobbers(tmp_path: Path) -> None:
    table = rows_to_table([_row()])
    target = tmp_path / "date=2026-11-21" / "w-000001.parquet"
    write_table_atomic(table, target)
    with pytest.raises(FileExistsError):
        write_table_atomic(rows_to_table([_row(), _row()]), target)
    assert pq.read_table(target, partitioning=None).num_rows == 1
    assert not list(target.parent.glob(".*"))  # the failed attempt left no temp file


def test_bad_row_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ParquetSpanWriter(tmp_path).write([_row(start_time="yesterday")])
    assert list(iter_span_files(tmp_path)) == []


def test_sweep_removes_only_old_temp_files(tmp_path: Path) -> None:
    part = tmp_path / "spans" / "date=2026-11-21"
    part.mkdir(parents=True)
    old, fresh = part / ".a.parquet.1.tmp", part / ".b.parquet.2.tmp"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert sweep_temp_files(tmp_path, older_than_s=60) == 1
    assert not old.exists() and fresh.exists()


def test_forked_child_with_an_explicit_writer_id_does_not_clobber(tmp_path: Path) -> None:
    writer = ParquetSpanWriter(tmp_path, writer_id="agent")
    writer.write([_row()])
    pid = os.fork()
    if pid == 0:  # child: same object, same explicit id, same sequence so far
        try:
            writer.write([_row()])
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    writer.write([_row()])
    names = sorted(p.name for p in iter_span_files(tmp_path))
    assert len(names) == 3, names
    assert sum(n.startswith(f"agent-{pid}-") for n in names) == 1


def test_rows_land_under_their_utc_start_date_at_day_boundaries(tmp_path: Path) -> None:
    midnight = int(dt.datetime(2026, 11, 21, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
    starts: list[object] = [midnight - 1, midnight, midnight + 1, 0, midnight + 86_399_999_999_999]
    starts += [dt.datetime(2026, 11, 20, 23, 59, 59, tzinfo=dt.UTC), None]
    rows = [_row(start_time=s) for s in starts]
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    expected = {
        r["span_id"]: today
        if s is None
        else (
            s if isinstance(s, dt.datetime) else dt.datetime.fromtimestamp(s // 10**9, tz=dt.UTC)
        ).strftime("%Y-%m-%d")
        for r, s in zip(rows, starts, strict=True)
    }
    ParquetSpanWriter(tmp_path).write(rows)
    landed = {
        span_id: path.parent.name.removeprefix("date=")
        for path in iter_span_files(tmp_path)
        for span_id in pq.read_table(path, columns=["span_id"])["span_id"].to_pylist()
    }
    assert landed == expected


def test_split_by_date_is_exact_for_any_start_time() -> None:
    """Floor days of integer microseconds: pre-1970, day edges, int64's far end, nulls."""
    import datetime as dt

    import pyarrow as pa

    from tooltrail.collector.writer import split_by_date

    day_us = 86_400 * 1_000_000
    starts_us = [-1, 0, day_us - 1, day_us, 2**53 + 1, 2**63 - 1, None]
    table = pa.table({"start_time": pa.array(starts_us, type=pa.timestamp("us", tz="UTC"))})
    parts = dict(split_by_date(table))
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert {k: v.num_rows for k, v in parts.items()} == {
        "1969-12-31": 1,
        "1970-01-01": 2,
        "1970-01-02": 1,
        "2255-06-05": 1,
        "9999-12-31": 1,  # beyond the calendar: its last day, not an error
        today: 1,
    }
    assert sum(p.num_rows for p in parts.values()) == len(starts_us)
