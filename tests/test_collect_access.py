"""The collector with access control (issue 16): per-user and per-agent bearer credentials.

A real `tooltrail collect` process over HTTP, its data directory's users and agents added
through the real CLI. On main these fail: the collector knows no credentials (a user's
credential is a wrong token, 401), the body's `by` is the decider, and an agent token lists
and files for every agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from access_support import add, credential_of, invoke, people
from collect_support import CollectorProcess, post_traces, request, wait_until

from tooltrail.control import ControlStore

SHARED_TOKEN = "shared-span-token-0123456789"
OLD_DECISION_TOKEN = "old-decision-token-0123456789"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    data = tmp_path_factory.mktemp("access") / "data"
    data.mkdir()
    creds = people(data)
    creds["remote-bot"] = add(data, "agent", "remote-bot", None, creds["admin"])
    args = ("--token", SHARED_TOKEN, "--decision-token", OLD_DECISION_TOKEN)
    with CollectorProcess(data, *args) as proc:
        yield proc, creds


@pytest.fixture
def col(setup: tuple[CollectorProcess, dict[str, str]]) -> CollectorProcess:
    return setup[0]


@pytest.fixture
def creds(setup: tuple[CollectorProcess, dict[str, str]]) -> dict[str, str]:
    return setup[1]


def _call(
    col: CollectorProcess, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    status, _, raw = request(col.url, method, path, data, headers)
    return status, json.loads(raw) if raw else None


def _file(col: CollectorProcess, token: str, session: str, **extra: Any) -> tuple[int, Any]:
    body = {
        "tool_name": "git_commit",
        "arguments": {"repo_path": "/srv/app", "message": "ship"},
        "session_id": session,
        "approvers": ["alice", "role:operator"],
        **extra,
    }
    return _call(col, "POST", "/v1/approvals", token, body)


def _decide(col: CollectorProcess, approval_id: str, token: str | None, **body: Any) -> int:
    doc = {"outcome": "approved", **body}
    return _call(col, "POST", f"/v1/approvals/{approval_id}/decision", token, doc)[0]


def _status(col: CollectorProcess, approval_id: str) -> tuple[str, str | None]:
    with ControlStore(col.data_dir) as store:
        record = store.get(approval_id)
    return record.status, record.decided_by


def test_decisions_take_the_credentials_identity_and_role(
    col: CollectorProcess, creds: dict[str, str]
) -> None:
    status, filed = _file(col, creds["bot-a"], "sess-decide")
    assert status == 201 and filed["agent_name"] == "bot-a"
    apr = filed["approval_id"]
    # No credential, a wrong one, the old shared decision token: 401.
    assert _decide(col, apr, None, by="alice") == 401
    assert _decide(col, apr, creds["alice"][:-2] + "xx") == 401
    assert _decide(col, apr, OLD_DECISION_TOKEN, by="alice") == 401
    # A viewer, an agent (this one filed it), an approver the rule does not list: 403.
    assert _decide(col, apr, creds["vic"]) == 403
    assert _decide(col, apr, creds["bot-a"]) == 403
    assert _decide(col, apr, creds["bob"]) == 403
    # A body naming someone else than the credential's user: 403 (by or decided_by).
    assert _decide(col, apr, creds["bob"], by="alice") == 403
    assert _decide(col, apr, creds["bob"], decided_by="alice") == 403
    assert _status(col, apr) == ("pending", None)
    # The listed approver decides; the record names her whatever the body says.
    status, record = _call(
        col, "POST", f"/v1/approvals/{apr}/decision", creds["alice"], {"outcome": "approved"}
    )
    assert status == 200 and record["decided_by"] == "alice"
    assert _status(col, apr) == ("approved", "alice")
    # role:operator lets an operator (and an admin) decide the next one.
    _, second = _file(col, creds["bot-a"], "sess-decide")
    assert _decide(col, second["approval_id"], creds["olga"], outcome="denied", by="olga") == 200
    assert _status(col, second["approval_id"]) == ("denied", "olga")


def test_session_control_needs_an_operator(col: CollectorProcess, creds: dict[str, str]) -> None:
    _file(col, creds["bot-a"], "sess-ops")
    path = "/v1/sessions/sess-ops/control"
    for name in ("vic", "alice", "bot-a"):
        assert _call(col, "POST", path, creds[name], {"action": "pause"})[0] == 403
    assert _call(col, "POST", path, OLD_DECISION_TOKEN, {"action": "pause", "by": "x"})[0] == 401
    status, _ = _call(col, "POST", path, creds["olga"], {"action": "pause", "by": "admin"})
    assert status == 403  # olga cannot record the change as admin
    status, doc = _call(col, "POST", path, creds["olga"], {"action": "pause"})
    assert status == 200 and (doc["state"], doc["changed_by"]) == ("paused", "olga")
    # The agent whose session it is reads its state; another agent may not; users may.
    assert _call(col, "GET", path, creds["bot-a"])[1]["state"] == "paused"
    assert _call(col, "GET", path, creds["bot-b"])[0] == 403
    assert _call(col, "GET", path, creds["vic"])[1]["changed_by"] == "olga"


def test_agents_see_and_file_only_their_own(col: CollectorProcess, creds: dict[str, str]) -> None:
    status, doc = _file(col, creds["bot-a"], "sess-a", agent_name="bot-b")
    assert status == 403 and "may not file a request as agent 'bot-b'" in doc["message"]
    status, mine = _file(col, creds["bot-a"], "sess-a", agent_name="bot-a")
    assert status == 201
    apr = mine["approval_id"]
    # bot-b cannot file into bot-a's session, read its request, list it, or withdraw it.
    assert _file(col, creds["bot-b"], "sess-a")[0] == 403
    assert _call(col, "GET", f"/v1/approvals/{apr}", creds["bot-b"])[0] == 404
    status, listed = _call(col, "GET", "/v1/approvals?status=all", creds["bot-b"])
    assert status == 200 and {r["agent_name"] for r in listed["approvals"]} <= {"bot-b"}
    secret = mine["withdraw_secret"]
    path = f"/v1/approvals/{apr}/withdraw"
    assert _call(col, "POST", path, creds["bot-b"], {"withdraw_secret": secret})[0] == 404
    # bot-a reads and lists its own; a viewer lists everyone's.
    assert _call(col, "GET", f"/v1/approvals/{apr}", creds["bot-a"])[1]["status"] == "pending"
    _, own = _call(col, "GET", "/v1/approvals?status=all", creds["bot-a"])
    assert apr in {r["approval_id"] for r in own["approvals"]}
    assert {r["agent_name"] for r in own["approvals"]} == {"bot-a"}
    _, everyone = _call(col, "GET", "/v1/approvals?status=all", creds["vic"])
    assert apr in {r["approval_id"] for r in everyone["approvals"]}
    # Users do not file requests; the shared span token neither (it sends spans only).
    assert _file(col, creds["admin"], "sess-u")[0] == 403
    assert _file(col, SHARED_TOKEN, "sess-u")[0] == 401
    # The filer withdraws its own.
    status, doc = _call(col, "POST", path, creds["bot-a"], {"withdraw_secret": secret})
    assert status == 200 and doc["status"] == "abandoned"


def _span_body() -> bytes:
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "probe",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000100000000",
    }
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [span]}]}]}
    return json.dumps(doc).encode()


def test_spans_come_from_agents_or_the_shared_token(
    col: CollectorProcess, creds: dict[str, str]
) -> None:
    ct = "application/json"

    def send(token: str | None) -> int:
        extra = {} if token is None else {"Authorization": f"Bearer {token}"}
        return post_traces(col.url, _span_body(), ct, extra)[0]

    assert send(creds["bot-a"]) == 200
    assert send(SHARED_TOKEN) == 200
    assert send(creds["alice"]) == 403
    assert send(None) == 401
    assert send(OLD_DECISION_TOKEN) == 401


def test_disabled_and_rotated_credentials_are_refused_at_once(
    col: CollectorProcess, creds: dict[str, str]
) -> None:
    root = col.data_dir
    carol = add(root, "user", "carol", "approver", creds["admin"])
    bot = add(root, "agent", "bot-c", None, creds["admin"])
    _, filed = _file(col, bot, "sess-c")
    apr = filed["approval_id"]
    listing = "/v1/approvals"
    assert _call(col, "GET", listing, carol)[0] == 200  # verified once, then cached
    assert invoke(root, "users", "rotate", "carol", token=creds["admin"])[0] == 0
    assert _call(col, "GET", listing, carol)[0] == 401  # the cache holds no stale credential
    out = invoke(root, "users", "rotate", "carol", token=creds["admin"])[1]
    carol = credential_of(out)
    assert _call(col, "GET", listing, carol)[0] == 200
    assert invoke(root, "users", "disable", "carol", token=creds["admin"])[0] == 0
    status, doc = _call(col, "GET", listing, carol)
    assert status == 401 and "disabled" in doc["message"]
    assert _call(col, "GET", f"/v1/approvals/{apr}", bot)[0] == 200
    assert invoke(root, "agents", "disable", "bot-c", token=creds["admin"])[0] == 0
    assert _call(col, "GET", f"/v1/approvals/{apr}", bot)[0] == 401


AGENT = """\
import json, sys
import tooltrail.instrumentation as tt
from tooltrail.instrumentation.http_broker import HttpApprovalBroker

url, token, data, policy = sys.argv[1:5]
tt.configure(data_dir=data, policy=policy, enforce=True, agent_name="remote-bot",
             broker=HttpApprovalBroker(url, token, poll_wait_s=2), session_control=False)

@tt.tool
def git_commit(repo_path: str, message: str) -> str:
    return f"committed {message!r} in {repo_path}"

try:
    print(json.dumps({"result": git_commit("/srv/app", "ship it")}))
except tt.ToolCallDenied as e:
    print(json.dumps({"denied": str(e)}))
"""

POLICY = """\
version: 1
default: ALLOW
rules:
  - id: commit-needs-approval
    when: {tool: git_commit}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 60s, on_timeout: DENY, approvers: ["alice"]}
"""


def test_a_remote_agent_with_its_credential_is_released_by_the_listed_approver(
    tmp_path: Path, col: CollectorProcess, creds: dict[str, str]
) -> None:
    (tmp_path / "agent.py").write_text(AGENT)
    (tmp_path / "policy.yaml").write_text(POLICY)
    argv = [sys.executable, str(tmp_path / "agent.py"), col.url, creds["remote-bot"]]
    argv += [str(tmp_path / "agent-data"), str(tmp_path / "policy.yaml")]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:

        def held() -> list[dict[str, Any]]:
            _, doc = _call(col, "GET", "/v1/approvals", creds["vic"])
            return [r for r in doc["approvals"] if r["agent_name"] == "remote-bot"]

        wait_until(lambda: bool(held()), timeout=30, what="the held call filed")
        (request_,) = held()
        apr = request_["approval_id"]
        time.sleep(0.5)
        assert agent.poll() is None, "the agent waits for the decision"
        assert _decide(col, apr, creds["remote-bot"]) == 403  # it cannot approve itself
        assert _decide(col, apr, creds["bob"], by="alice") == 403
        assert agent.poll() is None
        assert _decide(col, apr, creds["alice"]) == 200
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert json.loads(out.strip().splitlines()[-1]) == {
        "result": "committed 'ship it' in /srv/app"
    }, err
    assert _status(col, apr) == ("approved", "alice")


def test_off_loopback_needs_a_token_or_access_control(tmp_path: Path) -> None:
    from tooltrail.collector.server import CollectorConfig
    from tooltrail.errors import BadInputError

    data = tmp_path / "data"
    with pytest.raises(BadInputError, match="without --token or access control"):
        CollectorConfig(data, host="0.0.0.0").check()  # checked, never bound
    add(data, "user", "root", "admin", None)
    CollectorConfig(data, host="0.0.0.0").check()  # checked, never bound


def test_a_relay_credential_opens_no_http_route(
    col: CollectorProcess, creds: dict[str, str]
) -> None:
    """The dashboard's relay (``users add-relay``) signs OpenID sign-ins' decisions in the
    dashboard only: over HTTP its credential is nobody's (401 everywhere), nothing changes."""
    code, out, err = invoke(col.data_dir, "users", "add-relay", "http-relay", token=creds["admin"])
    assert code == 0, err
    relay = credential_of(out)
    _, filed = _file(col, creds["bot-a"], "sess-relay")
    apr = filed["approval_id"]
    assert _decide(col, apr, relay) == 401
    assert (
        _call(col, "POST", "/v1/sessions/sess-relay/control", relay, {"action": "pause"})[0] == 401
    )
    assert _call(col, "GET", "/v1/approvals", relay)[0] == 401
    assert _call(col, "GET", "/v1/sessions/sess-relay/control", relay)[0] == 401
    assert _file(col, relay, "sess-relay")[0] == 401
    extra = {"Authorization": f"Bearer {relay}"}
    assert post_traces(col.url, _span_body(), "application/json", extra)[0] == 401
    assert _status(col, apr) == ("pending", None)
