"""Keep ``<data>/tooltrail.duckdb`` present and current once anything has landed, from
processes that must not import duckdb (an instrumented agent, the collector).

``tooltrail.duckdb`` is what an analyst opens with the DuckDB CLI. Its views read the span
files through an absolute glob, so new files show up without a rebuild: the file needs
building once per data directory, after its first span file exists, and again only when
the views' SQL changed (another tooltrail version) or the directory moved. Building it
needs duckdb, which an agent process never imports, so the first landing of a writer
(:class:`~tooltrail.collector.writer.ParquetSpanWriter`) that finds the file missing or
stale starts ``python -m tooltrail.analytics.build_file <data>``: detached (its own
session, no pipes), never waited for by the landing, serialized by a lock file, its
failure logged. ``build_duckdb_file`` (demo, ingest, compact, and that subprocess) writes
the stamp ``<data>/.tooltrail.duckdb.stamp`` naming the SQL and the directory it was
built for; a file without a matching stamp is stale.

``TOOLTRAIL_DUCKDB_FILE=0`` turns the automatic build off (the explicit builds remain).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

from tooltrail import config

_log = logging.getLogger(__name__)

STAMP_FILE: Final = ".tooltrail.duckdb.stamp"
LOCK_FILE: Final = ".tooltrail.duckdb.lock"
ENV_SWITCH: Final = "TOOLTRAIL_DUCKDB_FILE"
BUILDER_MODULE: Final = "tooltrail.analytics.build_file"


@functools.cache
def _sql_digest() -> str:
    # The analytics package's SQL, read as files: importing tooltrail.analytics would
    # import duckdb. find_spec locates the package without running it.
    spec = importlib.util.find_spec("tooltrail.analytics")
    digest = hashlib.sha256()
    for location in (spec.submodule_search_locations or []) if spec else []:
        for sql in sorted((Path(location) / "sql").glob("*.sql")):
            digest.update(sql.name.encode() + b"\0" + sql.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def views_stamp(root: Path) -> str:
    """What the stamp of a current ``tooltrail.duckdb`` in ``root`` (absolute) says."""
    return f"{_sql_digest()} {root}\n"


def is_current(root: Path) -> bool:
    """Whether ``root``'s tooltrail.duckdb exists and was built by these views for it."""
    try:
        stamp = (root / STAMP_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return stamp == views_stamp(root) and (root / config.DUCKDB_FILE).is_file()


def ensure_duckdb_file(data_dir: str | os.PathLike[str]) -> None:
    """Start building ``<data>/tooltrail.duckdb`` in the background when it is missing or
    stale. Never raises and never waits: landing must not depend on it."""
    if os.environ.get(ENV_SWITCH, "").strip() == "0":
        return
    try:
        root = Path(data_dir).expanduser().resolve()
        if not is_current(root):
            _start_builder(root)
    except Exception as e:  # a tracing side job: logged, never the caller's failure
        _log.warning("could not start building %s: %s", Path(data_dir) / config.DUCKDB_FILE, e)


def _start_builder(root: Path) -> None:
    proc = subprocess.Popen(  # our own module, run by this interpreter
        [sys.executable, "-m", BUILDER_MODULE, str(root)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        # its one-line error (if any) goes where this process logs
        start_new_session=True,  # not killed with the agent's process group (Ctrl-C)
        close_fds=True,
    )
    # Reaped when it ends, so no zombie is left while the agent keeps running.
    threading.Thread(target=proc.wait, name="tooltrail-duckdb-file", daemon=True).start()


__all__ = [
    "ENV_SWITCH",
    "LOCK_FILE",
    "STAMP_FILE",
    "ensure_duckdb_file",
    "is_current",
    "views_stamp",
]
