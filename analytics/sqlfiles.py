"""The SQL of ``tooltrail.analytics``: files in ``analytics/sql/*.sql``, loaded by name.

Query values are always bound as parameters (``?`` / ``$name``). DuckDB cannot bind a
parameter where a *file path* is needed to define a view (``read_parquet(...)`` inside
``CREATE VIEW`` is planned without parameters, and a persisted view must contain its path),
so paths are the one kind of value spliced into SQL text. That happens here only: a
template marks the spot with ``{{name}}``, and :func:`render` accepts nothing but
:class:`Fragment` values, which only :func:`literal`, :func:`literal_list`, :func:`ident`
and :func:`render` itself produce. A stray ``str`` cannot reach a template.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from importlib import resources
from typing import Final, NewType

Fragment = NewType("Fragment", str)
"""A piece of SQL that is safe to splice: a quoted literal, a checked identifier, or SQL
rendered from our own files."""

_PLACEHOLDER: Final = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
_IDENT: Final = re.compile(r"[a-z_][a-z0-9_]*")
# A value spliced into a `--` comment could end the comment (a newline) and become SQL.
_IN_COMMENT: Final = re.compile(r"--[^\n]*\{\{")


def literal(value: str) -> Fragment:
    """``value`` as a SQL string literal (standard quoting: ``'`` doubled).

    DuckDB string literals have no backslash escapes, so doubling the quote is complete;
    a NUL byte cannot be represented and is refused.
    """
    if "\x00" in value:
        raise ValueError("a NUL byte cannot appear in a SQL string literal")
    return Fragment("'" + value.replace("'", "''") + "'")


def literal_list(values: Iterable[str]) -> Fragment:
    """A DuckDB list literal of string literals: ``['a', 'b']``."""
    return Fragment("[" + ", ".join(literal(v) for v in values) + "]")


def ident(name: str) -> Fragment:
    """One of our own relation names (lower-case, no quoting needed)."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return Fragment(name)


@functools.cache
def load(name: str) -> str:
    """The text of ``analytics/sql/<name>.sql`` (read once, then cached)."""
    if not _IDENT.fullmatch(name):
        raise ValueError(f"not a SQL file name: {name!r}")
    path = resources.files(__package__).joinpath("sql", f"{name}.sql")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise LookupError(f"no SQL file analytics/sql/{name}.sql") from e


def render(name: str, /, **fragments: Fragment) -> Fragment:
    """``load(name)`` with each ``{{key}}`` replaced; every key must be used exactly."""
    text = load(name)
    if _IN_COMMENT.search(text):
        raise ValueError(f"{name}.sql has a placeholder inside a -- comment")
    wanted = set(_PLACEHOLDER.findall(text))
    if wanted != set(fragments):
        raise ValueError(
            f"{name}.sql needs {sorted(wanted)}, got {sorted(fragments)}",
        )
    return Fragment(_PLACEHOLDER.sub(lambda m: fragments[m.group(1)], text))


__all__ = ["Fragment", "ident", "literal", "literal_list", "load", "render"]
