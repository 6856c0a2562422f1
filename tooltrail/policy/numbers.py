"""Integers longer than Python reads or writes in decimal (``sys.get_int_max_str_digits``,
4,300 digits by default): ``int()``, ``str()`` and ``json`` raise ValueError on them, so
one arriving in a policy, in ``--args`` or in a landed row must be caught where it enters,
named, and never reach a print, a hash or a traceback."""

from __future__ import annotations

import decimal
import json
import re
import sys
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final

from tooltrail._json import loads_iterative

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


# Exact arithmetic on numbers of any size (no rounding, no overflow).
_EXACT: Final = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_PIECE_BITS: Final = 4096  # converted by Decimal(int) directly (a few hundred digits)


def decimal_text(value: int) -> str:
    """``str(value)`` for an int of any length, without the process-wide digit limit
    (``sys.set_int_max_str_digits`` would lift it for every thread).

    ``Decimal(int)`` alone takes quadratic time (34 s for a million digits); halving the
    binary representation and joining the halves with libmpdec's fast multiplication
    takes half a second (the method of CPython 3.12's ``_pylong``).
    """
    if fits_decimal(value):
        return str(value)
    powers: dict[int, decimal.Decimal] = {}

    def convert(n: int, bits: int) -> decimal.Decimal:
        # Recursion depth is log2(bits / 4096): 18 levels for a billion bits.
        if bits <= _PIECE_BITS:
            return decimal.Decimal(n)
        half = bits >> 1
        high = n >> half
        low = n - (high << half)
        power = powers.get(half)
        if power is None:
            power = powers[half] = _EXACT.power(decimal.Decimal(2), half)
        return _EXACT.add(convert(low, half), _EXACT.multiply(convert(high, bits - half), power))

    magnitude = abs(value)
    return ("-" if value < 0 else "") + str(convert(magnitude, magnitude.bit_length()))


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
    except RecursionError:
        # Nested deeper than json's recursion allows (10 KB of "["): read with an explicit
        # stack instead, so a deep argument is decided, not a crash that drops its span.
        if parse_constant is not None or parse_float is not None:
            raise  # the iterative reader has no hooks: the caller reports the depth
        return _loads_deep(text.decode() if isinstance(text, bytes) else text, long_int)


# A JSON string (skipped whole, so digits inside one are left alone), a quote that opens
# no complete string (the text is not JSON: stop there, so no quote is scanned to the end
# twice and the pass stays linear), or an integer longer than the digit limit (not part
# of a float: no "." or exponent next to it).
_STRING_OR_LONG_INT: Final = r'("(?:[^"\\]|\\.)*+")|(")|(?<![\d.eE+-])(-?\d{%d,})(?![\d.eE])'


def _loads_deep(text: str, long_int: Callable[[str], str]) -> Any:
    """``loads`` for a document nested too deep for ``json``: the iterative reader, with
    too-long integers kept as text as ``loads`` keeps them (the reader has no hook)."""
    try:
        return loads_iterative(text)
    except ValueError as e:
        limit = max_digits()
        if "integer string conversion" not in str(e) or long_int is not str or not limit:
            raise
    # Quote each too-long integer: it then reads as the string of its digits, which is
    # what long_int=str makes of it.
    pattern = re.compile(_STRING_OR_LONG_INT % (limit + 1))
    return loads_iterative(pattern.sub(_quote_long_int, text))


def _quote_long_int(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return m.group(1)
    if m.group(2) is not None:
        raise ValueError(f"unterminated string at offset {m.start()}")
    return f'"{m.group(3)}"'


def find_long_int(value: Any) -> tuple[JsonPath, LongInt] | None:
    """The first ``LongInt`` inside a parsed document and where it is (iterative: JSON
    nests as deep as the parser allows).

    Each node visited keeps only its parent's place and its own key; the path is built for
    the one found. Building every node's path would cost key length x depth^2 (a 0.9 MB
    body nested 900 deep reached 400 MB)."""
    # (index of the parent in `seen`, key or list index, value); the root's parent is -1
    seen: list[tuple[int, str | int, Any]] = [(-1, "", value)]
    stack = [0]
    while stack:
        at = stack.pop()
        node = seen[at][2]
        if isinstance(node, LongInt):
            return _path_of(seen, at), node
        children = (
            node.items()
            if isinstance(node, dict)
            else enumerate(node)
            if isinstance(node, list)
            else ()
        )
        first = len(seen)
        seen.extend((at, k, v) for k, v in children)
        stack.extend(reversed(range(first, len(seen))))  # document order
    return None


def _path_of(seen: list[tuple[int, str | int, Any]], at: int) -> JsonPath:
    path: list[str | int] = []
    while at > 0:
        parent, key, _ = seen[at]
        path.append(key)
        at = parent
    return tuple(reversed(path))
