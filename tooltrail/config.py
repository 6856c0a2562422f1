"""Where things live: data directory and environment variables (one place to read them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

ENV_DATA: Final = "TOOLTRAIL_DATA"
ENV_POLICY: Final = "TOOLTRAIL_POLICY"
ENV_ENFORCE: Final = "TOOLTRAIL_ENFORCE"
ENV_AGENT_NAME: Final = "TOOLTRAIL_AGENT_NAME"
ENV_SESSION_ID: Final = "TOOLTRAIL_SESSION_ID"
ENV_REDACT: Final = "TOOLTRAIL_REDACT"
ENV_CAPTURE_RESULTS: Final = "TOOLTRAIL_CAPTURE_RESULTS"
ENV_SESSION_CONTROL: Final = "TOOLTRAIL_SESSION_CONTROL"
ENV_COLLECTOR_URL: Final = "TOOLTRAIL_COLLECTOR_URL"
ENV_COLLECTOR_TOKEN: Final = "TOOLTRAIL_COLLECTOR_TOKEN"
DEFAULT_DATA_DIR: Final = "tooltrail-data"

SPANS_DIR: Final = "spans"
DUCKDB_FILE: Final = "tooltrail.duckdb"
CONTROL_FILE: Final = "control.sqlite"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The explicit argument, else ``$TOOLTRAIL_DATA``, else ./tooltrail-data."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    return Path(os.environ.get(ENV_DATA) or DEFAULT_DATA_DIR)


def spans_dir(root: Path) -> Path:
    return root / SPANS_DIR


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable (1/true/yes/on, case-insensitive)."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}
