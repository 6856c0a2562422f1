"""The read-only gate of ``run_query``: only one statement that reads, decided by DuckDB's
own parser (statement types), not by pattern-matching the text.

Allowed: a single SELECT-type statement (SELECT, WITH, FROM-first, VALUES, DESCRIBE, SHOW,
SUMMARIZE all parse as SELECT) and ``EXPLAIN [ANALYZE]`` of one. Everything else — INSERT,
UPDATE, DELETE, CREATE, DROP, ALTER, COPY, EXPORT, ATTACH, DETACH, SET / RESET / USE,
INSTALL / LOAD, PRAGMA, CALL, CHECKPOINT, PIVOT (it creates an enum), transactions,
several statements at once — is refused with :class:`~tooltrail.errors.QueryError`.
``EXPLAIN ANALYZE`` runs its statement, so the explained statement is checked as well.
"""

from __future__ import annotations

from typing import Final

import duckdb

from tooltrail.errors import QueryError

_READ: Final = duckdb.StatementType.SELECT
_EXPLAIN: Final = duckdb.StatementType.EXPLAIN
_KEYWORD: Final = duckdb.token_type.keyword


def check_read_only(sql: str) -> str:
    """The one statement of ``sql`` if it only reads; raises QueryError otherwise."""
    statement = _single_statement(sql)
    if statement.type == _READ:
        return statement.query
    if statement.type == _EXPLAIN:
        _check_explained(statement.query)
        return statement.query
    raise QueryError(
        f"read-only: {_type_name(statement.type)} statements are refused; "
        "only a query that reads (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) can run"
    )


def _single_statement(sql: str) -> duckdb.Statement:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"cannot parse the query: {e}") from e
    if len(statements) != 1:
        raise QueryError(f"read-only: send exactly one statement, got {len(statements)}")
    return statements[0]


def _check_explained(query: str) -> None:
    """``query`` is ``EXPLAIN [ANALYZE] <statement>``: the statement must be a read."""
    tokens = duckdb.tokenize(query)  # (offset, kind); tokens[0] is EXPLAIN
    rest = 1
    if len(tokens) > 1 and tokens[1][1] == _KEYWORD and _word(query, tokens[1][0]) == "ANALYZE":
        rest = 2
    if len(tokens) <= rest:
        raise QueryError("read-only: EXPLAIN of nothing")
    inner = query[tokens[rest][0] :]
    try:
        explained = duckdb.extract_statements(inner)
    except duckdb.Error as e:
        # e.g. EXPLAIN (FORMAT json) ...: options are not supported here
        raise QueryError(f"read-only: cannot check the explained statement: {e}") from e
    if len(explained) != 1 or explained[0].type != _READ:
        kind = _type_name(explained[0].type) if explained else "empty"
        raise QueryError(f"read-only: EXPLAIN of a {kind} statement is refused")


def _word(text: str, offset: int) -> str:
    return text[offset:].split(None, 1)[0].upper()


def _type_name(kind: duckdb.StatementType) -> str:
    return str(kind.name).removesuffix("_STATEMENT")


__all__ = ["check_read_only"]
