"""``tooltrail verify``, ``tooltrail delete`` and ``tooltrail retention``: the audit
record's tamper evidence and its deletions (issue 17; docs/SECURITY.md, "Tamper evidence").
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from tooltrail import config
from tooltrail.cli_common import CliError, data_option, domain_errors

F = TypeVar("F", bound=Callable[..., Any])

# A ledger head, as `tooltrail verify` prints it: a record id, the SHA-256 of its line.
_HEAD_RE = re.compile(r"[0-9a-f]{64}")


def _existing(data: Path | None) -> Path:
    root = config.data_dir(data)
    if not root.is_dir():
        raise CliError(f"data directory {root} does not exist: point --data at it")
    return root


def _anchors(given: tuple[str, ...]) -> tuple[str, ...]:
    """The heads to check, each whole: a mistyped or shortened one is bad input (exit 2),
    never reported as a ledger that was rewritten (exit 1)."""
    heads = []
    for anchor in given:
        head = anchor.strip().lower()
        if not _HEAD_RE.fullmatch(head):
            raise CliError(
                f"--anchor {anchor!r}: give a head whole, as `tooltrail verify` printed it"
                " (64 hex digits)"
            )
        heads.append(head)
    return tuple(heads)


def _fmt(choices: tuple[str, ...]) -> Callable[[F], F]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default="table",
        show_default=True,
        help="Output format.",
    )


@click.command("verify")
@data_option
@click.option(
    "--since",
    help="Hash only files recorded on this UTC day or later (YYYY-MM-DD); every file is"
    " still listed, so an unrecorded one is reported under any directory.",
)
@click.option("--session", "session", help="Only breaks that concern this session.")
@click.option(
    "--trust",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also accept records signed by this public key (.pub; repeatable).",
)
@click.option(
    "--anchor",
    "anchors",
    multiple=True,
    help="A head printed by an earlier verify, kept elsewhere: it must still be in the ledger.",
)
@click.option(
    "--deep",
    is_flag=True,
    help="Recompute every file's row summary too, not only files whose bytes changed.",
)
@_fmt(("table", "json"))
def verify_cli(
    data: Path | None,
    since: str | None,
    session: str | None,
    trust: tuple[Path, ...],
    anchors: tuple[str, ...],
    deep: bool,
    fmt: str,
) -> None:
    """Recompute the hash chain and signed manifests; report every break.

    Names the file, session, ledger record and rows of each break, and what is wrong
    (rows deleted or added, values edited, rows reordered, a file deleted, replaced or
    planted, a record removed or forged). Exit 1 when anything is broken.

    Example:

        tooltrail verify --data ./tooltrail-data --since 2026-12-01 --format json
    """
    from tooltrail.collector.verify import verify

    root = _existing(data)
    day = None
    if since is not None:
        try:
            day = dt.date.fromisoformat(since)
        except ValueError as e:
            raise CliError(f"--since {since!r}: expected a day, YYYY-MM-DD") from e
    anchors = _anchors(anchors)
    with domain_errors():
        report = verify(root, since=day, session=session, trust=trust, deep=deep, anchors=anchors)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _echo_report(report)
    if not report.ok:
        sys.exit(1)


def _echo_report(report: Any) -> None:
    for b in report.breaks:
        where = " ".join(
            f"{k}={v}"
            for k, v in (("file", b.file), ("session", b.session), ("at", b.sequence))
            if v is not None
        )
        click.echo(f"BROKEN {b.kind}: {b.what}" + (f"  [{where}]" if where else ""))
    control = "checked" if report.control_checked else "not checked (no control store)"
    status = "OK" if report.ok else f"{len(report.breaks)} break(s)"
    click.echo(
        f"{status}: {report.records} records, {report.files} files, {report.rows} rows,"
        f" {report.tombstones} tombstone(s); control events {control}; {report.seconds:.2f}s"
    )
    if report.skipped:
        click.echo(f"{report.skipped} file(s) recorded before --since not hashed")
    if report.head:
        click.echo(f"head {report.head} (keep it elsewhere; verify --anchor checks it)")


def _admin(root: Path, by: str | None) -> str:
    """Who deletes: with access control on, the credential's user, who must be an
    admin; in single-user mode the typed --by (anyone at the keyboard may delete)."""
    from tooltrail import access
    from tooltrail.errors import AccessDeniedError

    with domain_errors():
        who = access.identify(root)
        if who is not None:
            if who.is_agent or not who.may("admin"):
                raise AccessDeniedError(
                    f"{who.kind} {who.name!r} ({who.role}) may not delete sessions: that"
                    " needs an admin's credential"
                )
            access.check_acting_as(who, by, "--by")
            return who.name
    click.echo(access.single_user_notice(root), err=True)
    if not by or not by.strip():
        raise CliError("--by is required in single-user mode: who deletes is recorded")
    return by


def _echo_deleted(report: Any, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(
        f"deleted {len(report.sessions)} session(s), {report.rows} rows; files rewritten"
        f" {report.files_rewritten}, removed {report.files_removed}; tombstone"
        f" {report.tombstone or '-'}"
    )
    for why in report.skipped.values():
        click.echo(f"left for the next run: {why}")


_by = click.option("--by", help="Who deletes (single-user mode; recorded in the tombstone).")
_reason = click.option("--reason", help="Why (recorded in the tombstone).")


@click.command("delete")
@data_option
@click.argument("session_ids", nargs=-1)
@click.option("--session", "sessions", multiple=True, help="Session id (repeatable).")
@_by
@_reason
@_fmt(("table", "json"))
def delete_cli(
    data: Path | None,
    session_ids: tuple[str, ...],
    sessions: tuple[str, ...],
    by: str | None,
    reason: str | None,
    fmt: str,
) -> None:
    """Delete terminal sessions (admin only), leaving a signed tombstone in the chain.

    Only completed, failed, canceled or abandoned sessions; the files holding their rows
    are rewritten atomically. `tooltrail verify` then tells this deletion from tampering.

    Example:

        tooltrail delete 3f2a9c6e0b7d --by alice --reason "customer request"
    """
    from tooltrail.collector.retention import delete_sessions, refresh_views

    wanted = [*session_ids, *sessions]
    if not wanted:
        raise CliError("name the sessions to delete: SESSION_ID... or --session S")
    root = _existing(data)
    who = _admin(root, by)
    with domain_errors():
        report = delete_sessions(root, wanted, by=who, reason=reason)
        refresh_views(root)
    _echo_deleted(report, fmt)


@click.command("retention")
@data_option
@click.option(
    "--older-than",
    help="Delete terminal sessions idle longer than this (90d, 12w; default $TOOLTRAIL_RETENTION).",
)
@_by
@_reason
@_fmt(("table", "json"))
def retention_cli(
    data: Path | None, older_than: str | None, by: str | None, reason: str | None, fmt: str
) -> None:
    """Apply retention by age (admin only): delete old terminal sessions, with a tombstone.

    Example:

        tooltrail retention --older-than 90d --by alice
    """
    from tooltrail.collector.retention import apply_retention, refresh_views, retention_cutoff

    root = _existing(data)
    with domain_errors():
        retention_cutoff(older_than)  # bad input before anything else
    who = _admin(root, by)
    with domain_errors():
        report = apply_retention(root, older_than, by=who, reason=reason)
        if report.sessions:
            refresh_views(root)
    _echo_deleted(report, fmt)


__all__ = ["delete_cli", "retention_cli", "verify_cli"]
