"""The separated deployment that makes self-approval impossible (docs/SECURITY.md,
"Signed decisions"), with a real second OS account.

The collector, its data directory (0700) and the deciders' keys belong to this account
(root here); the agent runs as a fresh system user created for the test (``useradd``,
removed after), holding only an agent credential and read access to the pinned trust
root. The agent's own thread cannot open the control store, its credential cannot decide
(403), an approval row written into the store (by anyone who could) does not verify on
the agent's side, and a real signed approval releases the call.

Skipped where accounts cannot be made (not root, no ``useradd`` / ``runuser``), or where
no interpreter of this Python version is reachable by another account.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from access_support import add, invoke
from approval_support import CLI
from collect_support import CollectorProcess, request
from git_support import clean_env
from test_signed_decisions import AGENT, DEADLINE_S, POLICY, Agent

from tooltrail.control import ControlStore

SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
TOOLS = (shutil.which("useradd"), shutil.which("userdel"), shutil.which("runuser"))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(TOOLS) or not SYSTEM_PYTHON.exists(),
    reason="needs root, useradd/userdel/runuser and a system python of this version",
)


@pytest.fixture
def account() -> Iterator[str]:
    """A fresh system account for the agent, deleted afterwards."""
    name = f"tt-agent-{os.getpid()}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both accounts can read (the agent's files, the pinned trust root); only
    this account writes it."""
    path = Path(tempfile.mkdtemp(prefix="tt-separated-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _agent_argv() -> list[str]:
    """The agent script under the system interpreter with this venv's packages (the venv's
    own interpreter lives under /root here, which the other account cannot enter)."""
    packages = [p for p in site.getsitepackages() if "site-packages" in p]
    boot = (
        "import runpy, site, sys;"
        f"[site.addsitedir(p) for p in {packages!r}];"
        f"sys.argv = sys.argv[1:]; runpy.run_path({str(AGENT)!r}, run_name='__main__')"
    )
    return [str(SYSTEM_PYTHON), "-c", boot, str(AGENT)]


class AgentAs(Agent):
    """``Agent`` run as another OS account through ``runuser``."""

    def __init__(self, user: str, data: Path, policy: Path, env: dict[str, str]) -> None:
        import queue
        import threading

        pairs = [f"{k}={v}" for k, v in env.items()]
        self.proc = subprocess.Popen(
            [
                "runuser",
                "-u",
                user,
                "--",
                "env",
                "-i",
                *pairs,
                *_agent_argv(),
                str(data),
                str(policy),
                "sess-sep",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines = queue.Queue()
        self._results = {}
        threading.Thread(target=self._read, daemon=True).start()
        assert self.result("ready")["ready"]


def test_an_agent_under_its_own_account_cannot_approve_and_a_signed_approval_releases(
    tmp_path: Path, account: str, shared: Path
) -> None:
    ops = tmp_path / "ops" / "data"  # under root's 0700 pytest directory, and 0700 itself
    admin = add(ops, "user", "admin", "admin", None)
    alice = add(ops, "user", "alice", "approver", admin)
    bot = add(ops, "agent", "signed-agent", None, admin)
    ops.chmod(0o700)
    trust = shared / "trust-root.json"
    assert invoke(ops, "users", "export-keys", str(trust), token=admin)[0] == 0
    policy = shared / "policy.yaml"
    policy.write_text(POLICY)
    agent_data = shared / "agent-data"
    agent_data.mkdir()
    shutil.chown(agent_data, account, account)

    collector = CollectorProcess(ops, env={"TOOLTRAIL_TRUST_ROOT": str(trust)}).start()
    env = {
        "PATH": "/usr/bin:/bin",
        "TOOLTRAIL_COLLECTOR_URL": collector.url,
        "TOOLTRAIL_COLLECTOR_TOKEN": bot,
        "TOOLTRAIL_TRUST_ROOT": str(trust),
        "TOOLTRAIL_DUCKDB_FILE": "0",
    }
    agent = AgentAs(account, agent_data, policy, env)
    try:
        agent.send(id="c1", call="deploy", target="prod")
        approval_id = _pending_id(ops)
        # 1. Its own thread cannot even open the operator's control store.
        agent.send(id="s1", self_approve=True, data=str(ops))
        errors = agent.result("s1")["self_approve"]
        assert errors and "StoreError" in errors[0] and "ermission denied" in errors[0]
        # 2. Its credential decides nothing over HTTP.
        status, _, _ = request(
            collector.url,
            "POST",
            f"/v1/approvals/{approval_id}/decision",
            json.dumps({"outcome": "approved"}).encode(),
            {"Authorization": f"Bearer {bot}", "Content-Type": "application/json"},
        )
        assert status == 403
        # 3. A valid signed approval (alice's CLI, this account) releases the call; the
        #    agent verified it against the pinned trust root.
        done = subprocess.run(
            [*CLI, "approve", "--data", str(ops), approval_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env=clean_env(TOOLTRAIL_TOKEN=alice, TOOLTRAIL_TRUST_ROOT=str(trust)),
        )
        assert done.returncode == 0, done.stderr
        assert agent.result("c1") == {"id": "c1", "ran": True, "reason": None}
        # 4. An approval row written into the store without a signed decision: the agent
        #    checks the collector's answer against its trust root and refuses.
        agent.send(id="c2", call="deploy", target="prod-2")
        second = _pending_id(ops)
        con = sqlite3.connect(ops / "control.sqlite")
        con.execute(
            "UPDATE approvals SET status = 'approved', decided_by = 'alice', decided_at = 1"
            " WHERE approval_id = ?",
            (second,),
        )
        con.commit()
        con.close()
        result = agent.result("c2")
        assert result["ran"] is False
        assert "does not verify against the trust root" in result["reason"]
    finally:
        agent.close()
        collector.stop()


def _pending_id(data: Path) -> str:
    import time

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        with ControlStore(data) as store:
            found = store.list_approvals("pending")
        if found:
            return found[0].approval_id
        time.sleep(0.05)
    raise AssertionError("no pending request at the collector")
