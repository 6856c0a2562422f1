"""Integers longer than Python reads or writes in decimal (``sys.get_int_max_str_digits``,
4,300 digits by default): ``int()``, ``str()`` and ``json`` raise ValueError on them, so
one arriving in a policy, in ``--args`` or in a landed row must be caught where it enters,
named, and never reach a print, a hash or a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any

JsonPath = tuple[str | int, ...]


class LongInt(str):
    """A JSON integer too long to read as a number: its digits, kept as text."""

    __slots__ = ()


@lru_cache(maxsize=4)
def _bound(limit: int) -> int:
    return int(10**limit)


def max_digits() -> int:
    """How many decimal digits an integer may have here (0: no limit)."""
    return sys.get_int_max_str_digits()


def fits_decimal(value: int) -> bool:
    """Whether ``value`` can be written in decimal (``str``, ``json.dumps``)."""
    limit = max_digits()
    return limit == 0 or -_bound(limit) < value < _bound(limit)


def too_long_int_message(digits: int) -> str:
    return (
        f"an integer of {digits:,} digits is longer than the {max_digits():,} digits a "
        "number may have (quote it to keep it as text)"
    )


def _int_or(text: Callable[[str], str]) -> Callable[[str], int | str]:
    def parse_int(digits: str) -> int | str:
        limit = max_digits()
        if limit and len(digits) - digits.startswith("-") > limit:
            return text(digits)
        return int(digits)

    return parse_int


def loads(
    text: str | bytes,
    long_int: Callable[[str], str] = LongInt,
    *,
    parse_constant: Callable[[str], Any] | None = None,
    parse_float: Callable[[str], Any] | None = None,
) -> Any:
    """``json.loads``, where an integer too long to read is kept as its digits (by default
    a ``LongInt``, for ``find_long_int`` to name it; ``long_int=str`` keeps plain text)
    instead of failing the whole document. Normal documents pay nothing: the hook is used
    only on a second parse after the limit was hit."""
    try:
        return json.loads(text, parse_constant=parse_constant, parse_float=parse_float)
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise
    return json.loads(
        text,
        parse_int=_int_or(long_int),
        parse_constant=parse_constant,
        parse_float=parse_float,
    )


def find_long_int(value: Any) -> tuple[JsonPath, LongInt] | None:
    """The first ``LongInt`` inside a parsed document and where it is (iterative: JSON
    nests as deep as the parser allows)."""
    stack: list[tuple[JsonPath, Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, LongInt):
            return path, node
        if isinstance(node, dict):
            stack.extend(((*path, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return None
