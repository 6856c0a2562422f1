"""The stdio gateway releases held calls through the same broker, so it verifies decisions
too: with access control on and a pinned trust root, an approval written into
``control.sqlite`` with plain SQL while the gateway holds a call (the official TypeScript
MCP SDK client, the real filesystem server) does not release it; alice's signed approval
does.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from access_support import add, invoke
from approval_support import CLI, pending
from gateway_support import (
    client_results,
    fs_server,
    proxy_command,
    require_node,
    start_client,
    text_of,
    write_plan,
)
from git_support import clean_env


@pytest.fixture(autouse=True)
def _node() -> None:
    require_node()


def _write(root: Path, name: str) -> dict[str, object]:
    return {
        "op": "call",
        "name": "write_file",
        "arguments": {"path": str(root / name), "content": "hello"},
    }


def test_the_gateway_releases_only_a_signed_approval(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    data = tmp_path / "data"
    admin = add(data, "user", "admin", "admin", None)
    alice = add(data, "user", "alice", "approver", admin)
    trust = tmp_path / "trust" / "trust-root.json"
    assert invoke(data, "users", "export-keys", str(trust), token=admin)[0] == 0
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndefault: ALLOW\nrules:\n  - id: approve-reports\n"
        '    when: {tool: write_file, args: {path: "*report*"}}\n'
        "    decision: REQUIRE_APPROVAL\n"
        '    approval: {timeout: 2m, on_timeout: DENY, approvers: ["alice"]}\n'
    )
    steps = [_write(root, "report-1.txt"), _write(root, "report-2.txt")]
    env = clean_env(TOOLTRAIL_TRUST_ROOT=str(trust))
    plan = write_plan(tmp_path, proxy_command(policy, data, fs_server(root)), steps, env=env)
    client = start_client(plan)
    try:
        first = pending(data, 1, timeout=60)[0]
        con = sqlite3.connect(data / "control.sqlite")
        con.execute(
            "UPDATE approvals SET status = 'approved', decided_by = 'alice', decided_at = ?"
            " WHERE approval_id = ?",
            (time.time(), first.approval_id),
        )
        con.commit()
        con.close()

        def second_request() -> list[str]:
            found = pending(data, 1, timeout=60)
            return [r.approval_id for r in found if r.approval_id != first.approval_id]

        deadline = time.monotonic() + 60
        while not (second := second_request()) and time.monotonic() < deadline:
            time.sleep(0.05)
        done = subprocess.run(
            [*CLI, "approve", "--data", str(data), second[0]],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(TOOLTRAIL_TOKEN=alice, TOOLTRAIL_TRUST_ROOT=str(trust)),
        )
        assert done.returncode == 0, done.stderr
        forged, signed = client_results(client)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert forged["result"]["isError"] is True
    denial = json.loads(text_of(forged))
    assert "status rewritten" in denial["reason"] and "tampered" in denial["reason"]
    assert not (root / "report-1.txt").exists()
    assert signed["result"].get("isError") in (None, False)
    assert (root / "report-2.txt").read_text() == "hello"
