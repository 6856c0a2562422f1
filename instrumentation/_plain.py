"""Tool arguments as JSON values: what the policy decides on, and what the span records.

A Python tool can take a ``pathlib.Path``, ``bytes``, a ``set``, a ``Decimal``, an enum or
a pydantic model. The policy engine matches strings, numbers, booleans, lists and
mappings, and the span records JSON; deciding on the raw objects let a ``Path`` slip past a
``path: "/etc/*"`` rule while the record showed ``"/etc/passwd"`` (and a replay of the same
policy then denied it). So every call is decided on the JSON form of its arguments, the
form the record keeps, and a replay sees exactly what the call saw.

Arguments that are already plain JSON values (the common case, and every MCP call) are
returned as they are, after one type check per value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import numbers
import os
import uuid
from collections.abc import Mapping
from typing import Any, Final

_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
# Deeper than this, a value is recorded as its str() (cycles and pathological nesting end).
_MAX_DEPTH: Final = 64


def plain_arguments(arguments: Mapping[str, Any]) -> Mapping[str, Any]:
    """``arguments`` with every value in its JSON form (``arguments`` itself when it is).

    Total: a value that cannot be converted (a dataclass holding a lock, a model whose
    dump raises) is taken as its ``str()``, as the record's encoder writes it, so an odd
    argument never makes a call fail closed or run unrecorded."""
    for value in arguments.values():
        if type(value) not in _SCALARS and not _is_plain(value, 0):
            return {_key(k): _safe_plain(v, 0) for k, v in arguments.items()}
    return arguments


def _safe_plain(value: Any, depth: int) -> Any:
    try:
        return _plain(value, depth)
    except Exception:
        return _text(value)


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # even str() raises: name the type, never the call's failure
        return f"<unprintable {type(value).__name__}>"


def _is_plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return True
    if depth >= _MAX_DEPTH:
        return False
    if kind is list or kind is tuple:
        return all(_is_plain(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _key(key: Any) -> str:
    """A mapping key as JSON writes it."""
    if isinstance(key, str):
        return str.__str__(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    return str(key)


def _plain(value: Any, depth: int) -> Any:
    if type(value) in _SCALARS:
        return value
    if depth >= _MAX_DEPTH:
        return _text(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, depth + 1)
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, as JSON writes a str subclass
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)  # NaN, sNaN, Infinity: as JSON would need them spelled
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {_key(k): _safe_plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe_plain(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_safe_plain(v, depth + 1) for v in value), key=repr)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        return path if isinstance(path, str) else path.decode("utf-8", "backslashreplace")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    dump = getattr(value, "model_dump", None)  # pydantic models
    if callable(dump):
        return _safe_plain(dump(mode="json"), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Field by field: dataclasses.asdict deep-copies, which fails on locks and sockets.
        return {
            f.name: _safe_plain(getattr(value, f.name), depth + 1)
            for f in dataclasses.fields(value)
        }
    return _text(value)  # what the record's JSON encoder writes for anything else


__all__ = ["plain_arguments"]
