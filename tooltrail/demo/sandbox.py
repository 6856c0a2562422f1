"""The demo's sandbox: a few real git repositories with history, under the data directory.

Everything lives in ``<data>/sandbox``; the demo's MCP servers are confined to these
repositories, so it never touches the user's own repositories.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tooltrail.errors import TooltrailError

SANDBOX_DIR: Final = "sandbox"

# The example policy supervises repositories under a `releases/` folder.
RELEASE_REPO: Final = "platform-release"

# name -> (files of the first commit, later commit messages)
REPOS: Final[dict[str, tuple[dict[str, str], tuple[str, ...]]]] = {
    "payments-service": (
        {
            "README.md": "# payments-service\n\nCharges, refunds and payouts.\n",
            "src/charge.py": "def charge(amount_cents: int) -> int:\n    return amount_cents\n",
            "src/refund.py": "def refund(charge_id: str) -> str:\n    return charge_id\n",
        },
        ("Add idempotency keys to charges", "Retry payouts with backoff", "Bump stripe SDK"),
    ),
    "web-frontend": (
        {
            "README.md": "# web-frontend\n\nThe customer dashboard.\n",
            "src/App.tsx": "export const App = () => null;\n",
            "package.json": '{"name": "web-frontend", "version": "1.4.0"}\n',
        },
        ("Dark mode toggle", "Fix date picker in Safari"),
    ),
    "infra-terraform": (
        {
            "README.md": "# infra-terraform\n\nProduction infrastructure.\n",
            "main.tf": 'resource "aws_s3_bucket" "logs" {\n  bucket = "acme-logs"\n}\n',
        },
        ("Tighten bucket policy", "Add staging workspace", "Rotate KMS keys"),
    ),
    RELEASE_REPO: (
        {
            "README.md": "# platform-release\n\nRelease manifests; changes are supervised.\n",
            "CHANGELOG.md": "# Changelog\n",
            "VERSION": "2.7.0\n",
        },
        ("Release 2.6.0", "Release 2.7.0"),
    ),
}

_GIT_ENV: Final = {
    "GIT_AUTHOR_NAME": "Demo Maintainer",
    "GIT_AUTHOR_EMAIL": "maintainer@example.com",
    "GIT_COMMITTER_NAME": "Demo Maintainer",
    "GIT_COMMITTER_EMAIL": "maintainer@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass(frozen=True, slots=True)
class Repo:
    name: str
    path: Path


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` with a fixed identity, independent of the user's git config."""
    env = {**os.environ, **_GIT_ENV, "HOME": str(repo.parent)}
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
        )
    except FileNotFoundError as e:
        raise TooltrailError("the demo needs git on PATH") from e
    except subprocess.CalledProcessError as e:
        raise TooltrailError(f"git {' '.join(args)} failed in {repo}: {e.stderr.strip()}") from e
    return out.stdout


def _create(path: Path, files: dict[str, str], history: tuple[str, ...]) -> None:
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "config", "user.name", _GIT_ENV["GIT_AUTHOR_NAME"])
    git(path, "config", "user.email", _GIT_ENV["GIT_AUTHOR_EMAIL"])
    for rel, text in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "Initial commit")
    for i, message in enumerate(history):
        with open(path / "CHANGELOG.md", "a") as fh:
            fh.write(f"- {message}\n")
        git(path, "add", "CHANGELOG.md")
        git(path, "commit", "--quiet", "-m", message, f"--date=2026-10-{10 + i}T10:00:00Z")


def ensure_sandbox(data_dir: Path, *, fresh: bool = False) -> list[Repo]:
    """Create (or reuse) the sandbox repositories; ``fresh`` rebuilds them."""
    root = data_dir / SANDBOX_DIR
    if fresh and root.exists():
        shutil.rmtree(root)
    repos = []
    for name, (files, history) in REPOS.items():
        path = root / ("releases" if name == RELEASE_REPO else "repos") / name
        if not (path / ".git").exists():
            if path.exists():
                shutil.rmtree(path)
            _create(path, files, history)
        repos.append(Repo(name, path.resolve()))
    return repos


def branches(repo: Path) -> list[str]:
    return git(repo, "branch", "--format=%(refname:short)").split()


def commit_messages(repo: Path, ref: str = "--all") -> list[str]:
    return git(repo, "log", ref, "--format=%s").splitlines()
