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
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
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
from tooltrail.collector.writer import fsync_path

_log = logging.getLogger(__name__)

SESSION_INDEX_FILE: Final = "session_index.parquet"
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
    stamp: tuple[int, int, int]  # inode, mtime_ns, size: identifies this build of the file
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
    """The index of ``root`` if present and written by this version; None otherwise."""
    path = root / SESSION_INDEX_FILE
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return _read_index(path, (st.st_ino, st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=32)
def _read_index(path: Path, stamp: tuple[int, int, int]) -> SessionIndex | None:
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
    _write_atomic(table.replace_schema_metadata(metadata), target)
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


def _write_atomic(table: pa.Table, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(target.parent)


__all__ = [
    "NO_COPIES",
    "SESSION_INDEX_FILE",
    "SessionIndex",
    "build_session_index",
    "delta_spans_view",
    "read_index",
    "session_partials",
    "unique_spans",
]
