"""Compaction: merge a partition's small files into few files sorted by session and time.

Readers must see either the old files or the new ones, never both (duplicates) or neither
(a gap). Files in one directory cannot be replaced as a set, so a partition is rebuilt in a
hidden sibling directory and the two directories are swapped with one
``renameat2(RENAME_EXCHANGE)`` (Linux). Writers that landed a file while the merge ran are
carried over: the swap happens under the exclusive spans lock, which writers take shared
while they land a file, so the set of files in the partition is frozen during the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from tooltrail.collector import chain
from tooltrail.collector.spool import LANDED_PREFIX, SEGMENT_SUFFIX, SPOOL_DIR
from tooltrail.collector.writer import (
    TEMP_SUFFIX,
    new_writer_id,
    sort_landed,
    spans_lock,
    sweep_temp_files,
    write_table_atomic,
)
from tooltrail.config import SPANS_DIR
from tooltrail.errors import StoreError
from tooltrail.schema import SPAN_SCHEMA

_log = logging.getLogger(__name__)

_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2
# A partition with a single file larger than this is already compact.
DEFAULT_SMALL_FILE_BYTES: Final = 64 * 1024 * 1024
ROWS_PER_FILE: Final = 5_000_000
# Where a partition is rebuilt, beside spans/ in the data directory (same filesystem: the
# swap is a rename).
STAGING_DIR: Final = ".compact-staging"


@dataclass
class CompactReport:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two paths (both must exist)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise StoreError("atomic compaction needs renameat2 (Linux, glibc >= 2.28)")
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise StoreError(f"cannot swap {a} and {b}: {os.strerror(err)}")


def _needs_compaction(files: list[Path], small: int) -> bool:
    if len(files) > 1:
        return True
    return len(files) == 1 and files[0].stat().st_size < small and not _is_compacted(files[0])


def _is_compacted(path: Path) -> bool:
    return path.name.startswith("compact-")


def _awaiting_spool_cleanup(path: Path) -> bool:
    """A ``spool-<segment>.parquet`` whose segment the collector has not deleted yet.

    Recovery re-lands such a segment unless that exact file still exists; merging it away
    now could land its spans twice after a collector crash, so it waits for the next run.
    """
    if not path.name.startswith(LANDED_PREFIX):
        return False
    segment = path.name.removeprefix(LANDED_PREFIX).removesuffix(".parquet") + SEGMENT_SUFFIX
    return (path.parents[2] / SPOOL_DIR / segment).exists()


def _chained_sources(part: Path, sources: list[Path]) -> tuple[list[Path], list[str]] | None:
    """The sources compaction may merge and the ids of their records.

    A data directory without a ledger predates the chain: everything merges, and the
    result is recorded as a plain landed file. Otherwise only files the chain covers
    merge, each checked against its record first (a mismatch stops this partition: the
    compacted file would launder the edit); a file no record covers stays as it is, for
    verify to report.
    """
    data_dir = part.parent.parent
    if not chain.ledger_path(data_dir).exists():
        return None
    live = chain.live_records(chain.read_ledger(data_dir))
    kept: list[Path] = []
    ids: list[str] = []
    for src in sources:
        found = live.get(chain.relative(src, data_dir))
        if found is None:
            continue
        if chain.file_sha256(src) != found[1].get("sha256"):
            raise StoreError(
                f"{src} does not match its record in the chain (run tooltrail verify);"
                " not compacted"
            )
        kept.append(src)
        ids.append(found[0])
    return kept, ids


def compact_partition(part: Path, small_file_bytes: int = DEFAULT_SMALL_FILE_BYTES) -> int:
    """Compact one ``date=`` directory; returns the number of rows rewritten (0 if skipped).

    The chain is carried forward: the sources are verified first, and each compacted
    file's signed record names the records it replaced (verify checks that its sessions
    add up to theirs).
    """
    sources = sorted(p for p in part.glob("*.parquet") if not _awaiting_spool_cleanup(p))
    if not _needs_compaction(sources, small_file_bytes):
        return 0
    chained = _chained_sources(part, sources)
    replaces: list[str] | None = None
    if chained is not None:
        sources, replaces = chained
        if not _needs_compaction(sources, small_file_bytes):
            return 0
    table = pq.read_table(sources, schema=SPAN_SCHEMA, partitioning=None)
    table = sort_landed(table)  # whole-partition order, so the files split it in order
    # Outside spans/: a reader's own glob (`spans/*/*.parquet` in polars or DuckDB matches
    # hidden directories too) must never reach the staged or the swapped-out files.
    staging = _staging_root(part) / f"{part.name}.compact-{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    written: list[tuple[str, pa.Table]] = []
    try:
        writer_id = new_writer_id()
        for i, offset in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_FILE)):
            chunk = table.slice(offset, ROWS_PER_FILE)
            name = f"compact-{writer_id}-{i:04d}.parquet"
            write_table_atomic(chunk, staging / name, record=False)
            written.append((name, chunk))
        with spans_lock(part.parent, exclusive=True):
            source_names = {p.name for p in sources}
            for late in part.glob("*.parquet"):  # landed meanwhile, or left out: carry over
                if late.name not in source_names:
                    os.link(late, staging / late.name)
            _exchange(part, staging)
        # `staging` now holds the old files, outside every reader's glob.
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        # Before the swap, staging holds only unpublished new files.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _record_compacted(part, written, replaces)
    return int(table.num_rows)


def _record_compacted(
    part: Path, written: list[tuple[str, pa.Table]], replaces: list[str] | None
) -> None:
    data_dir = part.parent.parent
    for name, chunk in written:
        path = part / name
        body = chain.manifest(chunk, path, data_dir)
        if replaces is not None:
            # Every output names every source: verify sums the group's sessions.
            body.update(kind="compact", replaces=replaces, outputs=len(written))
        chain.append(data_dir, body)


def compact(
    data_dir: str | os.PathLike[str],
    *,
    small_file_bytes: int = DEFAULT_SMALL_FILE_BYTES,
    progress: Callable[[str], None] | None = None,
) -> CompactReport:
    """Merge small files in every partition of ``data_dir``; safe beside live writers."""
    root = Path(data_dir) / SPANS_DIR
    report = CompactReport()
    if not root.exists():
        return report
    with _single_compactor(root):
        sweep_temp_files(data_dir)
        _remove_stale_staging(root)
        _compact_all(root, small_file_bytes, progress, report)
    return report


@contextlib.contextmanager
def _single_compactor(root: Path) -> Iterator[None]:
    fd = os.open(root / ".compact.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise StoreError(f"another compaction is running on {root}") from e
        yield
    finally:
        os.close(fd)


def _compact_all(
    root: Path,
    small_file_bytes: int,
    progress: Callable[[str], None] | None,
    report: CompactReport,
) -> None:
    for part in sorted(p for p in root.glob("date=*") if p.is_dir()):
        before = list(part.glob("*.parquet"))
        report.files_before += len(before)
        try:
            rows = compact_partition(part, small_file_bytes)
        except (OSError, pa.ArrowException, StoreError) as e:
            _log.error("compaction of %s failed: %s", part, e)
            report.skipped.append(f"{part.name}: {e}")
            rows = 0
        if rows:
            report.partitions += 1
            report.rows += rows
        report.files_after += len(list(part.glob("*.parquet")))
        if progress is not None:
            progress(part.name)


def _staging_root(part: Path) -> Path:
    """``<data>/.compact-staging``, unless ``spans/`` is another filesystem (a mount, a
    symlink elsewhere), where the swap cannot reach: then a hidden directory in spans/
    itself, as readers of the views (``date=*`` globs) never see it."""
    staging = part.parent.parent / STAGING_DIR
    staging.mkdir(exist_ok=True)
    if staging.stat().st_dev == part.stat().st_dev:
        return staging
    return part.parent / f".{STAGING_DIR}"


def _remove_stale_staging(root: Path) -> None:
    # A compaction killed before its swap, or before removing the swapped-out files,
    # leaves a staging dir (in spans/ itself, before staging moved out of it).
    for stale in (
        *(root.parent / STAGING_DIR).glob("date=*.compact-*"),
        *(root.parent / STAGING_DIR).glob("date=*.retain-*"),
        *(root / f".{STAGING_DIR}").glob("date=*.compact-*"),
        *root.glob(".date=*.compact-*"),
    ):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(f".date=*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
