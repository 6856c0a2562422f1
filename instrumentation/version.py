"""Version of the tooltrail instrumentation (the distribution's version)."""

from __future__ import annotations

from tooltrail import __version__

__all__ = ["__version__"]
