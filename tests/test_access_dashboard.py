"""The dashboard with access control on and no sign-in yet: its decision and session-control
buttons fail closed (issue 16). On main a browser that types a name decides as that name."""

from __future__ import annotations

from pathlib import Path

import pytest
from access_support import add
from dashboard_support import PENDING_ANYONE, TRIAGE, Seeded, app_test, goto, seed, texts

from tooltrail.control import ControlStore
from tooltrail.dashboard.data import SIGN_IN_MISSING


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


def test_with_access_control_on_the_dashboard_decides_nothing(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(seeded.root, "user", "alice", "admin", None)
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    at.sidebar.text_input(key="operator").input("alice").run()
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    with ControlStore(seeded.root) as store:
        record = store.get(PENDING_ANYONE)
    assert (record.status, record.decided_by) == ("pending", None)
    assert any(SIGN_IN_MISSING in e for e in texts(at.error))
    # Session control too.
    goto(at, "session", session=TRIAGE)
    at.button(key=f"session-{TRIAGE}-pause").click().run()
    with ControlStore(seeded.root) as store:
        assert store.session_state(TRIAGE) == "running"
    assert any(SIGN_IN_MISSING in e for e in texts(at.error))
