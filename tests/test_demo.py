"""`tooltrail demo` end to end: real mcp-server-git, enforcement, approvals, landed data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tooltrail.demo.sandbox import commit_messages, git
from tooltrail.demo.scenarios import EXAMPLE_KEY

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the demo needs git")


def _tooltrail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLTRAIL_")}
    return subprocess.run(
        [sys.executable, "-m", "tooltrail.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _json(*args: str, cwd: Path) -> Any:
    result = _tooltrail(*args, "--format", "json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("demo")
    result = _tooltrail("demo", "--no-dashboard", "--sessions", "5", "--seed", "1", cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "sessions in" in result.stdout
    return cwd / "tooltrail-data"


def test_sessions_decisions_and_invariant(demo_dir: Path) -> None:
    sessions = _json("sessions", "--data", str(demo_dir), cwd=demo_dir)
    assert len(sessions) >= 5
    for s in sessions:
        assert s["allows"] + s["denies"] + s["rewrites"] + s["approvals"] == s["action_count"]
    assert len({s["agent_name"] for s in sessions}) >= 3
    children = [s for s in sessions if s["parent_session_id"]]
    parents = {s["session_id"] for s in sessions}
    assert children and all(c["parent_session_id"] in parents for c in children)
    decisions = _json(
        "query", "SELECT DISTINCT decision FROM actions", "--data", str(demo_dir), cwd=demo_dir
    )
    assert {d["decision"] for d in decisions} == {"ALLOW", "DENY", "REWRITE", "REQUIRE_APPROVAL"}
    radii = _json(
        "query", "SELECT DISTINCT blast_radius FROM actions", "--data", str(demo_dir), cwd=demo_dir
    )
    assert {r["blast_radius"] for r in radii} == {"Low", "Medium", "High", "Critical"}
    tokens = _json(
        "query",
        "SELECT sum(input_tokens) AS i FROM spans WHERE span_type = 'llm'",
        "--data",
        str(demo_dir),
        cwd=demo_dir,
    )
    assert tokens[0]["i"] > 0


def test_denied_actions_never_happened(demo_dir: Path) -> None:
    repos = [p for p in (demo_dir / "sandbox").glob("*/*") if (p / ".git").exists()]
    denied = _json(
        "query",
        "SELECT tool_name, target_repo, arguments FROM actions WHERE decision = 'DENY'",
        "--data",
        str(demo_dir),
        cwd=demo_dir,
    )
    assert {d["tool_name"] for d in denied} >= {"git_add", "git_reset"}
    for repo in repos:
        # the .env file an agent tried to stage is in no commit of any branch
        assert git(repo, "log", "--all", "--format=%H", "--", ".env").strip() == ""
        # and the key an agent pasted into a commit message never reached history
        assert all(EXAMPLE_KEY not in m for m in commit_messages(repo))


def test_rewrites_changed_what_the_server_did(demo_dir: Path) -> None:
    rewrites = _json(
        "query",
        "SELECT tool_name, target_repo, arguments_rewritten FROM actions "
        "WHERE decision = 'REWRITE' AND tool_name IN ('git_checkout', 'git_commit')",
        "--data",
        str(demo_dir),
        cwd=demo_dir,
    )
    assert {r["tool_name"] for r in rewrites} == {"git_checkout", "git_commit"}
    for r in rewrites:
        repo = Path(r["target_repo"])
        args = json.loads(r["arguments_rewritten"])
        if r["tool_name"] == "git_checkout":  # asked for main, got the agent's branch
            assert args["branch_name"].startswith("agent/")
            assert args["branch_name"] in git(repo, "branch", "--format=%(refname:short)")
        else:  # the commit happened, with the key redacted from its message
            assert args["message"] in commit_messages(repo)


def _approval_story(data: Path, approval_ids: set[str]) -> dict[str, tuple[str, str, str]]:
    """approval id -> (store status, approvals view outcome, the tool span's status)."""
    store = {
        r["approval_id"]: r["status"]
        for r in _json("approvals", "--status", "all", "--data", str(data), cwd=data)
    }
    view = {
        r["approval_id"]: r["outcome"]
        for r in _json(
            "query", "SELECT approval_id, outcome FROM approvals", "--data", str(data), cwd=data
        )
    }
    spans = {
        r["approval_id"]: r["approval_status"]
        for r in _json(
            "query",
            "SELECT approval_id, approval_status FROM actions WHERE approval_id IS NOT NULL",
            "--data",
            str(data),
            cwd=data,
        )
    }
    return {a: (store[a], view.get(a, ""), spans.get(a, "")) for a in approval_ids}


def test_approvals_approved_denied_and_left_for_the_operator(demo_dir: Path) -> None:
    records = _json("approvals", "--status", "all", "--data", str(demo_dir), cwd=demo_dir)
    # --no-dashboard without --wait: the operator's agents stopped waiting as the demo
    # ended, so what was left for the operator is abandoned, and nothing shows pending.
    assert {r["status"] for r in records} == {"approved", "denied", "abandoned"}
    assert _json("approvals", "--data", str(demo_dir), cwd=demo_dir) == []
    abandoned = {r["approval_id"] for r in records if r["status"] == "abandoned"}
    assert len(abandoned) == 2  # the release left for the operator: two calls held at once
    # Store, approvals view and tool span tell one story, for every request.
    story = _approval_story(demo_dir, {r["approval_id"] for r in records})
    assert all(store == view == span for store, view, span in story.values()), story
    view = _json(
        "query", "SELECT approval_id FROM approvals", "--data", str(demo_dir), cwd=demo_dir
    )
    assert {r["approval_id"] for r in view} == {r["approval_id"] for r in records}
    approved_commits = [
        r for r in records if r["status"] == "approved" and r["tool_name"] == "git_commit"
    ]
    (release,) = [p for p in (demo_dir / "sandbox" / "releases").iterdir() if (p / ".git").exists()]
    assert approved_commits
    for r in approved_commits:  # an approved commit really happened
        assert json.loads(r["arguments"])["message"] in commit_messages(release)


def test_rerun_adds_sessions_and_fresh_starts_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("demo", "--no-dashboard", "--sessions", "3", "--data", str(data))
    assert _tooltrail(*args, "--seed", "2", cwd=tmp_path).returncode == 0
    first = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    before = {
        r["approval_id"]: r["status"]
        for r in _json("approvals", "--status", "all", "--data", str(data), cwd=tmp_path)
    }
    assert _tooltrail(*args, "--seed", "3", cwd=tmp_path).returncode == 0
    second = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    assert first < second  # re-running adds sessions
    # The second run's approver decides only its own requests: the first run's keep
    # the outcome they had.
    after = {
        r["approval_id"]: r["status"]
        for r in _json("approvals", "--status", "all", "--data", str(data), cwd=tmp_path)
    }
    assert before and {a: after[a] for a in before} == before and len(after) > len(before)
    assert _tooltrail(*args, "--fresh", cwd=tmp_path).returncode == 0
    fresh = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    assert fresh and not fresh & second  # --fresh started over


def _processes_naming(text: str) -> list[int]:
    """Pids of the processes whose command line names ``text`` (the demo's data dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and text in cmdline and int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def _wait_for(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pending(data: Path) -> list[dict[str, Any]]:
    return list(_json("approvals", "--data", str(data), cwd=data.parent))


def test_calls_left_for_the_operator_are_live_while_the_dashboard_runs(tmp_path: Path) -> None:
    """The demo's promise: the calls it leaves for you wait for you. Approving one with
    the real CLI while the dashboard runs makes the real git call happen, denying one
    refuses it, and stopping the demo (SIGTERM) ends what is still pending abandoned,
    in the store, the span and the view alike, with no process left behind."""
    from dashboard_support import free_port

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLTRAIL_")}
    cmd = [sys.executable, "-m", "tooltrail.cli", "demo", "--sessions", "3", "--seed", "4"]
    cmd += ["--port", str(free_port()), "--data", str(data)]
    demo = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # up to the dashboard's address: the agents are waiting
            lines.append(line)
            if line.startswith("dashboard: http://"):
                break
        printed = {w for line in lines for w in line.split() if w.startswith("apr-")}
        pending = {r["approval_id"]: r for r in _pending(data)}
        assert len(printed) == 2 and set(pending) == printed, "".join(lines)
        for r in pending.values():  # their agents are alive and still waiting
            assert r["status"] == "pending" and Path(f"/proc/{r['agent_pid']}").exists()
        (commit,) = [r for r in pending.values() if r["tool_name"] == "git_commit"]
        (branch,) = [r for r in pending.values() if r["tool_name"] == "git_create_branch"]
        (release,) = (data / "sandbox" / "releases").iterdir()
        message = json.loads(commit["arguments"])["message"]
        count = commit_messages(release).count(message)

        result = _tooltrail(
            "approve", commit["approval_id"], "--by", "alice", "--data", str(data), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        # The real git call happened: one more commit with that message in the repo.
        _wait_for(lambda: commit_messages(release).count(message) == count + 1, "the commit")
        result = _tooltrail(
            "deny", branch["approval_id"], "--by", "dana", "--data", str(data), cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        # Both decided, the captain goes on: its version bump is held for the operator.
        (bump,) = _wait_for(lambda: _pending(data), "the captain's held commit")
        assert bump["agent_name"] == "release-captain"

        demo.send_signal(signal.SIGTERM)  # as a supervisor stops the dashboard
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:  # stopped as a person would, so it stops what it started
            demo.terminate()
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
    assert demo.returncode == 0, rest
    assert f"{bump['approval_id']} abandoned" in rest
    assert _processes_naming(str(data)) == []  # no agent, MCP server or dashboard left
    branch_name = json.loads(branch["arguments"])["branch_name"]
    assert branch_name not in git(release, "branch", "--format=%(refname:short)")
    ids = {commit["approval_id"], branch["approval_id"], bump["approval_id"]}
    assert _approval_story(data, ids) == {
        commit["approval_id"]: ("approved",) * 3,
        branch["approval_id"]: ("denied",) * 3,
        bump["approval_id"]: ("abandoned",) * 3,
    }


def test_no_dashboard_wait_keeps_the_agents_waiting_for_a_bounded_time(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("demo", "--no-dashboard", "--sessions", "3", "--wait", "2", "--data", str(data))
    result = _tooltrail(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "their agents are waiting for 2s" in result.stdout
    left = {w for w in result.stdout.split() if w.startswith("apr-")}
    assert len(left) == 2
    assert set(_approval_story(data, left).values()) == {("abandoned",) * 3}
    assert _processes_naming(str(data)) == []
    refused = _tooltrail("demo", "--wait", "2", "--data", str(data), cwd=tmp_path)
    assert refused.returncode == 2 and "--no-dashboard" in refused.stderr


def test_a_directory_with_other_data_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    result = _tooltrail("demo", "--no-dashboard", "--data", str(other), cwd=tmp_path)
    assert result.returncode == 2 and "did not create" in result.stderr
    assert (other / "mine.txt").exists()
    result = _tooltrail("demo", "--no-dashboard", "--fresh", "--data", str(other), cwd=tmp_path)
    assert result.returncode == 2 and (other / "mine.txt").exists()


def test_replaying_the_producing_policy_changes_nothing(demo_dir: Path) -> None:
    """Decisions made at call time (annotations, redacting rewrites included) are
    reproduced exactly by a replay of the same policy over the landed data."""
    from tooltrail.demo import demo_policy_path

    report = _json(
        "policy", "replay", str(demo_policy_path()), "--data", str(demo_dir), cwd=demo_dir
    )
    assert report["actions"] > 0
    assert (report["changed"], report["newly_unmatched"], report["changed_on_redacted"]) == (
        0,
        0,
        0,
    )
    reads = _json(
        "query",
        "SELECT count(*) AS n FROM actions WHERE policy_rule = 'reads-are-fine'",
        "--data",
        str(demo_dir),
        cwd=demo_dir,
    )
    assert reads[0]["n"] > 0  # readOnlyHint rules were part of what was replayed


def test_a_client_that_knows_nothing_of_tooltrail_is_governed_by_the_gateway(
    demo_dir: Path,
) -> None:
    sql = (
        "select tool_name, decision, service_name, trigger, governed_by, mcp_client_name,"
        " attributes from actions where agent_name = 'desktop-assistant' order by sequence"
    )
    rows = _json("query", sql, "--data", str(demo_dir), cwd=demo_dir)
    assert [(r["tool_name"], r["decision"]) for r in rows] == [
        ("git_status", "ALLOW"),
        ("git_log", "ALLOW"),
        ("git_branch", "ALLOW"),
        ("git_reset", "DENY"),
    ]
    for r in rows:
        assert (r["service_name"], r["trigger"]) == ("tooltrail-gateway", "manual")
        assert (r["governed_by"], r["mcp_client_name"]) == ("gateway", "desktop-assistant")
        assert "tooltrail.gateway" not in json.loads(r["attributes"])  # landed in its column


def test_the_gateway_session_is_told_apart_from_the_instrumented_fleet(demo_dir: Path) -> None:
    sessions = _json("sessions", "--data", str(demo_dir), cwd=demo_dir)
    by_governor: dict[str | None, list[dict[str, Any]]] = {}
    for s in sessions:
        by_governor.setdefault(s["governed_by"], []).append(s)
    (gateway,) = by_governor.pop("gateway")
    assert (gateway["agent_name"], gateway["mcp_client_name"]) == (
        "desktop-assistant",
        "desktop-assistant",
    )
    assert gateway["mcp_client_version"] == "1.0"
    # every other session of the demo is its instrumented fleet
    assert set(by_governor) == {"instrumentation"}
    assert len(by_governor["instrumentation"]) == len(sessions) - 1
    assert all(s["mcp_client_name"] is None for s in by_governor["instrumentation"])
    only = _json("sessions", "--governed-by", "gateway", "--data", str(demo_dir), cwd=demo_dir)
    assert [s["session_id"] for s in only] == [gateway["session_id"]]
    table = _tooltrail("sessions", "--data", str(demo_dir), cwd=demo_dir)
    assert table.returncode == 0, table.stderr
    (line,) = [ln for ln in table.stdout.splitlines() if gateway["session_id"][:12] in ln]
    assert "gateway" in line
