"""Rendering of result frames for the command line: table, json or csv.

Imported lazily by the CLI only (it needs polars, which the agent side never loads).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import polars as pl

FORMATS: Final = ("table", "json", "csv")
_MAX_CELL: Final = 48


def _terminal_safe() -> dict[int, str]:
    # Cells hold what agents sent (tool names, arguments, session ids). Written raw to a
    # terminal, an escape sequence or a carriage return lets a value erase and redraw the
    # line, so a force-push awaiting approval could show as "git_status"; bidirectional
    # overrides reorder what is shown. Line breaks become spaces (a row stays one line);
    # every other control or reordering character is shown as its escape.
    table = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
    table.update({ord("\n"): " ", ord("\r"): " ", ord("\t"): " "})
    for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C):
        table[c] = f"\\u{c:04x}"
    return table


_TERMINAL_SAFE: Final = _terminal_safe()
# Messages keep their line breaks (an error may list several problems, one per line).
_TERMINAL_SAFE_LINES: Final = {**_TERMINAL_SAFE, ord("\n"): "\n"}


def terminal_safe(text: str) -> str:
    """``text`` with every control or reordering character but line breaks shown as its
    escape: for messages that may quote values agents sent (a DuckDB conversion error
    quotes the offending value)."""
    return text.translate(_TERMINAL_SAFE_LINES)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / Infinity: strict parsers refuse them
    if isinstance(value, decimal.Decimal):
        # DuckDB's sum() of integers is a DECIMAL(38,0): a number to scripts, not a string.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date | dt.timedelta):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def records(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in row.items()} for row in df.iter_rows(named=True)]


def _cell(value: Any, limit: int | None = _MAX_CELL) -> str:
    """One table cell; longer than ``limit`` characters is cut with "…" (None: whole)."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.strftime("%Y-%m-%d %H:%M:%S")
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")  # says it is UTC
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v, limit) for v in value)
    text = str(value).translate(_TERMINAL_SAFE)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, full: bool = False) -> str:
    """Rows as aligned columns; cells are cut at 48 characters unless ``full``."""
    limit = None if full else _MAX_CELL
    cells = [[_cell(r.get(c), limit) for c in columns] for r in rows]
    headers = [str(c).translate(_TERMINAL_SAFE) for c in columns]  # names may quote data
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    """CSV holds no nested values: lists, structs, maps and binary become their JSON text
    (as in the dashboard's CSV). Joining a list with a separator would make ``["a;b"]``
    and ``["a", "b"]`` one cell, and lists hold paths taken from agents' arguments."""
    import polars as pl

    columns: list[pl.Expr | pl.Series] = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            # RFC 3339, as in the JSON output (polars would write +0000).
            columns.append(pl.col(name).dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%:z"))
        elif dtype.is_nested() or dtype in (pl.Binary, pl.Object):
            texts = [
                None if v is None else json.dumps(_jsonable(v), default=str)
                for v in df[name].to_list()
            ]
            columns.append(pl.Series(name, texts, dtype=pl.String))
    return df.with_columns(columns) if columns else df


def render(
    df: pl.DataFrame, fmt: str, columns: Sequence[str] | None = None, *, full: bool = False
) -> str:
    """Render ``df`` as ``table`` (selected ``columns``, cells cut unless ``full``),
    ``json`` or ``csv`` (all columns, whole values)."""
    if fmt == "json":
        return json.dumps(records(df), indent=2, default=str)
    if fmt == "csv":
        return _flat(df).write_csv().rstrip("\n")
    cols = [c for c in (columns or df.columns) if c in df.columns]
    if df.height == 0:
        return "(no rows)"
    return table(df.select(cols).to_dicts(), cols, full=full)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | dict) and not value)


def render_mapping(values: Mapping[str, Any], *, full: bool = False) -> str:
    """A key: value block (for headers such as a session's aggregates). Keys without a
    value (null, empty text or list) are left out: a blank line says nothing."""
    shown = {k: v for k, v in values.items() if not _empty(v)}
    width = max((len(k) for k in shown), default=0)
    limit = None if full else _MAX_CELL
    return "\n".join(f"{k.ljust(width)}  {_cell(v, limit)}" for k, v in shown.items())
