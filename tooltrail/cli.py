"""The ``tooltrail`` command line: one click group; each command parses, calls one library
function, prints."""

from __future__ import annotations

import click

from tooltrail import __version__


@click.group()
@click.version_option(__version__, prog_name="tooltrail")
def cli() -> None:
    """tooltrail: audit trail and policy gate for AI-agent tool calls."""
