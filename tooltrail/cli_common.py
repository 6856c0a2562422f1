"""What every ``tooltrail`` command module shares: the exit-2 error, the conversion of our
own errors into it, and the ``--data`` option.

A module of its own so that command modules registered by ``tooltrail.cli``
(``tooltrail.collector.cli``, ``tooltrail.policy.cli``) can import it without importing
``tooltrail.cli``, which imports them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from tooltrail import config
from tooltrail.errors import TooltrailError

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """Bad usage or bad input: exit code 2."""

    exit_code = 2


@contextlib.contextmanager
def domain_errors() -> Iterator[None]:
    """Turn the project's own errors into a clean message and exit code 2."""
    try:
        yield
    except TooltrailError as e:
        from tooltrail.output import terminal_safe

        raise CliError(terminal_safe(str(e))) from e


def data_option(fn: F) -> F:
    return click.option(
        "--data",
        "data",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        envvar=config.ENV_DATA,
        show_envvar=True,
        help="Data directory (default ./tooltrail-data).",
    )(fn)
