"""Durations as policy files and the command line write them: ``30s``, ``10m``, ``1h30m``,
``2d``, ``1w``, or (in a policy file) a bare number of seconds; and ``--since`` windows (a
duration with its unit, or ``all``).
"""

from __future__ import annotations

import math
import re
from typing import Final

from tooltrail.errors import BadInputError

SINCE_ALL: Final = "all"
"""The ``--since`` value meaning no time limit."""
MAX_SINCE_S: Final = 36_500 * 86_400.0
"""The longest ``--since`` window (36500d, about a century): far beyond any landed data, and
well inside what ``datetime`` can count back from now (a century of days is fine, a billion
days overflows)."""
_UNITS: Final = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_DURATION: Final = re.compile(r"(?:(\d+(?:\.\d+)?)([wdhms]))+?")
_WHOLE: Final = re.compile(r"^(?:\d+(?:\.\d+)?[wdhms])+$")
_BARE: Final = re.compile(r"\d+(?:\.\d+)?")


def _seconds(value: str | float) -> float:
    """Seconds ``value`` spells, checking only its form: may be 0 or (huge numbers) inf."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().lower()
    if _BARE.fullmatch(text):
        return float(text)
    if _WHOLE.match(text):
        return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
    raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 10m, 1h30m, 2d or seconds)")


def parse_duration(value: str | float) -> float:
    """Seconds in ``value`` (positive and finite); raises ValueError naming the accepted
    forms. Callers bound the maximum they can use (approval timeouts, ``--since``)."""
    seconds = _seconds(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """``600.0`` -> ``10m``; the inverse of parse_duration for whole units."""
    rest = round(seconds)
    if rest != seconds or rest == 0:
        return f"{seconds:g}s"
    out = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNITS[unit])
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


def parse_since_seconds(
    value: str, *, option: str = "--since", accepts_all: bool = True
) -> float | None:
    """The look-back window a ``--since`` value means, in seconds; None for ``all``.

    Accepts the durations ``parse_duration`` does with a unit (``30s``, ``90m``, ``2h``,
    ``1h30m``, ``7d``, ``1w``; case and surrounding spaces ignored) and ``all`` (no limit).
    Raises BadInputError, its message starting with ``option``, for anything else: a bare
    number (``--since 2`` meant 2 seconds, an empty window that made every rule look dead,
    where 2 days or 2 hours was meant), not a duration, not positive, or longer than
    MAX_SINCE_S (``36500d``). ``accepts_all=False``: the caller refuses ``all`` (it still
    gets None for it and says why), so no message suggests it.

    Example:

        parse_since_seconds("2h")  # 7200.0
    """
    text = value.strip().lower()
    if text == SINCE_ALL:
        return None
    if _BARE.fullmatch(text):
        raise BadInputError(
            f"{option}: {value!r} has no unit: write it with one, e.g. {text}d (days), "
            f"{text}h (hours), {text}m (minutes) or {text}s (seconds)"
        )
    try:
        seconds = _seconds(value)
    except ValueError as e:
        raise BadInputError(f"{option}: {e}") from e
    # Checked before positivity: a number too long for a float is inf, i.e. too long.
    if seconds > MAX_SINCE_S:
        hint = f" (use {SINCE_ALL!r} for no limit)" if accepts_all else ""
        raise BadInputError(
            f"{option}: {value!r} is longer than the maximum {format_duration(MAX_SINCE_S)}{hint}"
        )
    if seconds <= 0:
        raise BadInputError(f"{option}: {value!r} is not a positive duration")
    return seconds
