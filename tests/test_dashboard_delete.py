"""Deleting a session from the dashboard (issue 17): only a signed-in admin sees "Delete
session", only for a terminal session, with a reason and a confirmation; it is the
library call `tooltrail delete` makes, so it leaves the same signed tombstone naming the
admin, the page says what went, the session leaves the lists and `verify` stays clean.
Other roles see nothing; single-user mode says why it cannot delete here. AppTest over
the packaged app and data landed through the real exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from access_support import people
from dashboard_support import FAILED, RELEASE, TRIAGE, Seeded, app_test, goto, seed, table, texts

from tooltrail.collector import chain
from tooltrail.collector.verify import verify
from tooltrail.collector.writer import iter_span_files
from tooltrail.dashboard.data import DELETE_NEEDS_ACCESS


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Seeded:
    # This test's chain key (landing and the dashboard's tombstone), never the user's.
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))
    return seed(tmp_path / "data")


def _sign_in(at: Any, name: str, credential: str) -> Any:
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_credential").input(credential)
    return at.button(key="signin-submit").click().run()


def _delete_keys(at: Any) -> set[str]:
    return {b.key for b in at.button if b.key and b.key.endswith("-delete")}


def _landed_sessions(root: Path) -> set[str]:
    return {s for p in iter_span_files(root) for s in pq.read_table(p)["session_id"].to_pylist()}


def _tombstones(root: Path) -> list[dict[str, Any]]:
    return [
        ln.record
        for ln in chain.read_ledger(root)
        if ln.record and ln.record.get("kind") == "tombstone"
    ]


def test_an_admin_deletes_a_terminal_session_with_a_reason_and_a_confirmation(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    # The seed's approvals were decided in single-user mode (unsigned), which verify
    # reports once access control is on: the deletion must add no break to those.
    before = verify(seeded.root)
    assert {b.kind for b in before.breaks} <= {"control"}, before.breaks
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "admin", creds["admin"])
    goto(at, "session", session=FAILED)
    delete = at.button(key=f"session-{FAILED}-delete")
    assert delete.disabled  # no reason, not confirmed yet
    at.text_input(key=f"session-{FAILED}-delete-reason").input("customer request #42").run()
    assert at.button(key=f"session-{FAILED}-delete").disabled  # still not confirmed
    confirm = at.checkbox(key=f"session-{FAILED}-delete-confirm")
    # A session id is the agent's to choose: in a widget label (rendered as Markdown) it
    # goes as inline code, never as Markdown that could hold a link or a beacon image.
    assert confirm.label == f"Yes, delete `{FAILED}` for good"
    confirm.check().run()
    at.button(key=f"session-{FAILED}-delete").click().run()

    assert not at.error, texts(at.error)
    notice = " ".join(texts(at.success))
    assert f"Deleted session `{FAILED}` as admin" in notice
    (tomb,) = _tombstones(seeded.root)
    assert (tomb["by"], tomb["sessions"], tomb["reason"]) == (
        "admin",
        [FAILED],
        "customer request #42",
    )
    assert f"{tomb['rows']} rows" in notice and tomb["rows"] > 0
    assert FAILED not in _landed_sessions(seeded.root)
    assert {RELEASE, TRIAGE} <= _landed_sessions(seeded.root)  # nothing else went
    report = verify(seeded.root)
    assert report.breaks == before.breaks
    assert (report.tombstones, report.rows) == (1, before.rows - tomb["rows"])
    # Gone from the lists.
    goto(at, "sessions")
    ids = set(table(at, "sessions_table_").value["session_id"])
    assert FAILED not in ids and RELEASE in ids


@pytest.mark.parametrize("name", ["vic", "alice", "olga"])  # viewer, approver, operator
def test_other_roles_see_no_delete(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), name, creds[name])
    goto(at, "session", session=FAILED)
    assert at.metric  # the page is there ...
    assert not _delete_keys(at)  # ... without a delete
    assert not [e for e in at.expander if "Delete session" in str(e.label)]


def test_a_session_that_is_not_terminal_offers_no_delete(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "admin", creds["admin"])
    goto(at, "session", session=TRIAGE)  # active
    delete = at.button(key=f"session-{TRIAGE}-delete")
    assert delete.disabled and "this one is active" in str(delete.help)
    assert not [c for c in at.checkbox if c.key and "delete-confirm" in c.key]
    assert _tombstones(seeded.root) == []


def test_single_user_mode_says_deletion_needs_access_control(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    at.sidebar.text_input(key="operator").input("alice").run()
    goto(at, "session", session=FAILED)
    assert not _delete_keys(at)
    assert any(
        "Deleting from the dashboard needs access control on" in c for c in texts(at.caption)
    )
    assert DELETE_NEEDS_ACCESS.startswith("Deleting from the dashboard")
    assert FAILED in _landed_sessions(seeded.root)


def test_the_write_checks_the_role_again_whatever_the_page_offered(seeded: Seeded) -> None:
    """``dashboard.data.delete_session`` refuses whoever the page would not have offered
    the button: an operator, a typed name, any name in single-user mode; and a session
    that is not terminal even for an admin. Nothing is deleted, no tombstone."""
    from tooltrail.dashboard import data
    from tooltrail.dashboard.auth import Identity
    from tooltrail.errors import AccessDeniedError, BadInputError

    with pytest.raises(AccessDeniedError, match="needs access control on"):
        data.delete_session(seeded.root, FAILED, Identity("alice", None, "single-user"), "x")
    people(seeded.root)
    for who in (Identity("olga", "operator", "local"), Identity("alice", None, "single-user")):
        with pytest.raises(AccessDeniedError):
            data.delete_session(seeded.root, FAILED, who, "x")
    with pytest.raises(BadInputError, match="only completed, failed, canceled or abandoned"):
        data.delete_session(seeded.root, TRIAGE, Identity("admin", "admin", "local"), "x")
    assert {FAILED, TRIAGE} <= _landed_sessions(seeded.root)
    assert _tombstones(seeded.root) == []
