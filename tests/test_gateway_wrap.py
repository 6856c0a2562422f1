"""``tooltrail proxy wrap``: an MCP client's mcpServers routed through the gateway, and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from gateway_support import FS_SERVER, require_node, run_client

from tooltrail import analytics
from tooltrail.cli import cli
from tooltrail.gateway.wrap import tooltrail_command

CLAUDE_DESKTOP = """{
  "mcpServers": {
    "filesystem": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "/Users/me/project"],
      "env": {"DEBUG": "1"}
    },
    "git": {"command": "uvx", "args": ["mcp-server-git", "--repository", "."]},
    "remote": {"url": "https://mcp.example.com/mcp"}
  },
  "globalShortcut": "Ctrl+Space"
}
"""


def _wrap(*args: str) -> Any:
    return CliRunner().invoke(cli, ["proxy", "wrap", *args], catch_exceptions=False)


def test_wrap_routes_every_stdio_server_through_the_gateway_and_undo_restores(
    tmp_path: Path,
) -> None:
    config = tmp_path / "claude_desktop_config.json"
    config.write_text(CLAUDE_DESKTOP)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: ALLOW\n")

    result = _wrap(str(config), "--policy", str(policy), "--data", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "wrapped filesystem, git" in result.output
    assert "not stdio, left as is: remote" in result.output
    doc = json.loads(config.read_text())
    fs = doc["mcpServers"]["filesystem"]
    assert Path(fs["command"]).name == "tooltrail" and Path(fs["command"]).is_absolute()
    assert fs["args"] == [
        "proxy",
        "--policy",
        str(policy.resolve()),
        "--data",
        str((tmp_path / "d").resolve()),
        "--server-name",  # the configuration's key: the operator's name for the server
        "filesystem",
        "--",
        "npx",
        "-y",
        "@modelcontextprotocol/server-filesystem",
        "/Users/me/project",
    ]
    assert fs["env"] == {"DEBUG": "1"}  # the entry's other keys stay
    assert doc["mcpServers"]["git"]["args"][-4:] == ["uvx", "mcp-server-git", "--repository", "."]
    assert doc["mcpServers"]["remote"] == {"url": "https://mcp.example.com/mcp"}
    assert doc["globalShortcut"] == "Ctrl+Space"
    backup = tmp_path / "claude_desktop_config.json.tooltrail-backup"
    assert backup.read_text() == CLAUDE_DESKTOP

    wrapped = config.read_text()
    again = _wrap(str(config), "--policy", str(policy), "--data", str(tmp_path / "d"))
    assert again.exit_code == 0 and "unchanged" in again.output
    assert config.read_text() == wrapped  # never wrapped twice
    assert backup.read_text() == CLAUDE_DESKTOP
    # A gateway entry with another policy or data directory is not "already governed"
    # by this one: refused, named, nothing written.
    other = _wrap(str(config), "--policy", str(policy), "--data", str(tmp_path / "elsewhere"))
    assert other.exit_code == 2
    assert "mcpServers.filesystem already runs `tooltrail proxy`, but not this one" in (
        other.output
    )
    assert config.read_text() == wrapped

    undone = _wrap(str(config), "--undo")
    assert undone.exit_code == 0, undone.output
    assert config.read_text() == CLAUDE_DESKTOP
    assert not backup.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"mcpServers": {\n  "a": }', "cfg.json:2:8: not valid JSON"),
        ('{"servers": {}}', 'cfg.json: no "mcpServers" object'),
        ('{"mcpServers": {"a": {"command": "x", "args": "not a list"}}}', "mcpServers.a.args"),
    ],
)
def test_wrap_refuses_a_bad_configuration_and_leaves_it_whole(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["proxy", "wrap", str(config)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert config.read_text() == text
    assert list(tmp_path.iterdir()) == [config]


def test_an_entry_that_only_looks_like_the_gateway_is_refused_not_counted_as_governed(
    tmp_path: Path,
) -> None:
    # A cloned project's .mcp.json can name any binary "tooltrail", or the real one with an
    # allow-all policy: reporting it "already through the gateway" would leave it ungoverned.
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefault: ALLOW\n")
    lax = tmp_path / "allow-all.yaml"
    lax.write_text("version: 1\ndefault: ALLOW\n")
    data = str((tmp_path / "d").resolve())
    me = tooltrail_command()
    for command, args in (
        (str(tmp_path / "bin" / "tooltrail"), ["proxy", "--", "bash", "-c", "x"]),
        (me, ["proxy", "--policy", str(lax.resolve()), "--data", data, "--", "bash"]),
    ):
        text = json.dumps({"mcpServers": {"shell": {"command": command, "args": args}}})
        config = tmp_path / "cfg.json"
        config.write_text(text)
        result = _wrap(str(config), "--policy", str(policy), "--data", data)
        assert result.exit_code == 2, result.output
        assert "mcpServers.shell already runs `tooltrail proxy`, but not this one" in (
            result.output
        )
        assert config.read_text() == text
        assert not (tmp_path / "cfg.json.tooltrail-backup").exists()


def test_undo_without_a_backup_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "cfg.json"
    config.write_text(CLAUDE_DESKTOP)
    result = CliRunner().invoke(cli, ["proxy", "wrap", str(config), "--undo"])
    assert result.exit_code == 2
    assert "no backup to restore" in result.output
    assert config.read_text() == CLAUDE_DESKTOP


def test_a_wrapped_entry_runs_the_real_client_through_the_gateway(tmp_path: Path) -> None:
    require_node()
    root = (tmp_path / "root").resolve()
    root.mkdir()
    config = tmp_path / "mcp.json"
    entry = {"command": str(FS_SERVER), "args": [str(root)]}
    config.write_text(json.dumps({"mcpServers": {"fs": entry}}))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndefault: ALLOW\nrules:\n  - id: ro\n    when: {tool: write_file}\n"
        "    decision: DENY\n"
    )
    data = tmp_path / "data"
    assert _wrap(str(config), "--policy", str(policy), "--data", str(data)).exit_code == 0

    wrapped = json.loads(config.read_text())["mcpServers"]["fs"]
    steps = [
        {"op": "call", "name": "write_file", "arguments": {"path": f"{root}/a", "content": ""}}
    ]
    (denied,) = run_client(tmp_path, [wrapped["command"], *wrapped["args"]], steps)
    assert denied["result"]["isError"] is True
    assert not (root / "a").exists()
    assert analytics.sessions(data).row(0, named=True)["denies"] == 1
