"""The CLI reference (docs/CLI.md), generated from the commands' own ``--help``.

    python -m tooltrail.cli_reference > docs/CLI.md

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

HEADER = """# tooltrail command line reference

Generated from `--help` by `python -m tooltrail.cli_reference` (`make docs`); a test keeps
it in sync. Exit codes: 0 success, 1 the command ran and found a problem (e.g. failed
policy tests), 2 bad usage or bad input.
"""


def _walk(
    group: click.Group, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name in sorted(group.commands):
        command = group.commands[name]
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


def _help(command: click.Command, path: tuple[str, ...]) -> str:
    ctx = click.Context(
        command, info_name=" ".join(path), terminal_width=100, max_content_width=100
    )
    return command.get_help(ctx)


def _commands() -> Iterator[tuple[tuple[str, ...], click.Command]]:
    from tooltrail.cli import cli
    from tooltrail.gateway.cli import wrap_cli

    for path, command in _walk(cli, ("tooltrail",)):
        yield path, command
        if path == ("tooltrail", "proxy"):  # proxy reads `wrap` itself (COMMAND follows --)
            yield (*path, "wrap"), wrap_cli


def render() -> str:
    from tooltrail.cli import cli

    parts = [HEADER, "## tooltrail\n", "```text", _help(cli, ("tooltrail",)), "```\n"]
    for path, command in _commands():
        parts += [f"## {' '.join(path)}\n", "```text", _help(command, path), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
