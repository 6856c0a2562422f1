"""Every command (and sub-command) has help with an example, and --help exits 0."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from tooltrail.cli import cli


def _walk(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path
        if isinstance(command, click.Group):
            yield from _walk(command, path)


COMMANDS = sorted(_walk(cli))


def test_the_contract_commands_exist() -> None:
    names = {" ".join(p) for p in COMMANDS}
    expected = {
        "sessions", "show", "query", "ingest", "compact",
        "approvals", "approve", "deny", "pause", "resume", "cancel",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and command.help.strip(), f"{' '.join(path)} has no help text"
    if not isinstance(command, click.Group):
        assert "Example" in command.help, f"{' '.join(path)} help has no example"
