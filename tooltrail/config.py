"""Where things live: data directory and environment variables (one place to read them)."""

from __future__ import annotations

import logging
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
# How long after its last activity a session still counts as active (then, when it
# promised an end record and none came, abandoned): a duration, e.g. 30s, 10m.
ENV_IDLE_WINDOW: Final = "TOOLTRAIL_IDLE_WINDOW"
ENV_COLLECTOR_URL: Final = "TOOLTRAIL_COLLECTOR_URL"
ENV_COLLECTOR_TOKEN: Final = "TOOLTRAIL_COLLECTOR_TOKEN"
# A user's credential for the CLI when access control is on (wins over `tooltrail login`).
ENV_TOKEN: Final = "TOOLTRAIL_TOKEN"
# Where `tooltrail login` keeps credentials (default $XDG_CONFIG_HOME/tooltrail).
ENV_CONFIG_DIR: Final = "TOOLTRAIL_CONFIG_DIR"
# Deciders' public keys pinned in a file the agent's account cannot write: whoever releases
# a held call verifies decisions against it (docs/SECURITY.md, "Signed decisions").
ENV_TRUST_ROOT: Final = "TOOLTRAIL_TRUST_ROOT"
# The dashboard's relay credential (`tooltrail users add-relay`), when not given in its
# secrets.toml as [tooltrail] oidc_signer: signs OpenID sign-ins' decisions.
ENV_OIDC_SIGNER: Final = "TOOLTRAIL_OIDC_SIGNER"
# "0" leaves SIGTERM alone (see docs/INSTRUMENTATION.md, "Processes"): a Python handler runs
# only when the main thread runs Python code, so a process blocked in C code would outlive
# SIGTERM until that call returns.
ENV_SIGTERM_FLUSH: Final = "TOOLTRAIL_SIGTERM_FLUSH"
DEFAULT_DATA_DIR: Final = "tooltrail-data"

_log = logging.getLogger(__name__)

SPANS_DIR: Final = "spans"
DUCKDB_FILE: Final = "tooltrail.duckdb"
CONTROL_FILE: Final = "control.sqlite"
ACCESS_FILE: Final = "access.sqlite"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The explicit argument, else ``$TOOLTRAIL_DATA``, else ./tooltrail-data."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    return Path(os.environ.get(ENV_DATA) or DEFAULT_DATA_DIR)


def config_dir() -> Path:
    """``$TOOLTRAIL_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/tooltrail``, else
    ``~/.config/tooltrail``: per-user settings (the credentials `tooltrail login` keeps)."""
    explicit = os.environ.get(ENV_CONFIG_DIR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tooltrail"


def spans_dir(root: Path) -> Path:
    return root / SPANS_DIR


_TRUE: Final = frozenset({"1", "true", "yes", "y", "on", "enable", "enabled"})
_FALSE: Final = frozenset({"0", "false", "no", "n", "off", "disable", "disabled"})


def env_flag(name: str, default: bool = False, *, unrecognized: bool | None = None) -> bool:
    """Read a yes/no environment variable (case-insensitive); unset or empty: ``default``.

    A value that is neither yes nor no is logged and read as ``unrecognized`` (default:
    ``default``). Security switches pass ``unrecognized=True`` so that a typo such as
    ``TOOLTRAIL_REDACT=enabeld`` keeps the protection on instead of silently dropping it.
    """
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    result = default if unrecognized is None else unrecognized
    _log.warning("%s=%r is neither yes nor no; using %s", name, raw, result)
    return result
