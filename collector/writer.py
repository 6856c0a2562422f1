"""Atomic, concurrent-safe Parquet landing of normalized rows.

Layout: ``<data>/spans/date=YYYY-MM-DD/<writer-id>-<seq>.parquet``. Each file is written
under a temporary name that no reader globs (``.<name>.tmp``), fsynced, then hard-linked to
its final name (``link`` refuses to clobber, unlike ``rename``) and the temp unlinked, and
the directory fsynced. A reader therefore sees a whole file or none; a process killed
mid-write leaves only an invisible temp file, which ``sweep_temp_files`` removes later.

The writer id is unique per process (host, pid, random suffix) and renewed after ``fork``,
so many processes can land into one directory without coordination.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import itertools
import logging
import operator
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tooltrail.collector.duckdb_file import ensure_duckdb_file
from tooltrail.config import SPANS_DIR
from tooltrail.errors import StoreError
from tooltrail.schema import COLUMNS, SPAN_SCHEMA, Row

_log = logging.getLogger(__name__)

TEMP_SUFFIX: Final = ".tmp"
LOCK_FILE: Final = ".lock"
_DAY_US: Final = 86_400 * 1_000_000
# Bloom filter on session_id: "one session's actions" reads skip files without it. Sized
# to the file (a file holds at most as many sessions as rows), so small files stay small.
_BLOOM_FPP: Final = 0.01
_SORTING: Final = ("session_id", "start_time")
# Row groups small enough that a one-session lookup reads one group of a compacted file.
ROW_GROUP_ROWS: Final = 131_072


class LandingError(StoreError):
    """Some rows could not be landed; ``unwritten`` are exactly those (none of them is on
    disk), so a caller may keep them for another attempt without duplicating any."""

    def __init__(self, message: str, unwritten: pa.Table) -> None:
        super().__init__(message)
        self.unwritten = unwritten


def new_writer_id() -> str:
    host = socket.gethostname().split(".")[0] or "host"
    safe_host = "".join(c if c.isalnum() else "_" for c in host)[:32]
    return f"{safe_host}-{os.getpid()}-{secrets.token_hex(3)}"


_ROW_VALUES: Final = operator.itemgetter(*COLUMNS)


def rows_to_table(rows: Sequence[Row]) -> pa.Table:
    """Columnar conversion of normalized rows into the landed schema.

    The hot path of every export: rows are transposed in C (itemgetter + zip) and
    all-null columns, common for non-tool spans, skip per-value conversion.
    """
    n = len(rows)
    try:
        columns = list(zip(*map(_ROW_VALUES, rows), strict=True)) if n else []
    except KeyError:  # a row built by hand may lack keys: fall back to .get
        columns = [tuple(r.get(c) for r in rows) for c in COLUMNS]
    if not columns:
        columns = [() for _ in COLUMNS]
    arrays: list[pa.Array] = []
    for field, values in zip(SPAN_SCHEMA, columns, strict=True):
        if values.count(None) == n:
            arrays.append(pa.nulls(n, field.type))
        elif pa.types.is_timestamp(field.type):
            arrays.append(_timestamps(values, field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=SPAN_SCHEMA)


def _timestamps(values: Sequence[Any], ts_type: pa.DataType) -> pa.Array:
    # Rows carry int nanoseconds (from the SDK / OTLP) or datetimes (from tests, ingest);
    # microseconds are what DuckDB and polars handle natively.
    conv: list[int | None] = []
    for v in values:
        if v is None:
            conv.append(None)
        elif isinstance(v, int):
            conv.append(v // 1000)
        elif isinstance(v, dt.datetime):
            if v.tzinfo is None:
                v = v.replace(tzinfo=dt.UTC)
            conv.append(int(v.timestamp() * 1_000_000))
        else:
            raise TypeError(
                f"timestamp column holds {type(v).__name__}, expected int ns or datetime"
            )
    return pa.array(conv, type=pa.int64()).cast(ts_type)


def split_by_date(table: pa.Table) -> list[tuple[str, pa.Table]]:
    """The table's rows by UTC start date (``YYYY-MM-DD``), in date order.

    One partition (the common case: a batch rarely straddles midnight) costs a min/max.
    Days are floor divisions of integer microseconds (exact for any int64 time, pre-1970
    too); a null start lands under today; a time beyond the calendar (years 1-9999)
    lands under its first or last day rather than failing.
    """
    if table.num_rows == 0:
        return []
    micros = pc.cast(table["start_time"], pa.int64())
    bounds = pc.min_max(micros)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if micros.null_count == 0 and low // _DAY_US == high // _DAY_US:
        return [(_day_name(low // _DAY_US), table)]
    today = _today()
    days = [today if v is None else v // _DAY_US for v in micros.to_pylist()]
    by_name: dict[str, list[int]] = {}
    for i, day in enumerate(days):
        by_name.setdefault(_day_name(day), []).append(i)
    return [(name, table.take(pa.array(rows))) for name, rows in sorted(by_name.items())]


_FIRST_DAY: Final = dt.date.min.toordinal() - dt.date(1970, 1, 1).toordinal()
_LAST_DAY: Final = dt.date.max.toordinal() - dt.date(1970, 1, 1).toordinal()


def _today() -> int:
    return (dt.datetime.now(dt.UTC).date() - dt.date(1970, 1, 1)).days


def _day_name(day: int) -> str:
    day = min(max(day, _FIRST_DAY), _LAST_DAY)
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def sort_landed(table: pa.Table) -> pa.Table:
    """Rows in the landed order: by session, then start time."""
    return table.sort_by([(c, "ascending") for c in _SORTING])


def write_sorted_parquet(table: pa.Table, sink: Any, *, presorted: bool = False) -> None:
    """The landed file format: rows sorted by session then time, zstd, a session_id bloom
    filter sized to the file, the page index; ``sink`` is a path or a binary file."""
    if not presorted:
        table = sort_landed(table)
    pq.write_table(
        table,
        sink,
        compression="zstd",
        bloom_filter_options={"session_id": {"ndv": max(table.num_rows, 64), "fpp": _BLOOM_FPP}},
        sorting_columns=[pq.SortingColumn(SPAN_SCHEMA.get_field_index(c)) for c in _SORTING],
        write_page_index=True,
        row_group_size=ROW_GROUP_ROWS,
    )


def write_table_atomic(table: pa.Table, final_path: Path, *, record: bool = True) -> Path:
    """Write ``table`` to ``final_path`` so that no reader ever sees a partial file.

    ``record``: a file landed under ``<data>/spans`` gets its signed manifest in the
    chain's ledger once it is visible (collector/chain.py). Compaction and retention,
    which publish files by swapping a directory, record theirs after the swap.
    """
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_path.with_name(f".{final_path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    table = sort_landed(table)  # once: the chain hashes the rows in the file's order
    try:
        with open(tmp, "wb") as fh:
            write_sorted_parquet(table, fh, presorted=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, final_path)  # fails instead of clobbering an existing file
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(final_path.parent)
    if record:
        _record(final_path, table)
    return final_path


def _record(path: Path, table: pa.Table) -> None:
    # The file is landed (its rows are on disk and visible): a failure to record it must
    # not make a caller land the rows again. It is logged; verify reports the file as
    # unrecorded, which is what it is.
    from tooltrail.collector.chain import record_file

    global _record_failed
    try:
        record_file(path, table)
    except Exception as e:
        # Once with the traceback (a read-only home for the key, say), then one line each.
        if not _record_failed:
            _record_failed = True
            _log.exception("tooltrail: landed %s but could not record it in the chain", path)
        else:
            _log.error("tooltrail: landed %s but could not record it in the chain: %s", path, e)


_record_failed = False


@contextlib.contextmanager
def spans_lock(spans_root: Path, exclusive: bool) -> Iterator[None]:
    """Writers hold the lock shared while landing a file; compaction holds it exclusively
    only while it swaps a partition, so a writer never links into a directory that is
    being swapped out (and writers never wait on each other)."""
    spans_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(spans_root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (a new, renamed or deleted name), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ParquetSpanWriter:
    """Lands batches of rows as immutable Parquet files under ``<data>/spans``."""

    def __init__(self, data_dir: str | os.PathLike[str], writer_id: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._explicit_id = writer_id
        self.writer_id = writer_id or new_writer_id()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._duckdb_file_checked = False
        if hasattr(os, "register_at_fork"):
            # A forked child must not reuse the parent's id and sequence.
            os.register_at_fork(after_in_child=self._renew_id)

    def _renew_id(self) -> None:
        explicit = self._explicit_id
        self.writer_id = f"{explicit}-{os.getpid()}" if explicit else new_writer_id()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._duckdb_file_checked = False

    @property
    def spans_dir(self) -> Path:
        return self.data_dir / SPANS_DIR

    def write(self, rows: Sequence[Row]) -> list[Path]:
        """Land ``rows`` (one file per date partition); returns the files written."""
        if not rows:
            return []
        # Conversion first: a malformed row is a permanent error (raised as is), unlike a
        # failed write, which another attempt may get past.
        return self.write_arrow(rows_to_table(rows))

    def write_arrow(self, table: pa.Table) -> list[Path]:
        """Land a table in the landed schema (one file per date partition).

        Raises :class:`LandingError` carrying exactly the rows not landed when a write fails.
        """
        # Any failure, not only a full disk, names exactly the rows not on disk: callers
        # that acknowledged them (the exporter) keep them rather than lose them.
        try:
            parts = split_by_date(table)
        except Exception as e:
            raise LandingError(f"could not partition {table.num_rows} rows: {e}", table) from e
        written: list[Path] = []
        for i, (day, part) in enumerate(parts):
            try:
                written.append(self.write_table(part, day))
            except Exception as e:
                unwritten = pa.concat_tables([p for _, p in parts[i:]])
                raise LandingError(
                    f"could not land {unwritten.num_rows} rows in {self.spans_dir}: {e}",
                    unwritten,
                ) from e
        if written and not self._duckdb_file_checked:
            # Once per writer: whoever lands first makes tooltrail.duckdb exist (in the
            # background, without importing duckdb; see duckdb_file.py).
            self._duckdb_file_checked = True
            ensure_duckdb_file(self.data_dir)
        return written

    def write_table(self, table: pa.Table, day: str) -> Path:
        with self._lock:
            seq = next(self._seq)
            name = f"{self.writer_id}-{seq:06d}.parquet"
        path = self.spans_dir / f"date={day}" / name
        with spans_lock(self.spans_dir, exclusive=False):
            return write_table_atomic(table, path)


def sweep_temp_files(data_dir: str | os.PathLike[str], older_than_s: float = 3600.0) -> int:
    """Remove temp files left by killed writers (never visible to readers); returns count."""
    root = Path(data_dir) / SPANS_DIR
    if not root.exists():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for tmp in root.glob(f"date=*/.*{TEMP_SUFFIX}"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def iter_span_files(data_dir: str | os.PathLike[str]) -> Iterable[Path]:
    root = Path(data_dir) / SPANS_DIR
    if not root.exists():
        return []
    return sorted(root.glob("date=*/*.parquet"))


__all__ = [
    "COLUMNS",
    "ParquetSpanWriter",
    "fsync_path",
    "iter_span_files",
    "rows_to_table",
    "sweep_temp_files",
    "write_table_atomic",
]
