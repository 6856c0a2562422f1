"""Dashboard decisions by people signed in through OpenID (issue 16), AppTest over the
packaged app with Streamlit's own test user (``AppTest.user``, what ``st.login`` leaves):
without a relay the decision is refused, saying what to configure; with the relay's
credential in secrets.toml (``[tooltrail] oidc_signer``) or ``$TOOLTRAIL_OIDC_SIGNER``,
a mapped approver decides as their e-mail, signed by the relay, and it verifies."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from access_support import credential_of, invoke, people
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

from tooltrail.control import ControlStore, verify_control

CAROL = "carol@example.com"


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


def _setup(seeded: Seeded) -> dict[str, str]:
    creds = people(seeded.root)
    code, _, err = invoke(
        seeded.root, "users", "map-email", CAROL, "--role", "approver", token=creds["admin"]
    )
    assert code == 0, err
    code, out, err = invoke(seeded.root, "users", "add-relay", "dashboard", token=creds["admin"])
    assert code == 0, err
    creds["relay"] = credential_of(out)
    return creds


def _as_carol(at: Any) -> Any:
    at.user = {"is_logged_in": True, "email": CAROL, "email_verified": True, "name": "Carol"}
    return at.run()


def test_without_a_relay_an_openid_approver_is_told_what_to_configure(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(seeded)
    monkeypatch.delenv("TOOLTRAIL_OIDC_SIGNER", raising=False)
    at = _as_carol(app_test(seeded.root, seeded.policy_path, monkeypatch))
    assert any("Signed in as **carol@example\\.com**" in m.value for m in at.sidebar.markdown)
    assert "Cannot decide: no relay signer" in " ".join(c.value for c in at.sidebar.caption)
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    (said,) = [t for t in texts(at.toast) if PENDING_ANYONE in t]
    assert "cannot sign decisions" in said
    assert "tooltrail users add-relay" in said and "oidc_signer" in said
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)


@pytest.mark.parametrize("where", ["secrets", "env"])
def test_with_the_relay_a_mapped_approver_decides_as_their_email_and_it_verifies(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    creds = _setup(seeded)
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    if where == "secrets":
        monkeypatch.delenv("TOOLTRAIL_OIDC_SIGNER", raising=False)
        at.secrets["tooltrail"] = {"oidc_signer": creds["relay"]}
    else:
        monkeypatch.setenv("TOOLTRAIL_OIDC_SIGNER", creds["relay"])
    _as_carol(at)
    assert "vouched for by relay dashboard" in " ".join(c.value for c in at.sidebar.caption)
    # The seeded history holds unsigned decisions from before access control: compare.
    broken_before = verify_control(seeded.root)
    # PENDING_MANAGERS' rule lists dana and lee only: carol's buttons stay disabled.
    assert at.button(key=f"overview-approve-{PENDING_MANAGERS}").disabled
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert (
        f"Approved {PENDING_ANYONE} as {CAROL} (approver, via OpenID, vouched by dashboard)"
        in texts(at.toast)
    )
    assert decided(seeded, PENDING_ANYONE) == ("approved", CAROL)
    assert decided(seeded, PENDING_MANAGERS) == ("pending", None)
    con = sqlite3.connect(seeded.root / "control.sqlite")
    (body,) = con.execute(
        "SELECT body FROM control_ledger WHERE kind = 'decision' AND ref = ?", (PENDING_ANYONE,)
    ).fetchone()
    con.close()
    doc = json.loads(body)
    assert (doc["decider"], doc["role"], doc["relay"]) == (CAROL, "approver", "dashboard")
    assert verify_control(seeded.root) == broken_before
    assert PENDING_ANYONE not in {b.ref for b in broken_before}


def test_a_disabled_relay_signs_nothing_more(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _setup(seeded)
    monkeypatch.setenv("TOOLTRAIL_OIDC_SIGNER", creds["relay"])
    at = _as_carol(app_test(seeded.root, seeded.policy_path, monkeypatch))
    code, _, err = invoke(seeded.root, "users", "disable", "dashboard", token=creds["admin"])
    assert code == 0, err
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    (said,) = [t for t in texts(at.toast) if PENDING_ANYONE in t]
    assert "relay 'dashboard' is disabled" in said
    assert decided(seeded, PENDING_ANYONE) == ("pending", None)


def test_an_openid_operator_pauses_a_session_and_history_says_who_vouched(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _setup(seeded)
    code, _, err = invoke(
        seeded.root, "users", "map-email", "otto@example.com", "--role", "operator",
        token=creds["admin"],
    )  # fmt: skip
    assert code == 0, err
    monkeypatch.setenv("TOOLTRAIL_OIDC_SIGNER", creds["relay"])
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    at.user = {"is_logged_in": True, "email": "otto@example.com", "email_verified": True}
    at.run()
    goto(at, "session", session=TRIAGE)
    at.button(key=f"session-{TRIAGE}-pause").click().run()
    with ControlStore(seeded.root) as store:
        assert store.session_state(TRIAGE) == "paused"
        (event,) = store.control_history(TRIAGE)
    assert (event.actor, event.role, event.relay) == ("otto@example.com", "operator", "dashboard")
    goto(at, "session", session=TRIAGE)
    shown = " ".join(m.value for m in at.markdown)
    assert "operator, via OpenID, vouched by dashboard" in shown
