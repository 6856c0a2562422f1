"""Low-level helpers shared by the analytics modules: a configured DuckDB connection, the
data-directory paths the views read, and the conversion of DuckDB errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, NoReturn

import duckdb
import pyarrow as pa

from tooltrail import config
from tooltrail.analytics.sqlfiles import ident, load, render
from tooltrail.errors import QueryError
from tooltrail.schema import SPAN_SCHEMA

SPANS_GLOB: Final = "date=*/*.parquet"
# `spans` has the landed columns plus the hive partition column.
SPANS_VIEW_SCHEMA: Final = SPAN_SCHEMA.append(pa.field("date", pa.date32()))
# Characters DuckDB would read as a pattern in a file path; there is no escape for them.
_GLOB_CHARS: Final = frozenset("*?[]{}")


def data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """The absolute data directory (explicit, ``$TOOLTRAIL_DATA`` or ./tooltrail-data).

    Absolute because the views keep the path: ``tooltrail.duckdb`` must work from any
    working directory.
    """
    root = config.data_dir(data_dir).expanduser().resolve()
    bad = sorted(_GLOB_CHARS.intersection(str(root)))
    if bad:
        raise QueryError(
            f"data directory {root} contains {' '.join(bad)}: DuckDB would read these as a "
            "file pattern; use a path without them"
        )
    return root


def spans_glob(root: Path) -> str:
    return str(root / config.SPANS_DIR / SPANS_GLOB)


def span_files(root: Path) -> list[tuple[Path, int]]:
    """Every landed span file with its size, sorted (files that vanish meanwhile skipped)."""
    spans = root / config.SPANS_DIR
    if not spans.is_dir():
        return []
    found: list[tuple[Path, int]] = []
    for path in sorted(spans.glob(SPANS_GLOB)):
        try:
            found.append((path, path.stat().st_size))
        except FileNotFoundError:  # compacted away between glob and stat
            continue
    return found


def base_connection(database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A new connection with our settings and macros (see sql/setup.sql, sql/macros.sql)."""
    try:
        con = duckdb.connect(database)
    except duckdb.Error as e:
        raise QueryError(f"cannot open DuckDB database {database}: {e}") from e
    try:
        con.execute(load("setup"))
        con.execute(load("macros"))
    except duckdb.Error as e:
        con.close()
        raise QueryError(f"cannot configure DuckDB: {e}") from e
    return con


def create_empty_spans(con: duckdb.DuckDBPyConnection) -> None:
    """``_empty_spans``: a zero-row table of the `spans` schema. The views read it while no
    span file exists, and join it by name to the files, so that a column that files landed
    before it existed all lack is still there (null)."""
    copy_arrow(con, "_empty_spans", SPANS_VIEW_SCHEMA.empty_table())


def copy_arrow(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """A real table ``name`` with the rows (or just the columns) of an Arrow table."""
    source = f"{name}_arrow"
    con.register(source, table)
    try:
        con.execute(render("copy_table", name=ident(name), source=ident(source)))
    finally:
        con.unregister(source)


# How DuckDB reports a Parquet file that was listed (a glob, a view's file list) but is
# gone when opened: compaction swapped its partition for merged files meanwhile.
_VANISHED: Final = ("No files found", "No such file", "Cannot open file")


def vanished_file(e: duckdb.Error) -> bool:
    """Whether ``e`` says a span file listed a moment ago is gone (compaction replaced
    it; the rows are in the merged files): re-planning and running again is the cure."""
    text = str(e)
    return (
        isinstance(e, duckdb.IOException)
        and ".parquet" in text
        and any(m in text for m in _VANISHED)
    )


def raise_query_error(e: duckdb.Error, what: str) -> NoReturn:
    """Re-raise a DuckDB error as our :class:`QueryError`, naming what was being done."""
    message = str(e).strip()
    raise QueryError(f"{what} failed: {message}") from e


__all__ = [
    "SPANS_VIEW_SCHEMA",
    "base_connection",
    "copy_arrow",
    "create_empty_spans",
    "data_root",
    "raise_query_error",
    "span_files",
    "spans_glob",
    "vanished_file",
]
