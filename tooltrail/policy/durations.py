"""Durations as policy files and the command line write them: ``30s``, ``10m``, ``1h30m``,
``2d``, ``1w``, or a bare number of seconds."""

from __future__ import annotations

import math
import re
from typing import Final

_UNITS: Final = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_DURATION: Final = re.compile(r"(?:(\d+(?:\.\d+)?)([wdhms]))+?")
_WHOLE: Final = re.compile(r"^(?:\d+(?:\.\d+)?[wdhms])+$")


def parse_duration(value: str | float) -> float:
    """Seconds in ``value``; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _WHOLE.match(text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text))
        else:
            raise ValueError(
                f"{value!r} is not a duration (use e.g. 30s, 10m, 1h30m, 2d or seconds)"
            )
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
