"""tooltrail: an OpenTelemetry-native audit trail and policy gate for AI-agent tool calls."""

from __future__ import annotations

__version__ = "0.1.0"

# Every process that uses tooltrail scrubs its tooltrail.* log records (tooltrail/logscrub.py).
from tooltrail.logscrub import install_log_scrubbing as _install_log_scrubbing

_install_log_scrubbing()

__all__ = ["__version__"]
