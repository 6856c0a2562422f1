"""Dashboard sign-in with access control on (issue 16): nothing is shown before sign-in,
decisions are recorded as the signed-in user (no typed name), each action is offered
only to roles that may take it, a rotated or disabled user is signed out at the next
click; in single-user mode the decision pages say so. AppTest over the packaged app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from access_support import add, invoke, people
from dashboard_support import (
    PENDING_ANYONE,
    PENDING_MANAGERS,
    TRIAGE,
    Seeded,
    app_test,
    decided,
    goto,
    seed,
    texts,
)

from tooltrail import dashboard
from tooltrail.control import ControlStore
from tooltrail.dashboard.auth import BAD_SIGN_IN
from tooltrail.errors import BadInputError


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


def _sign_in(at: Any, name: str, credential: str) -> Any:
    at.text_input(key="signin_name").input(name)
    at.text_input(key="signin_credential").input(credential)
    return at.button(key="signin-submit").click().run()


def _signin_page(at: Any) -> bool:
    return bool([t for t in at.text_input if t.key == "signin_credential"])


def _keys(at: Any) -> set[str]:
    return {b.key for b in at.button if b.key}


def test_nothing_is_shown_before_sign_in_and_sign_out_ends_it(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert _signin_page(at)
    assert not at.metric and not at.dataframe  # no data before sign-in
    assert not [t for t in at.sidebar.text_input if t.key == "operator"]  # no name field

    # A wrong credential, another user's credential, an agent's: all refused alike.
    for name, credential in (
        ("alice", "ttu_0123456789abcdef_" + "A" * 43),
        ("alice", creds["bob"]),
        ("bot-a", creds["bot-a"]),
    ):
        _sign_in(at, name, credential)
        assert _signin_page(at) and not at.metric
        assert any(BAD_SIGN_IN in e for e in texts(at.error)), texts(at.error)
    # The credential never stays in a widget once the form is done.
    assert at.text_input(key="signin_credential").value == ""

    _sign_in(at, "alice", creds["alice"])
    assert not _signin_page(at) and at.metric
    assert any("alice" in m for m in texts(at.sidebar.markdown))

    at.sidebar.button(key="signout").click().run()
    assert _signin_page(at) and not at.metric


def test_a_viewer_sees_no_decision_or_control_button(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "vic", creds["vic"])
    assert at.metric
    assert not [k for k in _keys(at) if "approve" in k or "deny" in k]
    assert any("may read, not decide" in i for i in texts(at.info))
    goto(at, "approvals")
    assert not [k for k in _keys(at) if "approve" in k or "deny" in k]
    goto(at, "session", session=TRIAGE)
    assert not [k for k in _keys(at) if k.endswith(("-pause", "-cancel", "-resume"))]
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)


def test_an_approver_decides_as_themselves_only_where_the_rule_lists_them(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    creds["dana"] = add(seeded.root, "user", "dana", "approver", creds["admin"])
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "alice", creds["alice"])
    # PENDING_MANAGERS' rule lists dana and lee: alice's buttons are disabled, saying why.
    deny = at.button(key=f"overview-deny-{PENDING_MANAGERS}")
    assert deny.disabled and "Only dana, lee may decide" in str(deny.help)
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert decided(seeded, PENDING_ANYONE) == ("approved", "alice")
    assert f"Approved {PENDING_ANYONE} as alice" in texts(at.toast)
    # An approver may not pause, resume or cancel: no such button.
    goto(at, "session", session=TRIAGE)
    assert not [k for k in _keys(at) if k.endswith(("-pause", "-cancel"))]

    at.sidebar.button(key="signout").click().run()
    _sign_in(at, "dana", creds["dana"])
    goto(at, "approvals")
    at.button(key=f"approvals-deny-{PENDING_MANAGERS}").click().run()
    assert decided(seeded, PENDING_MANAGERS) == ("denied", "dana")


def test_an_operator_controls_sessions_as_themselves(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "olga", creds["olga"])
    goto(at, "session", session=TRIAGE)
    at.button(key=f"session-{TRIAGE}-pause").click().run()
    with ControlStore(seeded.root) as store:
        assert store.session_state(TRIAGE) == "paused"
        assert store.control_history(TRIAGE)[-1].actor == "olga"


def test_a_rotated_or_disabled_user_is_signed_out_at_the_next_click(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "alice", creds["alice"])
    assert at.metric
    code, _, err = invoke(seeded.root, "users", "rotate", "alice", token=creds["admin"])
    assert code == 0, err
    # The page was drawn before the rotation; its Approve click must decide nothing.
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)
    assert _signin_page(at) and not at.metric
    assert any("signed out" in w for w in texts(at.warning))

    _sign_in(at, "bob", creds["bob"])
    assert at.metric
    code, _, err = invoke(seeded.root, "users", "disable", "bob", token=creds["admin"])
    assert code == 0, err
    at.button(key=f"overview-deny-{PENDING_ANYONE}").click().run()
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)
    assert _signin_page(at)


def test_single_user_mode_works_with_a_typed_name_and_says_so(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert not _signin_page(at)
    assert any("Single-user mode" in c for c in texts(at.caption))
    at.sidebar.text_input(key="operator").input("alice").run()
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert decided(seeded, PENDING_ANYONE) == ("approved", "alice")
    goto(at, "approvals")
    assert any("Single-user mode" in c for c in texts(at.caption))
    goto(at, "session", session=TRIAGE)
    assert any("Single-user mode" in c for c in texts(at.caption))
    # ... and that its decisions are not signed (issue 16: every decision surface).
    assert any("Decisions are not signed" in c for c in texts(at.caption))


def test_a_decider_is_told_what_decisions_are_verified_against(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys in the data directory (no pinned trust root): the agents' account could
    rewrite them, and the page says so; with TOOLTRAIL_TRUST_ROOT pinned it does not."""
    creds = people(seeded.root)
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "alice", creds["alice"])
    assert any("Decisions are signed, but verified against" in c for c in texts(at.caption))
    pinned = seeded.root.parent / "trust.json"
    code, _, err = invoke(seeded.root, "users", "export-keys", str(pinned), token=creds["admin"])
    assert code == 0, err
    monkeypatch.setenv("TOOLTRAIL_TRUST_ROOT", str(pinned))
    at = _sign_in(app_test(seeded.root, seeded.policy_path, monkeypatch), "alice", creds["alice"])
    assert not any("verified against" in c for c in texts(at.caption))


def test_the_dashboard_serves_off_loopback_only_with_access_control(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    code, _, err = invoke(root, "dashboard", "--host", "0.0.0.0", "--port", "1")
    assert code == 2 and "refusing to serve the dashboard on non-loopback" in err
    with pytest.raises(BadInputError, match="non-loopback"):
        dashboard.command(root, 8501, "192.0.2.7")
    assert "--server.address" in dashboard.command(root, 8501, "127.0.0.1")
    add(root, "user", "admin", "admin", None)
    cmd = dashboard.command(root, 8501, "0.0.0.0")
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_the_write_checks_the_role_again_whatever_the_page_offered(seeded: Seeded) -> None:
    """``dashboard.data`` is the one call into the control store: a viewer's identity, or
    a typed name (no role) while access control is on, decides nothing there either."""
    from tooltrail.dashboard import data
    from tooltrail.dashboard.auth import Identity
    from tooltrail.errors import AccessDeniedError, NotAuthenticatedError

    people(seeded.root)
    for who in (Identity("vic", "viewer", "local"), Identity("alice", None, "single-user")):
        with pytest.raises(AccessDeniedError):
            data.decide(seeded.root, PENDING_ANYONE, "approved", who, None)
    with pytest.raises(AccessDeniedError, match="may not pause"):
        data.control_session(
            seeded.root, TRIAGE, "pause", Identity("alice", "approver", "local"), None
        )
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)
    # An approver's identity alone is not enough either: without the key unsealed at her
    # sign-in, the control store refuses an unsigned decision (SECURITY.md §7).
    with pytest.raises(NotAuthenticatedError, match="signed by a decider's key"):
        data.decide(
            seeded.root, PENDING_ANYONE, "denied", Identity("alice", "approver", "local"), "no"
        )
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)


def test_email_roles_are_managed_by_admins_only(seeded: Seeded) -> None:
    import json

    creds = people(seeded.root)
    code, out, err = invoke(
        seeded.root,
        "users",
        "map-email",
        "Carol@Example.COM",
        "--role",
        "operator",
        token=creds["admin"],
    )
    assert code == 0 and "carol@example.com" in out, err
    for token in (creds["alice"], None):  # not an admin; no credential
        code, _, err = invoke(
            seeded.root, "users", "map-email", "eve@example.com", "--role", "admin", token=token
        )
        assert code == 2, err
    code, _, err = invoke(
        seeded.root, "users", "map-email", "not-an-email", "--role", "viewer", token=creds["admin"]
    )
    assert code == 2 and "expected local-part@domain" in err
    code, out, _ = invoke(seeded.root, "users", "emails", "--format", "json", token=creds["admin"])
    assert [(m["email"], m["role"], m["created_by"]) for m in json.loads(out)] == [
        ("carol@example.com", "operator", "admin")
    ]
    code, _, err = invoke(
        seeded.root, "users", "unmap-email", "carol@example.com", token=creds["admin"]
    )
    assert code == 0, err
    code, out, _ = invoke(seeded.root, "users", "emails", "--format", "json", token=creds["admin"])
    assert json.loads(out) == []
    code, _, err = invoke(
        seeded.root, "users", "unmap-email", "carol@example.com", token=creds["admin"]
    )
    assert code == 2 and "no e-mail" in err


def test_an_unreadable_access_store_shows_nothing_but_the_error(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never read as "no access control": a damaged access.sqlite is not single-user mode."""
    (seeded.root / "access.sqlite").write_bytes(b"this is not a database" * 100)
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert any("Cannot read who may use" in e for e in texts(at.error))
    assert not at.metric and not at.dataframe
    assert not [k for k in _keys(at) if "approve" in k]
