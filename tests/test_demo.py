"""`tooltrail demo` end to end: real mcp-server-git, enforcement, approvals, landed data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def test_approvals_approved_denied_and_pending(demo_dir: Path) -> None:
    records = _json("approvals", "--status", "all", "--data", str(demo_dir), cwd=demo_dir)
    assert {r["status"] for r in records} >= {"approved", "denied", "pending"}
    pending = _json("approvals", "--data", str(demo_dir), cwd=demo_dir)
    assert pending and all(r["status"] == "pending" for r in pending)
    # Held calls the agents gave up on still name their request: the view has no orphans.
    view = _json(
        "query",
        "SELECT approval_id, outcome FROM approvals",
        "--data",
        str(demo_dir),
        cwd=demo_dir,
    )
    assert view and all(r["approval_id"] for r in view)
    assert {r["approval_id"] for r in view} == {r["approval_id"] for r in records}
    approved_commits = [
        r for r in records if r["status"] == "approved" and r["tool_name"] == "git_commit"
    ]
    (release,) = [p for p in (demo_dir / "sandbox" / "releases").iterdir() if (p / ".git").exists()]
    for r in approved_commits:  # an approved commit really happened
        assert json.loads(r["arguments"])["message"] in commit_messages(release)


def test_rerun_adds_sessions_and_fresh_starts_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ("demo", "--no-dashboard", "--sessions", "3", "--data", str(data))
    assert _tooltrail(*args, "--seed", "2", cwd=tmp_path).returncode == 0
    first = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    left = {r["approval_id"] for r in _json("approvals", "--data", str(data), cwd=tmp_path)}
    assert _tooltrail(*args, "--seed", "3", cwd=tmp_path).returncode == 0
    second = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    assert first < second  # re-running adds sessions
    # What the first run left pending is the operator's: the second run's approver
    # decides only its own requests.
    still = {r["approval_id"] for r in _json("approvals", "--data", str(data), cwd=tmp_path)}
    assert left and left <= still
    assert _tooltrail(*args, "--fresh", cwd=tmp_path).returncode == 0
    fresh = {s["session_id"] for s in _json("sessions", "--data", str(data), cwd=tmp_path)}
    assert fresh and not fresh & second  # --fresh started over


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
        "select tool_name, decision, service_name, trigger, attributes from actions"
        " where agent_name = 'desktop-assistant' order by sequence"
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
        assert json.loads(r["attributes"])["tooltrail.gateway"] is True
