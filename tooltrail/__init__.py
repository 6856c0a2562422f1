"""tooltrail: an OpenTelemetry-native audit trail and policy gate for AI-agent tool calls."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
