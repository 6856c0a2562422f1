"""Compaction: merged, sorted, and atomic for concurrent readers and writers."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from tooltrail.collector import compact as compact_module
from tooltrail.collector.compact import compact
from tooltrail.collector.writer import ParquetSpanWriter, iter_span_files
from tooltrail.errors import StoreError
from tooltrail.schema import Row, empty_row


def _row(session: str, minute: int) -> Row:
    row = empty_row()
    start = dt.datetime(2026, 11, 21, 10, minute % 60, tzinfo=dt.UTC)
    row.update(
        trace_id=uuid.uuid4().hex,
        span_id=uuid.uuid4().hex[:16],
        span_type="tool",
        start_time=start,
        end_time=start,
        session_id=session,
        tool_name="git_log",
    )
    return row


def _land_small_files(root: Path, n: int) -> ParquetSpanWriter:
    """``n`` one-row files of session ``s`` (one partition): what compaction merges."""
    writer = ParquetSpanWriter(root)
    for i in range(n):
        writer.write([_row("s", i)])
    return writer


def _count(root: Path) -> tuple[int, int]:
    glob = str(root / "spans" / "date=*" / "*.parquet")
    con = duckdb.connect()
    try:
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT span_id) FROM read_parquet(?, hive_partitioning=true)",
            [glob],
        ).fetchone() or (0, 0)
    finally:
        con.close()
    return int(total), int(distinct)


def test_compact_merges_and_sorts(tmp_path: Path) -> None:
    writer = ParquetSpanWriter(tmp_path)
    for i in range(30):
        writer.write([_row(f"s{(i * 7) % 5}", i), _row(f"s{i % 3}", 59 - i)])
    assert len(list(iter_span_files(tmp_path))) == 30
    report = compact(tmp_path)
    files = list(iter_span_files(tmp_path))
    assert len(files) == 1 and files[0].name.startswith("compact-")
    assert report.rows == 60 and report.files_before == 30 and report.files_after == 1
    table = pq.read_table(files[0], partitioning=None)
    keys = list(
        zip(
            table.column("session_id").to_pylist(),
            table.column("start_time").to_pylist(),
            strict=True,
        )
    )
    assert keys == sorted(keys)
    assert _count(tmp_path) == (60, 60)
    # Idempotent: an already compact partition is left alone.
    assert compact(tmp_path).partitions == 0


def test_compact_on_missing_dir_is_a_no_op(tmp_path: Path) -> None:
    assert compact(tmp_path / "nope").partitions == 0


def test_readers_never_see_both_or_neither_while_writers_land(tmp_path: Path) -> None:
    writer = ParquetSpanWriter(tmp_path)
    base = 400
    for i in range(base // 2):
        writer.write([_row(f"s{i % 9}", i), _row(f"s{i % 4}", i + 1)])
    landed = [base]
    stop = threading.Event()
    problems: list[str] = []

    def read_loop() -> None:
        while not stop.is_set():
            low = landed[0]
            try:
                total, distinct = _count(tmp_path)
            except duckdb.IOException:
                continue  # a file globbed just before a swap vanished: retry, not a gap
            high = landed[0]
            if total != distinct:
                problems.append(f"duplicates: {total} rows, {distinct} distinct")
            if not low <= total <= high:
                problems.append(f"saw {total} rows, expected {low}..{high}")

    def write_loop() -> None:
        late = ParquetSpanWriter(tmp_path)
        for i in range(40):
            late.write([_row("late", i)])
            landed[0] += 1

    reader = threading.Thread(target=read_loop)
    extra = threading.Thread(target=write_loop)
    reader.start()
    extra.start()
    try:
        for _ in range(3):
            compact(tmp_path)
    finally:
        extra.join()
        stop.set()
        reader.join()
    compact(tmp_path)
    assert problems == []
    assert _count(tmp_path) == (base + 40, base + 40)


def test_second_compactor_is_refused(tmp_path: Path) -> None:
    import fcntl
    import os

    ParquetSpanWriter(tmp_path).write([_row("s", 1)])
    fd = os.open(tmp_path / "spans" / ".compact.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another compaction"):
            compact(tmp_path)
    finally:
        os.close(fd)


def test_spool_files_whose_segment_still_exists_wait(tmp_path: Path) -> None:
    """Merging a landed spool file before the collector deleted its segment could land
    the segment's spans twice after a crash: such a file is left for the next run."""
    from tooltrail.collector.spool import LANDED_PREFIX, SEGMENT_SUFFIX, SPOOL_DIR
    from tooltrail.collector.writer import rows_to_table, write_table_atomic

    _land_small_files(tmp_path, 3)
    (part,) = (tmp_path / "spans").glob("date=*")
    spooled = part / f"{LANDED_PREFIX}000042.parquet"
    write_table_atomic(rows_to_table([_row("spooled", 5)]), spooled)
    (tmp_path / SPOOL_DIR).mkdir()
    segment = tmp_path / SPOOL_DIR / f"000042{SEGMENT_SUFFIX}"
    segment.write_bytes(b"not yet deleted")

    compact(tmp_path)
    names = sorted(p.name for p in part.glob("*.parquet"))
    assert spooled.name in names and len(names) == 2  # the merge + the waiting spool file
    assert _count(tmp_path) == (4, 4)

    segment.unlink()  # the collector finished: now it merges
    compact(tmp_path)
    assert [p.name.startswith("compact-") for p in part.glob("*.parquet")] == [True]
    assert _count(tmp_path) == (4, 4)


def test_staging_is_outside_spans_where_reader_globs_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # polars' and DuckDB's `spans/*/*.parquet` match hidden directories too: a staging
    # directory in spans/ let such a reader count a partition twice mid-compaction.
    _land_small_files(tmp_path, 5)
    seen: list[list[str]] = []
    exchange = compact_module._exchange

    def watched(a: Path, b: Path) -> None:
        seen.append(sorted(p.name for p in (tmp_path / "spans").iterdir() if p.is_dir()))
        exchange(a, b)

    monkeypatch.setattr(compact_module, "_exchange", watched)
    compact(tmp_path)
    assert seen and all(name.startswith("date=") for names in seen for name in names), seen
    con = duckdb.connect()
    try:
        everything = str(tmp_path / "spans" / "*" / "*.parquet")
        got = con.execute("SELECT count(*) FROM read_parquet(?)", [everything]).fetchone()
    finally:
        con.close()
    assert got == (5,)
    assert not list((tmp_path / compact_module.STAGING_DIR).iterdir())  # cleaned up


def test_a_query_planned_before_a_swap_is_replanned_not_failed(tmp_path: Path) -> None:
    # The views list span files; compaction can remove them between planning and reading.
    from tooltrail import analytics
    from tooltrail.analytics.queries import _frame

    writer = _land_small_files(tmp_path, 4)
    analytics.build_session_index(tmp_path)
    writer.write([_row("t", 9)])  # landed after the index: the views list it by name
    con = analytics.connect(tmp_path)
    try:
        compact(tmp_path)  # ...and it is gone now: merged with the others
        for sql in ("SELECT count(*) AS n FROM spans", "SELECT sum(span_count) AS n FROM sessions"):
            assert _frame(con, sql, {}, "counting")["n"].to_list() == [5]
    finally:
        con.close()


def test_spans_on_another_filesystem_stage_beside_the_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The swap is a rename: it cannot cross filesystems (spans/ a mount or a symlink).
    _land_small_files(tmp_path, 3)
    (part,) = (tmp_path / "spans").glob("date=*")
    real_stat = Path.stat

    def stat(self: Path, **kw: Any) -> Any:
        st = real_stat(self, **kw)
        if self.name == compact_module.STAGING_DIR:  # pretend: another device
            return os.stat_result((*st[:2], st.st_dev + 1, *st[3:]))
        return st

    monkeypatch.setattr(Path, "stat", stat)
    staging = compact_module._staging_root(part)
    assert staging == tmp_path / "spans" / f".{compact_module.STAGING_DIR}"
    assert compact(tmp_path).partitions == 1
    assert _count(tmp_path) == (3, 3)


def test_readers_refreshing_their_views_during_compaction_never_fail(tmp_path: Path) -> None:
    """Planning the views opens the files it listed; a compaction swap between the two
    failed the refresh ('Cannot open file ...parquet', 4 of 883 polls). Now re-planned."""
    from tooltrail import analytics
    from tooltrail.errors import QueryError

    writer = _land_small_files(tmp_path, 20)
    analytics.build_session_index(tmp_path)
    stop = threading.Event()
    failures: list[str] = []
    polls = [0]

    def read_loop() -> None:
        con = analytics.connect(tmp_path)  # reused, as the dashboard does: refresh re-plans
        try:
            while not stop.is_set():
                try:
                    analytics.sessions(con, limit=5)
                    analytics.count_sessions(tmp_path)  # a new connection plans from scratch
                    polls[0] += 1
                except QueryError as e:
                    failures.append(str(e))
        finally:
            con.close()

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for round_ in range(60):
            for i in range(4):
                writer.write([_row(f"s{i}", round_ * 4 + i)])
            compact(tmp_path)
            analytics.build_session_index(tmp_path)
    finally:
        stop.set()
        reader.join()
    assert polls[0] >= 20, polls
    assert failures == []
