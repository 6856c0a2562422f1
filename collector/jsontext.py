"""JSON from senders and files: an integer past Python's digit limit is bad input, named.

``json.loads`` turns an integer literal into an ``int``, and CPython refuses to convert one
longer than ``sys.get_int_max_str_digits()`` (4,300 by default) with a bare ValueError, not
a JSONDecodeError: every caller that caught only the latter answered 500 or printed a
traceback. :func:`loads` parses as ``json.loads`` does (no extra cost when nothing is
wrong); only when that limit is hit does it parse again, keeping the huge literal as text
(``tooltrail.policy.numbers``, which the policy's own readers use too), to name where it is.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from tooltrail.errors import BadInputError
from tooltrail.policy import numbers

_MAX_PATH: Final = 200


class HugeIntegerError(BadInputError):
    """A JSON integer too long to convert; the message names its path in the document."""


def _digit_limit() -> int:
    return sys.get_int_max_str_digits() or sys.maxsize  # 0 means no limit


def loads(data: str | bytes) -> Any:
    """``json.loads``, raising :class:`HugeIntegerError` (naming the field) instead of a
    bare ValueError for an integer past the digit limit. Other errors are json.loads'."""
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        raise
    except ValueError as e:
        if "integer string conversion" not in str(e):
            raise
    found = numbers.find_long_int(numbers.loads(data))
    path, digits = found if found is not None else ((), numbers.LongInt(""))
    where = _path_text(path)  # at most _MAX_PATH characters: the keys are the sender's
    raise HugeIntegerError(
        f"{where or 'the document'}: an integer of {len(digits.lstrip('-'))} digits, over the"
        f" {_digit_limit()}-digit limit (send it as a string if it is an id)"
    )


def _path_text(path: numbers.JsonPath) -> str:
    """``a.b[2].c``, cut to its last ``_MAX_PATH`` characters (then it starts with ``...``),
    built from the leaf up so a deep path costs no more than that."""
    parts: list[str] = []
    size = 0
    for key in reversed(path):
        part = f"[{key}]" if isinstance(key, int) else f".{key}"
        parts.append(part)
        size += len(part)
        if size > _MAX_PATH:
            return "..." + "".join(reversed(parts))[-_MAX_PATH:]
    return "".join(reversed(parts)).removeprefix(".")


__all__ = ["HugeIntegerError", "loads"]
