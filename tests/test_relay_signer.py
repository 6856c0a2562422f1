"""The relay signer (issue 16): the dashboard's key that vouches for people signed in
through OpenID. ``tooltrail users add-relay`` (admin only; a ``ttr_`` credential that
authenticates to nothing), the control store signing with it for a mapped e-mail, and the
verifier (``ledger.verify_signed``, ``tooltrail verify``) accepting it only for an
e-mail that holds no key, granted the role it claims at the entry's time, that allows the
action; a disabled or rotated relay stops working. Real CLI, real SQLite, real Ed25519."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from access_support import add, credential_of, invoke

from tooltrail import ledger
from tooltrail.control import ApprovalRequest, ControlStore, NotAnApproverError, verify_control
from tooltrail.errors import AccessDeniedError, NotAuthenticatedError
from tooltrail.signing import (
    Signer,
    decider_signer,
    load_trust_root,
    read_trust_file,
    relay_signer,
)

CAROL = "carol@example.com"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """admin, alice (approver), vic (viewer), relay ``dashboard``, carol mapped approver,
    vera mapped viewer: made once (scrypt is slow), copied per test."""
    root = tmp_path_factory.mktemp("relay") / "data"
    creds = {"admin": add(root, "user", "admin", "admin", None)}
    creds["alice"] = add(root, "user", "alice", "approver", creds["admin"])
    creds["vic"] = add(root, "user", "vic", "viewer", creds["admin"])
    code, out, err = invoke(root, "users", "add-relay", "dashboard", token=creds["admin"])
    assert code == 0, err
    creds["relay"] = credential_of(out)
    for email, role in ((CAROL, "approver"), ("vera@example.com", "viewer")):
        code, _, err = invoke(
            root, "users", "map-email", email, "--role", role, token=creds["admin"]
        )
        assert code == 0, err
    creds["root"] = str(root)
    return creds


@pytest.fixture
def data(tmp_path: Path, template: dict[str, str]) -> Path:
    root = tmp_path / "data"
    shutil.copytree(template["root"], root)
    return root


def _file(root: Path, approvers: tuple[str, ...] = ("*",), session: str = "s-1") -> str:
    with ControlStore(root) as store:
        return store.file_request(
            ApprovalRequest(
                session_id=session,
                trace_id="t" * 32,
                span_id="s" * 16,
                agent_name="bot",
                tool_name="deploy",
                arguments={"target": "prod"},
                policy_rule="deploys",
                reason="deploys need a human",
                blast_radius="Critical",
                approvers=approvers,
                timeout_s=600,
                on_timeout="DENY",
            ),
            waiter_here=False,
        ).approval_id


def _status(root: Path, approval_id: str) -> tuple[str, str | None]:
    with ControlStore(root) as store:
        record = store.get(approval_id)
    return record.status, record.decided_by


def _decision_body(root: Path, approval_id: str) -> dict[str, Any]:
    con = sqlite3.connect(root / "control.sqlite")
    (body,) = con.execute(
        "SELECT body FROM control_ledger WHERE kind = 'decision' AND ref = ?", (approval_id,)
    ).fetchone()
    con.close()
    doc: dict[str, Any] = json.loads(body)
    return doc


# -- the CLI -------------------------------------------------------------------------------


def test_add_relay_is_for_admins_and_prints_a_relay_credential_listed_and_exported(
    data: Path, template: dict[str, str], tmp_path: Path
) -> None:
    assert template["relay"].startswith("ttr_")
    for token in (template["alice"], None):  # an approver; nobody
        code, _, _ = invoke(data, "users", "add-relay", "other", token=token)
        assert code == 2
    code, out, _ = invoke(data, "users", "list", "--format", "json", token=template["admin"])
    listed = {p["name"]: (p["kind"], p["role"]) for p in json.loads(out)}
    assert listed["dashboard"] == ("relay", "relay") and listed["alice"] == ("user", "approver")
    # Exported into the pinned trust root with its role, with the e-mails' grants.
    trust = tmp_path / "trust.json"
    code, out, err = invoke(data, "users", "export-keys", str(trust), token=template["admin"])
    assert code == 0, err
    root = read_trust_file(trust)
    assert [k.role for k in root.keys.values() if k.principal == "dashboard"] == ["relay"]
    assert {(g.email, g.role) for g in root.grants} == {
        (CAROL, "approver"),
        ("vera@example.com", "viewer"),
    }


def test_the_relay_credential_authenticates_to_nothing_on_the_command_line(
    data: Path, template: dict[str, str]
) -> None:
    approval_id = _file(data)
    for args in (
        ("approve", approval_id),
        ("deny", approval_id),
        ("pause", "s-1"),
        ("users", "list"),
        ("users", "map-email", "eve@example.com", "--role", "admin"),
    ):
        code, _, err = invoke(data, *args, token=template["relay"])
        assert code == 2, args
        assert "authenticates to nothing" in err, (args, err)
    code, _, err = invoke(data, "login", stdin=template["relay"] + "\n")
    assert code == 2 and "authenticates to nothing" in err
    assert _status(data, approval_id) == ("pending", None)


def test_local_names_and_mapped_emails_stay_apart(data: Path, template: dict[str, str]) -> None:
    code, _, err = invoke(
        data, "users", "add", CAROL, "--role", "approver", token=template["admin"]
    )
    assert code == 2 and "mapped for OpenID" in err
    add(data, "user", "bob@example.com", "approver", template["admin"])
    code, _, err = invoke(
        data, "users", "map-email", "Bob@Example.com", "--role", "admin", token=template["admin"]
    )
    assert code == 2 and "name of a local user" in err


# -- signing with the relay ----------------------------------------------------------------


def test_a_relay_signs_a_mapped_emails_decision_which_verifies_pinned_too(
    data: Path, template: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust = tmp_path / "trust.json"
    code, _, err = invoke(data, "users", "export-keys", str(trust), token=template["admin"])
    assert code == 0, err
    monkeypatch.setenv("TOOLTRAIL_TRUST_ROOT", str(trust))
    approval_id = _file(data, ("role:approver",))
    signer = relay_signer(data, template["relay"])
    assert (signer.principal, signer.role) == ("dashboard", "relay")
    with ControlStore(data) as store:
        store.decide(approval_id, "approved", CAROL, "ok", role="approver", signer=signer)
    assert _status(data, approval_id) == ("approved", CAROL)
    doc = _decision_body(data, approval_id)
    assert (doc["decider"], doc["role"], doc["relay"]) == (CAROL, "approver", "dashboard")
    assert verify_control(data) == []
    code, out, _ = invoke(data, "verify", "--format", "json", token=template["admin"])
    assert code == 0 and json.loads(out)["ok"] is True, out
    # A session pause by an e-mail mapped operator, vouched for the same way.
    code, _, err = invoke(
        data, "users", "map-email", "otto@example.com", "--role", "operator",
        token=template["admin"],
    )  # fmt: skip
    assert code == 0, err
    with ControlStore(data) as store:
        store.set_session_state(
            "s-2", "pause", "otto@example.com", None, signer=signer, role="operator"
        )
        assert store.session_state("s-2") == "paused"
    assert verify_control(data) == []


@pytest.mark.parametrize(
    ("decider", "role", "words"),
    [
        ("alice", "approver", "vouches only for OpenID e-mails"),  # a local user's name
        ("admin", "admin", "vouches only for OpenID e-mails"),
        ("Carol@Example.com", "approver", "vouches only for OpenID e-mails"),  # not as stored
        (CAROL, "admin", "was not mapped to role 'admin'"),  # mapped approver, claims admin
        ("eve@example.com", "approver", "was not mapped"),  # never mapped
        ("vera@example.com", "viewer", "may not decide"),  # mapped, but a viewer
        ("vera@example.com", "approver", "was not mapped to role 'approver'"),
    ],
)
def test_the_store_refuses_what_a_relay_may_not_vouch_for(
    data: Path, template: dict[str, str], decider: str, role: str, words: str
) -> None:
    approval_id = _file(data)
    signer = relay_signer(data, template["relay"])
    with ControlStore(data) as store, pytest.raises(AccessDeniedError, match=words):
        store.decide(approval_id, "approved", decider, None, role=role, signer=signer)
    assert _status(data, approval_id) == ("pending", None)


def test_a_rule_that_does_not_list_the_email_refuses_it(
    data: Path, template: dict[str, str]
) -> None:
    listed = _file(data, (CAROL,))
    other = _file(data, ("alice", "role:operator"))
    signer = relay_signer(data, template["relay"])
    with ControlStore(data) as store:
        with pytest.raises(NotAnApproverError):
            store.decide(other, "approved", CAROL, None, role="approver", signer=signer)
        store.decide(listed, "approved", CAROL, None, role="approver", signer=signer)
    assert _status(data, other) == ("pending", None)
    assert _status(data, listed) == ("approved", CAROL)


def test_a_disabled_or_rotated_relay_stops_signing(data: Path, template: dict[str, str]) -> None:
    approval_id = _file(data)
    held = relay_signer(data, template["relay"])  # unsealed before the rotation
    code, out, err = invoke(data, "users", "rotate", "dashboard", token=template["admin"])
    assert code == 0, err
    fresh = credential_of(out)
    assert fresh.startswith("ttr_")
    with pytest.raises(NotAuthenticatedError, match="not valid"):
        relay_signer(data, template["relay"])
    with ControlStore(data) as store, pytest.raises(NotAuthenticatedError, match="not current"):
        store.decide(approval_id, "approved", CAROL, None, role="approver", signer=held)
    code, _, err = invoke(data, "users", "disable", "dashboard", token=template["admin"])
    assert code == 0, err
    with pytest.raises(NotAuthenticatedError, match="disabled"):
        relay_signer(data, fresh)
    assert _status(data, approval_id) == ("pending", None)


# -- the verifier, over entries a forger signs with the relay's key directly -----------------


def _signed(
    signer: Signer, payload: dict[str, Any], kind: ledger.EntryKind = "decision"
) -> ledger.Entry:
    con = sqlite3.connect(":memory:", isolation_level=None)
    con.executescript(ledger.SCHEMA)
    return ledger.append(con, kind, "apr-1", payload, signer)


def _payload(**changes: Any) -> dict[str, Any]:
    doc = {
        "v": "tooltrail-decision/v1",
        "approval_id": "apr-1",
        "outcome": "approved",
        "decider": CAROL,
        "role": "approver",
        "at": time.time(),
        "relay": "dashboard",
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_verify_signed_accepts_a_relay_only_for_what_it_may_vouch_for(
    data: Path, template: dict[str, str]
) -> None:
    signer = relay_signer(data, template["relay"])
    trust = load_trust_root(data)
    with sqlite3.connect(data / "access.sqlite") as con:
        (mapped_at,) = con.execute(
            "SELECT granted_at FROM email_grants WHERE email = ?", (CAROL,)
        ).fetchone()
    assert ledger.verify_signed(_signed(signer, _payload()), trust) is None
    refused = {
        "local user": (_payload(decider="alice"), "decision"),
        "local admin": (_payload(decider="admin", role="admin"), "decision"),
        "relay as itself": (_payload(decider="dashboard", role="relay"), "decision"),
        "unmapped role": (_payload(role="operator"), "decision"),
        "unmapped e-mail": (_payload(decider="eve@example.com"), "decision"),
        "before the mapping": (_payload(at=mapped_at - 1), "decision"),
        "no relay named": (_payload(relay=None), "decision"),
        "another relay named": (_payload(relay="other"), "decision"),
        "approver pausing": (_payload(action="pause"), "control"),
    }
    for what, (payload, kind) in refused.items():
        entry = _signed(signer, payload, kind)  # type: ignore[arg-type]
        assert ledger.verify_signed(entry, trust) is not None, what
    # A local decider's own key claiming a relay vouched: the history would lie; refused.
    alice = decider_signer(data, template["alice"])
    entry = _signed(alice, _payload(decider="alice"))
    assert "claims relay" in str(ledger.verify_signed(entry, trust))
    # Unmapped since: decisions made before still verify, later ones do not.
    before = _signed(signer, _payload())
    time.sleep(0.01)
    code, _, err = invoke(data, "users", "unmap-email", CAROL, token=template["admin"])
    assert code == 0, err
    trust = load_trust_root(data)
    assert ledger.verify_signed(before, trust) is None
    assert "was not mapped" in str(ledger.verify_signed(_signed(signer, _payload()), trust))
    # A revoked relay key: what it signs afterwards does not verify.
    code, _, err = invoke(data, "users", "disable", "dashboard", token=template["admin"])
    assert code == 0, err
    assert "revoked" in str(
        ledger.verify_signed(_signed(signer, _payload()), load_trust_root(data))
    )


def test_an_access_store_from_before_relays_is_upgraded_in_place(tmp_path: Path) -> None:
    """A store whose principals table refuses kind 'relay' (made before relays) is rebuilt
    on open, keeping its users and their credentials; its mapped e-mails get grants."""
    root = tmp_path / "data"
    admin = add(root, "user", "admin", "admin", None)
    code, _, err = invoke(root, "users", "map-email", CAROL, "--role", "approver", token=admin)
    assert code == 0, err
    con = sqlite3.connect(root / "access.sqlite")
    (ddl,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'principals'").fetchone()
    old = ddl.replace(", 'relay'", "")
    assert "'relay'" not in old
    con.executescript(
        "BEGIN; ALTER TABLE principals RENAME TO p0;"
        f"{old};"
        "INSERT INTO principals SELECT * FROM p0; DROP TABLE p0; DROP TABLE email_grants; COMMIT;"
    )
    con.close()
    code, out, err = invoke(root, "users", "add-relay", "dashboard", token=admin)
    assert code == 0, err
    assert credential_of(out).startswith("ttr_")
    code, out, _ = invoke(root, "users", "list", "--format", "json", token=admin)
    assert {p["name"] for p in json.loads(out)} == {"admin", "dashboard"}
    assert [(g.email, g.role) for g in load_trust_root(root).grants] == [(CAROL, "approver")]


# -- whoever releases the held call (the broker in the agent's process) ------------------------

RELAY_POLICY = """
version: 1
default: ALLOW
rules:
  - id: deploys-need-carol
    when: {tool: deploy}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 30s, on_timeout: DENY, approvers: ["carol@example.com"]}
"""


def _forge(
    root: Path, approval_id: str, signer: Signer, role: str, at: float | None = None
) -> None:
    """What a holder of the relay's key (not the dashboard) writes: a decision for carol
    claiming ``role``, signed, chained, and the row marked approved."""
    from tooltrail.control import request_digest

    with ControlStore(root) as store:
        record = store.get(approval_id)
    con = sqlite3.connect(root / "control.sqlite", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    at = time.time() if at is None else at
    payload = {
        "v": "tooltrail-decision/v1",
        "approval_id": approval_id,
        "outcome": "approved",
        "decider": CAROL,
        "role": role,
        "at": at,
        "reason": None,
        "arguments_hash": record.arguments_hash,
        "policy_version": record.policy_version,
        "request": request_digest(record),
        "relay": signer.principal,
    }
    ledger.append(con, "decision", approval_id, payload, signer)
    con.execute(
        "UPDATE approvals SET status = 'approved', decided_by = ?, decided_at = ?"
        " WHERE approval_id = ?",
        (CAROL, at, approval_id),
    )
    con.execute("COMMIT")
    con.close()


def test_the_broker_releases_a_relay_signed_approval_and_nothing_the_relay_may_not_vouch_for(
    data: Path, template: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from git_support import clean_env
    from test_signed_decisions import Agent

    trust = tmp_path / "trust" / "trust-root.json"
    code, _, err = invoke(data, "users", "export-keys", str(trust), token=template["admin"])
    assert code == 0, err
    monkeypatch.setenv("TOOLTRAIL_TRUST_ROOT", str(trust))
    policy = tmp_path / "policy.yaml"
    policy.write_text(RELAY_POLICY)
    agent = Agent(data, policy, "sess-1", clean_env(TOOLTRAIL_TRUST_ROOT=str(trust)))
    try:
        signer = relay_signer(data, template["relay"])
        first = agent.held(data, "c1", "prod")
        with ControlStore(data) as store:
            store.decide(first, "approved", CAROL, None, role="approver", signer=signer)
        assert agent.result("c1") == {"id": "c1", "ran": True, "reason": None}
        # The relay's key, used outside the dashboard to claim a role carol was not
        # given: the approval does not verify and the call is not released.
        second = agent.held(data, "c2", "prod")
        _forge(data, second, signer, "admin")
        result = agent.result("c2")
        assert result["ran"] is False and "was not mapped to role 'admin'" in result["reason"]
        # Nor dated back, into carol's grant or before a revocation, for a newer request.
        third = agent.held(data, "c3", "prod")
        with ControlStore(data) as store:
            filed_at = store.get(third).requested_at
        _forge(data, third, signer, "approver", at=filed_at - 1)
        result = agent.result("c3")
        assert result["ran"] is False and "dated before the request" in result["reason"]
    finally:
        agent.close()


def test_a_resume_dated_back_before_a_revocation_does_not_release_the_session(
    data: Path, template: dict[str, str]
) -> None:
    """The relay's key, still held after it was disabled, signs a resume dated back to
    before the revocation (when otto, an operator e-mail, held his role) after an admin
    paused the session: consistent rows and all, the session stays paused."""
    from tooltrail.errors import TamperedError

    code, _, err = invoke(
        data, "users", "map-email", "otto@example.com", "--role", "operator",
        token=template["admin"],
    )  # fmt: skip
    assert code == 0, err
    held = relay_signer(data, template["relay"])
    time.sleep(0.05)
    code, _, err = invoke(data, "users", "disable", "dashboard", token=template["admin"])
    assert code == 0, err
    revoked_at = time.time()
    time.sleep(0.05)
    admin = decider_signer(data, template["admin"])
    with ControlStore(data) as store:
        store.set_session_state("s-9", "pause", "admin", "incident", signer=admin)
    con = sqlite3.connect(data / "control.sqlite", isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    at = revoked_at - 0.04  # after otto's grant, before the relay's revocation
    payload = {
        "v": "tooltrail-control/v1",
        "session_id": "s-9",
        "action": "resume",
        "decider": "otto@example.com",
        "role": "operator",
        "at": at,
        "reason": None,
        "relay": "dashboard",
    }
    entry = ledger.append(con, "control", "s-9", payload, held)
    con.execute(
        "UPDATE session_controls SET state = 'running', changed_by = ?, changed_at = ?,"
        " reason = NULL WHERE session_id = 's-9'",
        ("otto@example.com", at),
    )
    con.execute(
        "INSERT INTO control_events (session_id, action, actor, at, reason)"
        " VALUES ('s-9', 'resume', 'otto@example.com', ?, NULL)",
        (at,),
    )
    con.execute("COMMIT")
    con.close()
    # The signature alone verifies (dated before the revocation): the order does not.
    assert ledger.verify_signed(entry, load_trust_root(data)) is None
    with ControlStore(data) as store, pytest.raises(TamperedError, match="dated before"):
        store.session_state("s-9")
    assert "s-9" in {b.ref for b in verify_control(data)}
