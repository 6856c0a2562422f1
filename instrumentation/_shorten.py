"""JSON for span attributes, shortened to fit: arguments whole up to a bound, results as a
preview. ``to_json`` keeps an over-long value a JSON object by cutting its long strings
(the keys and short values a policy matches on survive); ``truncate`` cuts a text.

Pure functions on values, no tooltrail state: the call's span (``_call``) and the gateway
use them alike.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from tooltrail._json import compact_encoder
from tooltrail.semconv import TRUNCATION_MARK

__all__ = ["MAX_ARGUMENTS_CHARS", "RESULT_PREVIEW_CHARS", "to_json", "truncate"]

# Arguments are the audit record, so they are kept whole up to a size that cannot swamp
# the export queue; the result is only a preview.
MAX_ARGUMENTS_CHARS: Final = 65_536
RESULT_PREVIEW_CHARS: Final = 1_024

# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))
# ``_ENCODER.encode`` without its per-call cost, built once and checked against json at
# import (tooltrail._json, shared with the collector). Without the circular-reference check:
# a circular structure ends in ``RecursionError`` instead of ``ValueError`` (``to_json``
# treats both alike) -- as long as the interpreter's recursion limit is low enough that the
# C stack outlasts it; ``to_json`` uses the checking encoder above ``_FAST_RECURSION_LIMIT``.
_encode: Final = compact_encoder(default=str)


# Above this recursion limit a cycle could overflow the C stack before RecursionError
# (a segfault of the host): the encoder with the circular-reference check is used then.
_FAST_RECURSION_LIMIT: Final = 4000


def to_json(value: Any, limit: int) -> str:
    """Compact JSON of ``value`` (``str()`` for what JSON cannot hold), at most ``limit``
    characters.

    Over the limit, the long strings inside are cut (each ending in ``TRUNCATION_MARK``)
    so the text stays a JSON object: the keys and the short values a policy matches on
    (``env: prod``) survive for after-the-fact decisions, replay and queries. Only when
    cutting strings cannot make it fit is the text itself cut (no longer valid JSON)."""
    try:
        if sys.getrecursionlimit() <= _FAST_RECURSION_LIMIT:
            text = _encode(value)
        else:
            text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):  # e.g. a circular structure
        text = json.dumps(repr(value), ensure_ascii=False)
    if len(text) <= limit:
        return text
    return _shortened(value, limit, len(text)) or truncate(text, limit)


# Strings are never cut shorter than this when shortening arguments to fit.
_MIN_KEPT_CHARS: Final = 32


def _shortened(value: Any, limit: int, length: int) -> str | None:
    """The JSON of ``value`` (``length`` characters) with every string longer than some
    cap cut to it, for a cap that makes it fit; None when no cap can.

    The cap is worked out from the strings' lengths (the text shrinks by what is cut off,
    less the marks added), so the value is encoded once or twice, not once per guess;
    bulk that is not strings (a long list of numbers) is known not to fit at once."""
    lengths = sorted(_string_lengths(value, 0), reverse=True)
    mark = len(TRUNCATION_MARK)
    cap = limit // 2
    while cap >= _MIN_KEPT_CHARS:
        saved = sum(n - cap - mark for n in lengths if n > cap + mark)
        if length - saved <= limit:
            try:
                text = _ENCODER.encode(_cut_strings(value, cap))
            except (TypeError, ValueError, RecursionError):
                return None
            if len(text) <= limit:
                return text
        cap //= 2
    return None


def _string_lengths(value: Any, depth: int) -> list[int]:
    """The lengths of the strings in ``value`` (keys aside) as the record writes them."""
    if isinstance(value, str):
        return [len(value)]
    if depth > _MAX_SHORTEN_DEPTH:
        return []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _string_lengths(v, depth + 1)]
    if isinstance(value, list | tuple):
        # Numbers skipped inline: a long list of ids costs a type check per item, no call.
        return [n for v in value if type(v) not in _NUMBERS for n in _string_lengths(v, depth + 1)]
    if value is None or isinstance(value, bool | int | float):
        return []
    try:
        return [len(str(value))]
    except Exception:
        return []


_MAX_SHORTEN_DEPTH: Final = 200
_NUMBERS: Final = frozenset({int, float, bool, type(None)})


def _cut_strings(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= cap else value[:cap] + TRUNCATION_MARK
    # The containers the encoder writes as JSON; anything else it writes as str().
    if isinstance(value, dict):
        return {k: _cut_strings(v, cap) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cut_strings(v, cap) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _cut_strings(str(value), cap)  # what the encoder's default=str would write


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
