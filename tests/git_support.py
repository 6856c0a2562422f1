"""Shared by the tests that drive the real mcp-server-git: a throw-away repository with
one commit, a git runner, and an environment without the caller's tooltrail/OTel settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def init_repo(path: Path) -> Path:
    """A git repository at ``path`` (created if needed) with one commit on ``main``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "agent@example.com")
    git(path, "config", "user.name", "Agent")
    (path / "README.md").write_text("hello\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without TOOLTRAIL_* / OTEL_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOOLTRAIL_", "OTEL_"))}
    # No background tooltrail.duckdb builds from the suite's agents (see conftest.py).
    env["TOOLTRAIL_DUCKDB_FILE"] = "0"
    env.update(extra)
    return env
