"""Shared by the approvals tests: wait for a condition, wait for pending requests, run
the real command line, forge a stored request."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from git_support import clean_env

from tooltrail.control import ApprovalRecord, ControlStore, arguments_hash, canonical_json

_BIN = Path(sys.executable).parent
CLI = (
    [str(_BIN / "tooltrail")]
    if (_BIN / "tooltrail").exists()
    else [sys.executable, "-c", "from tooltrail.cli import cli; cli()"]
)


def run_cli(data: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """The real command line, as a separate process: ``tooltrail CMD --data DATA ARGS``."""
    return subprocess.run(
        [*CLI, args[0], "--data", str(data), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def forge_request(data: Path, approval_id: str, shown: Mapping[str, Any]) -> None:
    """What someone with write access to the store could do: make a request show other
    arguments, with their public hash recomputed so the row looks consistent."""
    con = sqlite3.connect(data / "control.sqlite")
    con.execute(
        "UPDATE approvals SET arguments = ?, arguments_hash = ? WHERE approval_id = ?",
        (canonical_json(shown), arguments_hash(shown), approval_id),
    )
    con.commit()
    con.close()


def set_status(data: Path, approval_id: str, status: str, by: str | None = None) -> None:
    """A forger's decision: the row's status (and decider) set with plain SQL."""
    con = sqlite3.connect(data / "control.sqlite")
    con.execute(
        "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ? WHERE approval_id = ?",
        (status, by, time.time(), approval_id),
    )
    con.commit()
    con.close()


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pending(data: Path, n: int, timeout: float) -> list[ApprovalRecord]:
    """Wait until ``n`` requests are pending; return them (oldest first). Does not create
    the store by looking (an agent process may not have filed anything yet)."""

    def look() -> list[ApprovalRecord] | None:
        if not (data / "control.sqlite").exists():
            return None
        with ControlStore(data) as store:
            found = store.list_approvals("pending")
        return found if len(found) >= n else None

    records: list[ApprovalRecord] = wait_for(look, f"{n} pending approval request(s)", timeout)
    return records
