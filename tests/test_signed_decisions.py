"""Decisions an agent cannot forge (issue 16): real agent processes hold real calls in a
real ``control.sqlite``, deciders sign with real Ed25519 keys, and every edit the red team
made to the store with plain sqlite3 is detected and fails closed.

Access control is on (users added through the real CLI) and the deciders' public keys are
pinned in a trust root outside the data directory (``users export-keys``), which both the
agent and the command line are pointed at with ``TOOLTRAIL_TRUST_ROOT``.
"""

from __future__ import annotations

import hashlib
import json
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from access_support import add, invoke
from approval_support import pending, run_cli, set_status
from git_support import clean_env

from tooltrail.control import ControlStore, verify_control

AGENT = Path(__file__).parent / "agents" / "signed_agent.py"
DEADLINE_S = 30.0
POLICY = """
version: 1
default: ALLOW
blast_radius:
  - {tools: ["deploy"], radius: Critical}
rules:
  - id: early-allow
    when: {tool: deploy, args: {target: "soon*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 30s, on_timeout: ALLOW, approvers: ["alice"]}
  - id: short
    when: {tool: deploy, args: {target: "short*"}}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 2s, on_timeout: DENY, approvers: ["alice"]}
  - id: deploys-need-alice
    when: {tool: deploy}
    decision: REQUIRE_APPROVAL
    reason: Deploys need a human
    approval: {timeout: 30s, on_timeout: DENY, approvers: ["alice"]}
"""


class Agent:
    """The agent subprocess (tests/agents/signed_agent.py): send commands, read results."""

    def __init__(self, data: Path, policy: Path, session_id: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT), str(data), str(policy), session_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._results: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()
        assert self.result("ready")["ready"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def result(self, key: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while key not in self._results:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no result for {key!r} from the agent")
            try:
                doc = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            self._results[str(doc.get("id", "ready"))] = doc
        return self._results[key]

    def held(self, data: Path, key: str, target: str) -> str:
        """Start a held deploy; return its approval id once it is pending."""
        self.send(id=key, call="deploy", target=target)
        (record,) = pending(data, 1, DEADLINE_S)
        return record.approval_id

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Credentials of admin, alice (approver), mallory (approver the rules do not list)
    and olga (operator), in a template directory copied per test (scrypt is slow)."""
    root = tmp_path_factory.mktemp("people") / "data"
    creds = {"admin": add(root, "user", "admin", "admin", None)}
    for name, role in (("alice", "approver"), ("mallory", "approver"), ("olga", "operator")):
        creds[name] = add(root, "user", name, role, creds["admin"])
    creds["root"] = str(root)
    return creds


@pytest.fixture
def setup(tmp_path: Path, people: dict[str, str]) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """A data directory with access control on, a pinned trust root, a policy."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(people["root"], data)
    trust = tmp_path / "trust" / "trust-root.json"
    code, _, err = invoke(data, "users", "export-keys", str(trust), token=people["admin"])
    assert code == 0, err
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    yield data, policy, {"TOOLTRAIL_TRUST_ROOT": str(trust)}


def cli(
    data: Path, env: dict[str, str], token: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_cli_argv(), args[0], "--data", str(data), *args[1:]],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        env=clean_env(TOOLTRAIL_TOKEN=token, **env),
    )


def _cli_argv() -> list[str]:
    from approval_support import CLI

    return list(CLI)


def sql(data: Path, statement: str, *params: Any) -> None:
    """What anyone who can write the file does: plain sqlite3, no tooltrail."""
    con = sqlite3.connect(data / "control.sqlite")
    con.execute(statement, params)
    con.commit()
    con.close()


@pytest.fixture
def agent(setup: tuple[Path, Path, dict[str, str]]) -> Iterator[Agent]:
    data, policy, env = setup
    a = Agent(data, policy, "sess-1", clean_env(**env))
    yield a
    a.close()


def broken_refs(data: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for b in verify_control(data):
        found.setdefault(b.ref, []).append(b.problem)
    return found


# -- a valid signed approval, and what it signs ------------------------------------------


def test_a_signed_approval_releases_the_call_and_anyone_can_recompute_what_was_approved(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    data, _, env = setup
    approval_id = agent.held(data, "c1", "prod")
    done = cli(data, env, people["alice"], "approve", approval_id)
    assert done.returncode == 0, done.stderr
    assert agent.result("c1") == {"id": "c1", "ran": True, "reason": None}
    # The stored arguments hash is RFC 8785 + SHA-256, versioned: recomputed here from the
    # stored text with nothing of tooltrail's.
    con = sqlite3.connect(data / "control.sqlite")
    arguments, stored_hash, policy_version = con.execute(
        "SELECT arguments, arguments_hash, policy_version FROM approvals"
    ).fetchone()
    body, key_id, signature = con.execute(
        "SELECT body, key_id, signature FROM control_ledger WHERE kind = 'decision'"
    ).fetchone()
    con.close()
    expected = hashlib.sha256(rfc8785.dumps(json.loads(arguments))).hexdigest()
    assert stored_hash == f"jcs-sha256:v1:{expected}"
    decision = json.loads(body)
    assert decision["v"] == "tooltrail-decision/v1"
    assert decision["outcome"] == "approved" and decision["decider"] == "alice"
    assert decision["arguments_hash"] == stored_hash
    assert decision["policy_version"] == policy_version and policy_version
    # The signature verifies with alice's pinned public key, and only over this body.
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from tooltrail.signing import _unb64

    pinned = json.loads(Path(env["TOOLTRAIL_TRUST_ROOT"]).read_text())["keys"]
    (key,) = [k for k in pinned if k["key_id"] == key_id]
    assert key["principal"] == "alice"
    public = Ed25519PublicKey.from_public_bytes(_unb64(key["public_key"]))
    public.verify(_unb64(signature), body.encode())
    with pytest.raises(InvalidSignature):
        public.verify(_unb64(signature), body.replace("alice", "mallo").encode())
    assert verify_control(data) == []
    check = cli(data, env, people["alice"], "verify", "--format", "json")
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["ok"] is True and report["breaks"] == []
    assert report["control_checked"] is True


# -- self-approval ------------------------------------------------------------------------


def test_an_agent_thread_approving_its_own_call_gets_nothing(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    data, _, _ = setup
    approval_id = agent.held(data, "c1", "prod")
    # A thread in the agent process approves through the library: refused (no key).
    agent.send(id="s1", self_approve=True)
    errors = agent.result("s1")["self_approve"]
    assert errors and all("NotAuthenticatedError" in e for e in errors), errors
    assert "signed by a decider's key" in errors[0]
    # It writes the approval row itself: the call is still not released.
    set_status(data, approval_id, "approved", by="alice")
    result = agent.result("c1")
    assert result["ran"] is False
    assert "no decision (status rewritten)" in result["reason"]
    assert "tampered" in result["reason"]
    assert "status" in " ".join(broken_refs(data)[approval_id])


def test_a_signature_by_a_decider_the_rule_does_not_list_or_for_another_request_fails(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    """A replayed, validly signed approval of another request releases nothing."""
    data, _, env = setup
    first = agent.held(data, "c1", "prod")
    assert cli(data, env, people["alice"], "approve", first).returncode == 0
    assert agent.result("c1")["ran"] is True
    second = agent.held(data, "c2", "prod")
    con = sqlite3.connect(data / "control.sqlite")
    body, key_id, signature = con.execute(
        "SELECT body, key_id, signature FROM control_ledger WHERE kind = 'decision'"
    ).fetchone()
    top = con.execute("SELECT max(seq) FROM control_ledger").fetchone()[0]
    con.execute(
        "INSERT INTO control_ledger (seq, kind, ref, body, hash, key_id, signature)"
        " VALUES (?, 'decision', ?, ?, ?, ?, ?)",
        (top + 1, second, body, hashlib.sha256(body.encode()).hexdigest(), key_id, signature),
    )
    con.execute(
        "UPDATE approvals SET status = 'approved', decided_by = 'alice', decided_at = ?"
        " WHERE approval_id = ?",
        (time.time(), second),
    )
    con.commit()
    con.close()
    result = agent.result("c2")
    assert result["ran"] is False and "does not approve this request" in result["reason"]
    assert second in broken_refs(data)
    # mallory (an approver the rule does not list) cannot approve either.
    third = agent.held(data, "c3", "prod")
    refused = cli(data, env, people["mallory"], "approve", third)
    assert refused.returncode == 2 and "may not decide" in refused.stderr


# -- red-team edits of a held request ---------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("approvers", '["alice", "mallory"]'),
        ("expires_at", 4102444800.0),
        ("blast_radius", "Low"),
        ("reason", "routine, pre-approved"),
        ("tool_name", "status"),
    ],
)
def test_an_edited_request_is_not_decided_flagged_everywhere_and_never_released(
    setup: tuple[Path, Path, dict[str, str]],
    agent: Agent,
    people: dict[str, str],
    column: str,
    value: Any,
) -> None:
    data, _, env = setup
    approval_id = agent.held(data, "c1", "prod")
    sql(data, f"UPDATE approvals SET {column} = ? WHERE approval_id = ?", value, approval_id)
    # The decider's command line refuses to sign what was edited (exit 2, nothing changed).
    for who in ("alice", "mallory"):
        refused = cli(data, env, people[who], "approve", approval_id)
        assert refused.returncode == 2
        assert "edited" in refused.stderr and column in refused.stderr
    # The views and `tooltrail verify` flag the record, naming the field.
    view = cli(data, env, people["alice"], "approvals", "--format", "json")
    (row,) = json.loads(view.stdout)
    assert row["verified"] is False and column in row["tampered"]
    check = cli(data, env, people["alice"], "verify", "--format", "json")
    assert check.returncode == 1
    assert any(column in b["what"] for b in json.loads(check.stdout)["breaks"])
    # A forger who marks it approved too: the held call is not released.
    set_status(data, approval_id, "approved", by="alice")
    result = agent.result("c1")
    assert result["ran"] is False
    assert "tampered" in result["reason"] or "changed in the control store" in result["reason"]


def test_an_expiry_pushed_in_the_file_does_not_extend_the_wait(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent
) -> None:
    data, _, _ = setup
    approval_id = agent.held(data, "c1", "short-1")
    sql(
        data,
        "UPDATE approvals SET expires_at = expires_at + 3600 WHERE approval_id = ?",
        approval_id,
    )
    result = agent.result("c1", timeout=10)
    assert result["ran"] is False and "expiry was pushed" in result["reason"]


def test_an_early_expiry_written_into_the_file_releases_nothing(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent
) -> None:
    """on_timeout: ALLOW runs the call at the deadline; marking it expired early must not."""
    data, _, _ = setup
    approval_id = agent.held(data, "c1", "soon-1")
    sql(
        data,
        "UPDATE approvals SET status = 'expired', decided_at = ? WHERE approval_id = ?",
        time.time(),
        approval_id,
    )
    result = agent.result("c1")
    assert result["ran"] is False and "expired before its deadline" in result["reason"]


def test_a_renamed_decider_is_flagged(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    data, _, env = setup
    approval_id = agent.held(data, "c1", "prod")
    assert cli(data, env, people["alice"], "deny", approval_id, "--reason", "no").returncode == 0
    assert agent.result("c1")["ran"] is False
    sql(data, "UPDATE approvals SET decided_by = 'bob' WHERE approval_id = ?", approval_id)
    assert any("decider renamed" in p for p in broken_refs(data)[approval_id])
    view = cli(data, env, people["alice"], "approvals", "--status", "all", "--format", "json")
    (row,) = json.loads(view.stdout)
    assert row["verified"] is False and "decider renamed" in row["tampered"]


# -- session control ----------------------------------------------------------------------


def test_a_deleted_cancel_does_not_resurrect_the_session(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    data, policy, env = setup
    agent.send(id="c0", call="status", target="x")
    assert agent.result("c0")["ran"] is True
    assert cli(data, env, people["olga"], "cancel", "sess-1").returncode == 0
    agent.send(id="c1", call="status", target="x")
    assert agent.result("c1")["ran"] is False
    # The red team deletes every trace of the cancel.
    sql(data, "DELETE FROM control_events")
    sql(data, "UPDATE session_controls SET state = 'running'")
    sql(data, "DELETE FROM control_ledger WHERE kind = 'control'")
    # The running agent: still canceled.
    agent.send(id="c2", call="status", target="x")
    assert agent.result("c2")["ran"] is False
    # A fresh agent process that never saw the cancel: the ledger's gap gives it away.
    fresh = Agent(data, policy, "sess-1", clean_env(**env))
    try:
        fresh.send(id="f1", call="status", target="x")
        result = fresh.result("f1")
    finally:
        fresh.close()
    assert result["ran"] is False and "control ledger lost entries" in result["reason"]
    assert any(b.record == "ledger" and "deleted" in b.problem for b in verify_control(data))
    check = cli(data, env, people["olga"], "verify")
    assert check.returncode == 1 and "deleted" in check.stdout


def test_a_forged_resume_does_not_release_a_paused_session(
    setup: tuple[Path, Path, dict[str, str]], agent: Agent, people: dict[str, str]
) -> None:
    """A resume written by the agent through the library (no key) is refused; one written
    with plain SQL (state row flipped) fails closed."""
    data, _, env = setup
    agent.send(id="c0", call="status", target="x")
    assert agent.result("c0")["ran"] is True
    assert cli(data, env, people["olga"], "pause", "sess-1").returncode == 0
    with ControlStore(data) as store, pytest.raises(Exception, match="signed by a decider"):
        store.set_session_state("sess-1", "resume", by="olga")
    sql(data, "UPDATE session_controls SET state = 'running'")
    agent.send(id="c1", call="status", target="x")
    result = agent.result("c1")
    assert result["ran"] is False and "signed record says paused" in result["reason"]


def test_single_user_mode_says_decisions_are_unsigned(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ControlStore(data) as store:
        from tooltrail.control import ApprovalRequest

        record = store.file_request(ApprovalRequest("deploy", {"target": "x"}))
    done = run_cli(data, "approve", record.approval_id, "--by", "me", timeout=DEADLINE_S)
    assert done.returncode == 0
    assert "decisions are not signed" in done.stderr and "single-user mode" in done.stderr
    view = run_cli(data, "approvals", "--status", "all", "--format", "json", timeout=DEADLINE_S)
    assert "decisions are not signed" in view.stderr
    assert json.loads(view.stdout)[0]["verified"] is True  # unsigned, but consistent
    assert (data / "control.sqlite").exists()


def test_the_collector_answers_a_session_state_that_does_not_verify_as_canceled(
    setup: tuple[Path, Path, dict[str, str]], people: dict[str, str]
) -> None:
    """A remote agent asks the collector; a paused session flipped back to running in
    the collector's store is answered canceled (fail closed), naming the tampering."""
    from collect_support import CollectorProcess, request

    data, _, env = setup
    bot = add(data, "agent", "bot", None, people["admin"])
    assert cli(data, env, people["olga"], "pause", "s-http", "--force").returncode == 0
    collector = CollectorProcess(data, env=env).start()
    try:
        auth = {"Authorization": f"Bearer {bot}"}
        status, _, body = request(collector.url, "GET", "/v1/sessions/s-http/control", None, auth)
        assert status == 200 and json.loads(body)["state"] == "paused"
        sql(data, "UPDATE session_controls SET state = 'running'")
        status, _, body = request(collector.url, "GET", "/v1/sessions/s-http/control", None, auth)
        doc = json.loads(body)
        assert status == 200 and doc["state"] == "canceled"
        assert doc["changed_by"] == "tooltrail:tampered" and "signed record" in doc["reason"]
    finally:
        collector.stop()


def test_values_json_cannot_carry_exactly_are_stored_and_hashed_as_strings(tmp_path: Path) -> None:
    """Integers beyond 2^53 and non-finite floats differ between JSON readers: the store
    keeps them as strings, so the stored text is what RFC 8785 hashes, in any language."""
    from tooltrail.control import ApprovalRequest

    with ControlStore(tmp_path / "data") as store:
        record = store.file_request(
            ApprovalRequest("deploy", {"n": 2**60, "x": float("nan"), "ok": [1, 2.5, True]})
        )
    shown = json.loads(record.arguments)
    assert shown == {"n": str(2**60), "x": "nan", "ok": [1, 2.5, True]}
    digest = hashlib.sha256(rfc8785.dumps(shown)).hexdigest()
    assert record.arguments_hash == f"jcs-sha256:v1:{digest}"
    assert record.arguments_intact()


def test_a_remote_agent_refuses_an_expiry_before_its_own_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expiry is not signed: with a pinned trust root the HTTP broker checks an "expired"
    answer against the deadline the collector gave it at filing (security review: an early
    expiry released an on_timeout ALLOW call on a remote agent)."""
    import time as _time

    from tooltrail.instrumentation import http_broker

    root = tmp_path / "trust.json"
    root.write_text("{}")
    monkeypatch.setenv("TOOLTRAIL_TRUST_ROOT", str(root))
    filed = http_broker._Filed("apr-1", {"expires_at": _time.time() + 600})
    early = http_broker._unverified(filed, {"status": "expired"})
    assert early is not None and "before its deadline" in early
    due = http_broker._Filed("apr-2", {"expires_at": _time.time() - 5})
    assert http_broker._unverified(due, {"status": "expired"}) is None
