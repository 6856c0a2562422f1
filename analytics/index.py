"""The session index: per-session totals written at compaction time, so listing sessions
does not aggregate every span on every request.

``<data>/session_index.parquet`` holds one row per session with the mergeable totals of
``sql/session_partials.sql`` over a known set of span files, and records that set (path
relative to the data directory, and size) in its Parquet metadata. A connection uses it
only while every covered file still exists unchanged; spans in files landed since are
aggregated on the fly and merged in (``sql/session_merge.sql``). When a covered file is
gone (a compaction replaced it and the index was not rebuilt yet) the index is ignored and
sessions are computed from all spans: slower, never wrong.

``tooltrail compact`` calls :func:`build_session_index` after it has swapped partitions.

The index is covered by the chain (collector/chain.py): each build appends a signed
``index`` record (the file's SHA-256) before it publishes the file, and a reader uses the
index only while its bytes match the ledger's last ``index`` record. An index edited,
planted or written by an older version is ignored (sessions are computed from the spans,
which the chain covers) until ``tooltrail compact`` rebuilds it; ``tooltrail verify``
reports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from tooltrail.analytics.engine import (
    base_connection,
    create_empty_spans,
    data_root,
    raise_query_error,
    span_files,
)
from tooltrail.analytics.sqlfiles import Fragment, ident, literal_list, load, render
from tooltrail.collector import chain
from tooltrail.collector.writer import fsync_path

_log = logging.getLogger(__name__)

SESSION_INDEX_FILE: Final = "session_index.parquet"
INDEX_KIND: Final = "index"  # its ledger records' kind
_INDEX_LOCK: Final = "index.lock"  # <data>/chain/index.lock: one publisher at a time
_META_KEY: Final = b"tooltrail.session_index"
_FORMAT: Final = 1


# Every SQL file whose text decides what an index row holds; and the DuckDB version,
# since `copies` are matched through DuckDB's hash() (unique_spans.sql).
_INDEX_SQL: Final = (
    "macros",
    "span_columns",
    "span_winner",
    "span_copies",
    "unique_spans",
    "session_partials",
    "session_index_rows",
)


def _sql_version() -> str:
    # An index written by different SQL may have other columns or meanings: ignore it.
    text = "\n".join([str(_FORMAT), duckdb.__version__, *(load(name) for name in _INDEX_SQL)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def unique_spans(relation: str, copies: Fragment | None = None) -> Fragment:
    """``relation`` reduced to one row per span (sql/unique_spans.sql). ``copies``: a query
    giving the keys landed more than once (:data:`NO_COPIES`: known to be none); by
    default found in ``relation`` itself."""
    source = ident(relation)
    if copies == NO_COPIES:
        return render("all_rows", input=source)
    if copies is None:
        copies = render("span_copies", input=source)
    return render("unique_spans", input=source, copies=copies, winner=render("span_winner"))


NO_COPIES: Final = Fragment("-- no copies")
"""``copies`` of :func:`unique_spans` when the planner found none: no reduction at all."""


def session_partials(relation: str, copies: Fragment | None = None) -> Fragment:
    """Per-session totals over ``relation``, each span once (sql/session_partials.sql);
    ``copies`` as in :func:`unique_spans`."""
    return render("session_partials", unique=unique_spans(relation, copies))


def delta_spans_view(files: Iterable[str]) -> Fragment:
    """``_delta_spans``: the spans of ``files``, read as the ``spans`` view reads them."""
    return render("delta_spans_view", columns=render("span_columns"), files=literal_list(files))


@dataclass(frozen=True, slots=True)
class SessionIndex:
    """A readable session index and the span files it covers (relative path -> size)."""

    path: Path
    # inode, mtime_ns, ctime_ns, size: identifies this build of the file (ctime: an edit in
    # place that restores the size and mtime still changes it)
    stamp: tuple[int, int, int, int]
    files: Mapping[str, int]

    def delta(self, root: Path, current: list[tuple[Path, int]]) -> list[Path] | None:
        """Files not covered yet, or None if a covered file is gone or changed."""
        present = {_relative(root, p): size for p, size in current}
        for name, size in self.files.items():
            if present.get(name) != size:
                return None
        return [p for p, _ in current if _relative(root, p) not in self.files]


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def read_index(root: Path) -> SessionIndex | None:
    """The index of ``root`` if present, written by this version and matching its signed
    record in the ledger; None otherwise (sessions are then computed from the spans)."""
    path = root / SESSION_INDEX_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
    if not _recorded(root, path, stamp):
        return None
    return _read_index(path, stamp)


_matched: dict[Path, tuple[int, int, int, int]] = {}
_warned: dict[Path, tuple[int, int, int, int]] = {}
_matched_lock = threading.Lock()


def _recorded(root: Path, path: Path, stamp: tuple[int, int, int, int]) -> bool:
    """Whether the index's bytes are those of the ledger's last ``index`` record. Checked
    once per build of the file (a match is remembered by stamp; a mismatch is checked again
    on the next read, since the record may be appended just after a reader looked)."""
    with _matched_lock:
        if _matched.get(path) == stamp:
            return True
    record = chain.last_record(root, INDEX_KIND)
    try:
        actual = chain.file_sha256(path)
    except OSError:
        return False
    if record is None or record.get("sha256") != actual:
        with _matched_lock:
            warn = _warned.get(path) != stamp
            _warned[path] = stamp
        if warn:  # once per build of the file, not on every refresh
            _log.warning(
                "ignoring %s: %s (tooltrail verify says more; tooltrail compact rebuilds it)",
                path,
                "no ledger record covers it" if record is None else "it differs from its record",
            )
        return False
    with _matched_lock:
        _matched[path] = stamp
    return True


@functools.lru_cache(maxsize=32)
def _read_index(path: Path, stamp: tuple[int, int, int, int]) -> SessionIndex | None:
    # Cached per build of the file (stamp), so a refresh only stats it.
    try:
        meta = pq.read_metadata(path).metadata or {}
        doc = json.loads(meta[_META_KEY])
        if doc.get("version") != _sql_version():
            _log.info("ignoring %s: written by another version", path)
            return None
        files = {str(name): int(size) for name, size in doc["files"]}
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as e:
        _log.warning("ignoring unreadable session index %s: %s", path, e)
        return None
    return SessionIndex(path, stamp, files)


def build_session_index(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Write ``<data>/session_index.parquet`` over the span files present now.

    Returns its path, or None when there is no span file (any old index is removed).
    Replaces the file atomically: a reader sees the old index or the new one.
    """
    root = data_root(data_dir)
    target = root / SESSION_INDEX_FILE
    files = span_files(root)
    if not files:
        target.unlink(missing_ok=True)
        return None
    table = _session_totals(files)
    doc = {
        "version": _sql_version(),
        "files": [[_relative(root, p), size] for p, size in files],
    }
    metadata = dict(table.schema.metadata or {})
    metadata[_META_KEY] = json.dumps(doc).encode()
    _write_atomic(table.replace_schema_metadata(metadata), target, root, len(files))
    return target


def _session_totals(files: list[tuple[Path, int]]) -> pa.Table:
    con = base_connection()
    try:
        create_empty_spans(con)
        con.execute(delta_spans_view(str(p) for p, _ in files))
        con.execute(render("copies_table", body=render("span_copies", input=ident("_delta_spans"))))
        partials = session_partials("_delta_spans", render("copies_table_keys"))
        table = con.sql(render("session_index_rows", partials=partials)).to_arrow_table()
    except duckdb.Error as e:
        raise_query_error(e, "building the session index")
    finally:
        con.close()
    return table


def _write_atomic(table: pa.Table, target: Path, root: Path, covers: int) -> None:
    """Write ``table`` to a temporary file, append its signed ``index`` record, then rename
    it over ``target``; record and rename under one lock, so the last record is always
    the last index published (a reader between the two sees the old index mismatch the
    new record and computes from the spans once)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        record = {
            "kind": INDEX_KIND,
            "file": SESSION_INDEX_FILE,
            "sha256": chain.file_sha256(tmp),
            "bytes": tmp.stat().st_size,
            "sessions": table.num_rows,
            "covers": covers,
        }
        with _publishing(root):
            chain.append(root, record)
            tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(target.parent)


@contextlib.contextmanager
def _publishing(root: Path) -> Iterator[None]:
    lock = root / chain.CHAIN_DIR / _INDEX_LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = [
    "INDEX_KIND",
    "NO_COPIES",
    "SESSION_INDEX_FILE",
    "SessionIndex",
    "build_session_index",
    "delta_spans_view",
    "read_index",
    "session_partials",
    "unique_spans",
]
