"""Helpers for the access-control tests: users and agents added through the real CLI."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tooltrail.cli import cli


def invoke(
    root: Path, *args: str, token: str | None = None, stdin: str | None = None
) -> tuple[int, str, str]:
    """``tooltrail ARGS --data ROOT`` as ``token``'s holder: (exit code, stdout, stderr)."""
    env = {"TOOLTRAIL_TOKEN": token} if token else {"TOOLTRAIL_TOKEN": None}
    group = 2 if args[0] in ("users", "agents") else 1
    argv = [*args[:group], "--data", str(root), *args[group:]]
    result = CliRunner().invoke(cli, argv, env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def credential_of(out: str) -> str:
    """The credential a ``users add`` / ``rotate`` printed: its last line of stdout."""
    return out.rstrip("\n").splitlines()[-1]


def add(root: Path, kind: str, name: str, role: str | None, admin: str | None) -> str:
    args = [f"{kind}s", "add", name] + (["--role", role] if role else [])
    code, out, err = invoke(root, *args, token=admin)
    assert code == 0, err
    return credential_of(out)


def people(root: Path) -> dict[str, str]:
    """An admin, an operator, two approvers, a viewer and two agents: name -> credential."""
    creds = {"admin": add(root, "user", "admin", "admin", None)}
    for name, role in (
        ("olga", "operator"),
        ("alice", "approver"),
        ("bob", "approver"),
        ("vic", "viewer"),
    ):
        creds[name] = add(root, "user", name, role, creds["admin"])
    for name in ("bot-a", "bot-b"):
        creds[name] = add(root, "agent", name, None, creds["admin"])
    return creds
