"""Shared by the approvals tests: wait for a condition, wait for pending requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tooltrail.control import ApprovalRecord, ControlStore


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
