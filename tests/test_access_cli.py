"""Access control on the command line: users, agents, login, and who may decide (issue 16).

Every command runs through the real click group (CliRunner); the stores are the real
SQLite files. On main these fail: there are no `users` / `agents` / `login` commands, and
`approve --by NAME` records whatever name is typed.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from access_support import add, credential_of, invoke, people

from tooltrail import access
from tooltrail.control import ApprovalRequest, ControlStore
from tooltrail.redact import Redactor

CREDENTIAL_RE = re.compile(r"tt[ua]_[0-9a-f]{16}_[A-Za-z0-9_\-]{43}")


@pytest.fixture(autouse=True)
def _own_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`tooltrail login` writes here, never to the real ~/.config."""
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("TOOLTRAIL_TOKEN", raising=False)
    yield


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


def _file(root: Path, approvers: tuple[str, ...] = ("*",), session: str = "s1") -> str:
    with ControlStore(root) as store:
        req = ApprovalRequest(
            tool_name="git_commit",
            arguments={"repo_path": "/r", "message": "m"},
            session_id=session,
            agent_name="bot-a",
            policy_rule="commit-main",
            approvers=approvers,
        )
        return store.file_request(req).approval_id


def _status(root: Path, approval_id: str) -> tuple[str, str | None]:
    with ControlStore(root) as store:
        record = store.get(approval_id)
    return record.status, record.decided_by


def test_first_user_must_be_an_admin_and_then_only_admins_manage(root: Path) -> None:
    code, out, err = invoke(root, "users", "add", "bob", "--role", "approver")
    assert code == 2 and "the first must be an admin" in err and out == ""
    assert not access.enabled(root)  # nothing was added
    code, out, err = invoke(root, "agents", "add", "bot")
    assert code == 2 and "the first must be an admin" in err
    for bad in ("two words", "a/b", "ghp_" + "a1B2" * 9):
        code, _, err = invoke(root, "users", "add", bad, "--role", "admin")
        assert code == 2 and repr(bad) in err, err
    code, out, _ = invoke(root, "users", "add", "root", "--role", "admin")
    assert code == 0
    admin = credential_of(out)
    assert CREDENTIAL_RE.fullmatch(admin) and admin.startswith("ttu_")
    assert access.enabled(root)
    # From now on: an admin's credential, nothing less.
    code, _, err = invoke(root, "users", "add", "bob", "--role", "approver")
    assert code == 2 and "access control is on" in err
    bob = add(root, "user", "bob", "approver", admin)
    code, _, err = invoke(root, "users", "add", "eve", "--role", "admin", token=bob)
    assert code == 2 and "'bob' (approver) may not manage users" in err
    code, _, err = invoke(root, "users", "add", "bob", "--role", "viewer", token=admin)
    assert code == 2 and "exists already" in err
    agent = add(root, "agent", "release-bot", None, admin)
    assert agent.startswith("tta_") and CREDENTIAL_RE.fullmatch(agent)
    code, _, err = invoke(root, "agents", "add", "bot-2", token=agent)
    assert code == 2 and "may not manage users" in err


def test_list_shows_names_and_roles_never_credentials(root: Path) -> None:
    creds = people(root)
    code, out, _ = invoke(root, "users", "list", "--format", "json", token=creds["admin"])
    assert code == 0
    import json

    listed = json.loads(out)
    assert [(u["name"], u["role"]) for u in listed] == [
        ("admin", "admin"),
        ("alice", "approver"),
        ("bob", "approver"),
        ("olga", "operator"),
        ("vic", "viewer"),
    ]
    code, out, _ = invoke(root, "agents", "list", "--format", "json", token=creds["admin"])
    assert [(a["name"], a["kind"], a["role"]) for a in json.loads(out)] == [
        ("bot-a", "agent", "agent"),
        ("bot-b", "agent", "agent"),
    ]
    assert "ttu_" not in out and "scrypt" not in out
    code, _, err = invoke(root, "users", "list", token=creds["vic"])
    assert code == 2 and "may not manage users" in err


def test_credentials_are_never_stored_in_clear(root: Path) -> None:
    creds = people(root)
    path = root / "access.sqlite"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = b"".join(p.read_bytes() for p in root.iterdir() if p.name.startswith("access"))
    for credential in creds.values():
        assert credential.encode() not in stored
        # The secret part alone, nor a half of it (the key id, credential[4:20], is
        # stored: it finds the row, and verifies nothing).
        secret = credential[21:]
        assert len(secret) == 43
        assert secret.encode() not in stored
        assert secret[:21].encode() not in stored and secret[21:].encode() not in stored
    assert stored.count(b"scrypt$16384$8$1$") == len(creds)
    # Yet each verifies.
    with access.AccessStore(root) as store:
        assert {store.authenticate(c).name for c in creds.values()} == set(creds)


def test_the_secret_scrubber_removes_credentials(root: Path) -> None:
    creds = people(root)
    cut = creds["admin"][:45]  # a credential cut short (24 characters of its secret)
    text = f"curl -H 'X: {creds['alice']}' ; agent {creds['bot-a']} then {cut}"
    scrubbed, count = Redactor().scrub_text(text)
    assert count == 3
    assert scrubbed.count("[REDACTED:tooltrail_credential]") == 3
    for secret in (creds["alice"][21:], creds["bot-a"][21:], cut[21:]):
        assert secret not in scrubbed


def test_single_user_mode_is_announced_on_every_decision_surface(root: Path) -> None:
    apr = _file(root)
    for args in (
        ("approvals",),
        ("approve", apr, "--by", "alice"),
        ("pause", "s1", "--by", "ops"),
        ("resume", "s1", "--by", "ops"),
        ("cancel", "s1", "--by", "ops"),
    ):
        code, out, err = invoke(root, *args)
        assert code == 0, err
        assert "single-user mode" in err and "single-user" not in out
    code, _, err = invoke(root, "deny", _file(root), "--by", "alice")
    assert code == 0 and "single-user mode" in err
    code, _, err = invoke(root, "approve", _file(root))
    assert code == 2 and "--by is required in single-user mode" in err
    admin = add(root, "user", "root", "admin", None)
    code, _, err = invoke(root, "approvals", token=admin)
    assert code == 0 and "single-user" not in err


def test_roles_bound_what_each_user_may_do(root: Path) -> None:
    creds = people(root)
    listed = _file(root, approvers=("alice",))
    by_role = _file(root, approvers=("role:operator",))
    anyone = _file(root, approvers=("*",))
    # A viewer decides nothing: exit 2, the request stays pending.
    code, _, err = invoke(root, "approve", anyone, token=creds["vic"])
    assert code == 2 and "'vic' (viewer) may not decide approval requests" in err
    assert _status(root, anyone) == ("pending", None)
    # An approver the rule does not list is refused; the listed one decides.
    code, _, err = invoke(root, "approve", listed, token=creds["bob"])
    assert code == 2 and "'bob' may not decide" in err
    assert _status(root, listed) == ("pending", None)
    code, out, _ = invoke(root, "approve", listed, token=creds["alice"])
    assert code == 0 and f"{listed} approved by alice" in out
    assert _status(root, listed) == ("approved", "alice")
    # role:operator: operators and admins, not approvers.
    code, _, err = invoke(root, "deny", by_role, token=creds["alice"])
    assert code == 2 and "may not decide" in err
    code, _, _ = invoke(root, "deny", by_role, token=creds["olga"])
    assert code == 0 and _status(root, by_role) == ("denied", "olga")
    # An agent's credential decides nothing.
    code, _, err = invoke(root, "approve", anyone, token=creds["bot-a"])
    assert code == 2 and "agent 'bot-a' may not decide" in err
    assert _status(root, anyone) == ("pending", None)
    # Session control: operators (and admins), not approvers or viewers.
    for name in ("alice", "vic", "bot-a"):
        code, _, err = invoke(root, "pause", "s1", token=creds[name])
        assert code == 2 and "may not pause, resume, cancel or complete sessions" in err
    with ControlStore(root) as store:
        assert store.session_state("s1") == "running"
    code, out, _ = invoke(root, "pause", "s1", token=creds["olga"])
    assert code == 0 and "paused by olga" in out
    code, _, _ = invoke(root, "resume", "s1", token=creds["admin"])
    assert code == 0
    with ControlStore(root) as store:
        assert [(e.action, e.actor) for e in store.control_history("s1")] == [
            ("pause", "olga"),
            ("resume", "admin"),
        ]


def test_by_cannot_name_someone_else(root: Path) -> None:
    creds = people(root)
    apr = _file(root, approvers=("bob",))
    # alice holds a credential; she cannot decide as bob, who the rule lists.
    code, _, err = invoke(root, "approve", apr, "--by", "bob", token=creds["alice"])
    assert code == 2 and "--by 'bob' differs from the credential's user 'alice'" in err
    assert _status(root, apr) == ("pending", None)
    code, _, err = invoke(root, "cancel", "s1", "--by", "admin", token=creds["olga"])
    assert code == 2 and "differs from the credential's user 'olga'" in err
    with ControlStore(root) as store:
        assert store.session_state("s1") == "running"
    # --by repeating the credential's own name is fine.
    code, _, _ = invoke(root, "approve", apr, "--by", "bob", token=creds["bob"])
    assert code == 0 and _status(root, apr) == ("approved", "bob")


def test_without_a_valid_credential_nothing_changes(root: Path) -> None:
    creds = people(root)
    apr = _file(root)
    for token in (None, "not-a-credential", creds["alice"][:-1] + "x"):
        code, _, err = invoke(root, "approve", apr, "--by", "alice", token=token)
        assert code == 2, err
        assert "TOOLTRAIL_TOKEN" in err or "credential is not" in err
    assert _status(root, apr) == ("pending", None)


def test_disabled_and_rotated_credentials_are_refused(root: Path) -> None:
    creds = people(root)
    apr = _file(root)
    code, out, _ = invoke(root, "users", "disable", "bob", token=creds["admin"])
    assert code == 0 and "disabled user bob" in out
    code, _, err = invoke(root, "approve", apr, token=creds["bob"])
    assert code == 2 and "user 'bob' is disabled" in err
    # Rotation: the old credential stops working, the new one (last line) works.
    code, out, _ = invoke(root, "users", "rotate", "alice", token=creds["admin"])
    assert code == 0
    new = credential_of(out)
    assert new != creds["alice"] and CREDENTIAL_RE.fullmatch(new)
    code, _, err = invoke(root, "approve", apr, token=creds["alice"])
    assert code == 2 and "not valid" in err
    assert _status(root, apr) == ("pending", None)
    code, _, _ = invoke(root, "approve", apr, token=new)
    assert code == 0 and _status(root, apr) == ("approved", "alice")
    # A user rotates their own; not someone else's.
    code, _, err = invoke(root, "users", "rotate", "olga", token=creds["vic"])
    assert code == 2 and "may not manage users" in err
    code, out, _ = invoke(root, "users", "rotate", "vic", token=creds["vic"])
    assert code == 0 and credential_of(out) != creds["vic"]
    code, _, err = invoke(root, "users", "rotate", "vic", token=creds["vic"])
    assert code == 2 and "not valid" in err  # the old one is gone
    # Agents too; and the last admin cannot be disabled (nobody could manage any more).
    code, _, _ = invoke(root, "agents", "disable", "bot-a", token=creds["admin"])
    with access.AccessStore(root) as store:
        assert store.get("bot-a").disabled
    code, _, err = invoke(root, "users", "disable", "admin", token=creds["admin"])
    assert code == 2 and "last enabled admin" in err


def test_login_keeps_the_credential_owner_only_and_the_environment_wins(
    root: Path, tmp_path: Path
) -> None:
    creds = people(root)
    apr = _file(root)
    code, _, err = invoke(root, "login", stdin="garbage\n")
    assert code == 2 and "not a tooltrail credential" in err
    code, _, err = invoke(root, "login", stdin=creds["bot-a"] + "\n")
    assert code == 2 and "agents present theirs" in err
    code, out, _ = invoke(root, "login", stdin=creds["alice"] + "\n")
    assert code == 0 and "as alice (approver)" in out
    saved = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) & 0o077 == 0
    # TOOLTRAIL_TOKEN wins over the saved credential: the viewer is refused...
    code, _, err = invoke(root, "approve", apr, token=creds["vic"])
    assert code == 2 and "'vic' (viewer)" in err
    # ...and without it the saved one acts.
    code, out, _ = invoke(root, "approve", apr)
    assert code == 0 and "approved by alice" in out
    assert os.environ.get("TOOLTRAIL_TOKEN") is None


def test_role_entries_match_nobody_in_single_user_mode(root: Path) -> None:
    apr = _file(root, approvers=("role:approver",))
    code, _, err = invoke(root, "approve", apr, "--by", "approver")
    assert code == 2 and "'approver' may not decide" in err
    assert _status(root, apr) == ("pending", None)


def test_policy_check_refuses_an_unknown_role(tmp_path: Path) -> None:
    from tooltrail.errors import PolicyError
    from tooltrail.policy import load_policy

    def policy(approvers: list[str]) -> dict[str, object]:
        rule = {
            "id": "r",
            "when": {"tool": "git_commit"},
            "decision": "REQUIRE_APPROVAL",
            "approval": {"approvers": approvers},
        }
        return {"version": 1, "rules": [rule]}

    assert load_policy(policy(["alice", "role:operator"])).rules
    with pytest.raises(PolicyError) as info:
        load_policy(policy(["alice", "role:aprover"]))
    assert "approval.approvers[1]" in str(info.value)
    assert "unknown role in 'role:aprover'" in str(info.value)
