"""The project's own small exception classes.

Library code raises these; the CLI turns them into ``click.ClickException`` (exit 2 for
bad input) and the dashboard shows their message. Third-party errors (DuckDB, pyarrow,
YAML) are converted where caught, with ``raise ... from e``.
"""

from __future__ import annotations


class TooltrailError(Exception):
    """Base class for every error tooltrail raises on purpose."""


class BadInputError(TooltrailError):
    """Input from a user or file is malformed; the message names what and where."""


class QueryError(TooltrailError):
    """A query over the landed data failed (bad SQL, refused write, missing column)."""


class IngestError(BadInputError):
    """An OTLP file could not be read; nothing from it was landed."""


class PolicyError(BadInputError):
    """A policy file could not be loaded or validated."""


class StoreError(TooltrailError):
    """The data directory or control store cannot be read or written."""


class AccessDeniedError(BadInputError):
    """An authenticated identity whose role may not do what it asked (HTTP 403, exit 2)."""


class NotAuthenticatedError(AccessDeniedError):
    """No credential, or one that does not verify (unknown, disabled, rotated: HTTP 401)."""


class TamperedError(TooltrailError):
    """A control record or decision does not verify: edited, deleted, forged or unsigned
    where a signature is required. Whoever would act on it refuses (fail closed)."""
