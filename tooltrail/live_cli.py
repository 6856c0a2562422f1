"""``tooltrail tail`` and ``tooltrail webhooks``: the live record (docs/EVENTS.md).

``tail`` reads events from a data directory (following what lands there) or from a
collector's stream (``--url``); ``webhooks`` manages signed notifications and runs their
deliverer for a directory no collector serves.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tooltrail import config
from tooltrail.cli_common import CliError, data_option, domain_errors

_TAIL_COLUMNS = ("time", "kind", "session", "agent", "decision", "summary")
_WIDTHS = {"time": 21, "kind": 18, "session": 20, "agent": 14, "decision": 16}


def _table_line(doc: dict[str, Any]) -> str:
    from tooltrail.output import terminal_safe

    cells = []
    for column in _TAIL_COLUMNS:
        text = terminal_safe(str(doc.get(column) or "-"))
        if column == "time" and text[10:11] == "T":
            text = text[:19].replace("T", " ") + "Z"  # UTC to the second, as a table shows
        width = _WIDTHS.get(column)
        if width is not None:
            text = (text if len(text) < width else text[: width - 2] + "…").ljust(width)
        cells.append(text)
    return " ".join(cells).rstrip()


def _local_events(
    root: Path, since: str, keep_following: bool, filters: dict[str, tuple[str, ...]]
) -> Iterator[dict[str, Any]]:
    from tooltrail.event_stream import EventSource, follow, start_cursor
    from tooltrail.events import make_filter

    event_filter = make_filter(
        sessions=filters["sessions"],
        agents=filters["agents"],
        decisions=filters["decisions"],
        kinds=filters["kinds"],
    )
    source = EventSource(root, start_cursor(None, since, root), settle=True)
    try:
        for event in follow(source, event_filter, keep_following=keep_following):
            if event is not None:
                yield event.to_json_dict()
    finally:
        source.close()


@click.command("tail")
@data_option
@click.option(
    "--url",
    help="A collector's URL: read its event stream (GET /v1/events) instead of --data.",
)
@click.option(
    "--token",
    envvar="TOOLTRAIL_TOKEN",
    show_envvar=True,
    help="Bearer credential for --url (the collector's token, or a user's or agent's).",
)
@click.option("--follow", "-f", "keep_following", is_flag=True, help="Keep following.")
@click.option("--session", "sessions", multiple=True, help="Only this session (repeatable).")
@click.option("--agent", "agents", multiple=True, help="Only this agent (repeatable).")
@click.option(
    "--decision",
    "decisions",
    multiple=True,
    help="Only this decision: ALLOW, DENY, REWRITE, REQUIRE_APPROVAL (repeatable).",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    help="Only this kind or family: action, approval, approval.decided, session, tool...",
)
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Start this long ago (landed since, for actions): 10m, 2h, 7d, or all.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one aligned line per event; json: one JSON object per line.",
)
def tail_cli(
    data: Path | None,
    url: str | None,
    token: str | None,
    keep_following: bool,
    sessions: tuple[str, ...],
    agents: tuple[str, ...],
    decisions: tuple[str, ...],
    kinds: tuple[str, ...],
    since: str,
    fmt: str,
) -> None:
    """Print events (actions, approvals, session control, tool changes) as they land.

    Reads a data directory (following new Parquet files and the control and tool-pin
    stores), or with --url a collector's stream. Without --follow it prints what happened
    since --since and exits.

    Example:

        tooltrail tail --follow --decision DENY --format json
    """
    from tooltrail.events import make_filter

    filters = {"sessions": sessions, "agents": agents, "decisions": decisions, "kinds": kinds}
    from tooltrail.policy.durations import parse_since_seconds

    with domain_errors():  # bad --kind, --since or --url: refused before anything is printed
        make_filter(kinds=kinds)
        parse_since_seconds(since)
        if url is not None:
            from tooltrail.event_client import events_url

            events_url(url, {})
    root = config.data_dir(data)
    if url is None and not root.is_dir():  # a typo to report, not an empty history to show
        raise CliError(
            f"data directory {root} does not exist: point --data or ${config.ENV_DATA} at the"
            " directory agents land in (or --url at a collector)"
        )
    if fmt == "table":
        click.echo(_table_line({c: c for c in _TAIL_COLUMNS}))
    with domain_errors(), _stop_on_sigterm():
        if url is not None:
            from tooltrail.event_client import read_stream

            params = {"session": sessions, "agent": agents, "decision": decisions}
            events = read_stream(
                url,
                {**params, "kind": kinds, "since": since},
                token=token,
                keep_following=keep_following,
            )
        else:
            events = _local_events(root, since, keep_following, filters)
        for doc in events:
            line = json.dumps(doc, default=str) if fmt == "json" else _table_line(doc)
            click.echo(line)


class _Stopped(Exception):
    pass


def _stop_on_sigterm() -> Any:
    """SIGTERM ends a follow as Ctrl-C does (quietly, exit 0)."""
    import contextlib

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        def on_term(signum: int, frame: object) -> None:
            raise _Stopped

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, on_term)
        try:
            yield
        except (_Stopped, KeyboardInterrupt):
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return guard()


# --- webhooks -------------------------------------------------------------------------------


@click.group("webhooks")
def webhooks_cli() -> None:
    """Signed notifications: approvals, high-risk denies, session control, tool changes.

    Example:

        tooltrail webhooks add https://hooks.example.com/tooltrail --events approval.requested
    """


def _admin(root: Path) -> None:
    """With access control on, managing webhooks is an admin's (they send events out)."""
    from tooltrail import access
    from tooltrail.errors import AccessDeniedError, NotAuthenticatedError

    if access.enabled(root):
        who = access.identify(root)
        if who is None:
            raise NotAuthenticatedError(
                "access control is on: present an admin's credential ($TOOLTRAIL_TOKEN or"
                " tooltrail login)"
            )
        if who.is_agent or not who.may("admin"):  # named for webhooks, not "users and agents"
            raise AccessDeniedError(
                f"{who.kind} {who.name!r} ({who.role}) may not manage webhooks: that needs an"
                " admin's credential"
            )


_format = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


@webhooks_cli.command("add")
@data_option
@click.argument("url")
@click.option(
    "--events",
    "topics",
    multiple=True,
    help="Topics (repeatable or comma-separated; default all): approval.requested,"
    " approval.decided, approval.expired, deny.high, session.paused, session.canceled,"
    " tool.changed.",
)
@click.option("--slack", is_flag=True, help="Send Slack incoming-webhook payloads ({text}).")
@_format
def add_cli(data: Path | None, url: str, topics: tuple[str, ...], slack: bool, fmt: str) -> None:
    """Add a webhook; prints its signing secret once (last line of output).

    Example:

        tooltrail webhooks add https://hooks.example.com/tt --events approval.requested,deny.high
    """
    from tooltrail.webhooks import WebhookStore

    root = config.data_dir(data)
    chosen = [t for value in topics for t in value.split(",")]
    with domain_errors():
        _admin(root)
        with WebhookStore(root) as store:
            hook, secret = store.add(url, chosen, slack=slack)
    if fmt == "json":
        click.echo(json.dumps({**hook.to_dict(), "secret": secret}))
        return
    click.echo(f"added webhook {hook.hook_id} -> {hook.url} ({', '.join(hook.topics)})")
    click.echo("its signing secret, shown only now (receivers verify Tooltrail-Signature):")
    click.echo(secret)


@webhooks_cli.command("list")
@data_option
@_format
def list_cli(data: Path | None, fmt: str) -> None:
    """List webhooks (never their secrets).

    Example:

        tooltrail webhooks list --format json
    """
    from tooltrail.output import table
    from tooltrail.webhooks import WEBHOOKS_FILE, WebhookStore

    root = config.data_dir(data)
    rows: list[dict[str, Any]] = []
    if (root / WEBHOOKS_FILE).exists():  # listing creates nothing
        with domain_errors(), WebhookStore(root) as store:
            rows = [h.to_dict() for h in store.hooks()]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["topics"] = ",".join(row["topics"])
    columns = ("hook_id", "url", "topics", "slack")
    click.echo(table(rows, columns) if rows else "(no webhooks)")


@webhooks_cli.command("remove")
@data_option
@click.argument("hook_id")
def remove_cli(data: Path | None, hook_id: str) -> None:
    """Remove a webhook (its pending deliveries are marked failed).

    Example:

        tooltrail webhooks remove wh_0123456789ab
    """
    from tooltrail.webhooks import WebhookStore

    root = config.data_dir(data)
    with domain_errors():
        _admin(root)
        with WebhookStore(root) as store:
            store.remove(hook_id)
    click.echo(f"removed webhook {hook_id}")


@webhooks_cli.command("deliveries")
@data_option
@click.option("--hook", "hook_id", help="Only this webhook's deliveries.")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_format
def deliveries_cli(
    data: Path | None, hook_id: str | None, status: str | None, limit: int, fmt: str
) -> None:
    """List deliveries, newest first: status, attempts, last HTTP code and error.

    Example:

        tooltrail webhooks deliveries --status failed --format json
    """
    from tooltrail.events import iso
    from tooltrail.output import table
    from tooltrail.webhooks import WEBHOOKS_FILE, WebhookStore

    root = config.data_dir(data)
    rows: list[dict[str, Any]] = []
    if (root / WEBHOOKS_FILE).exists():
        with domain_errors(), WebhookStore(root) as store:
            rows = store.deliveries(hook_id, status, limit)
    for row in rows:
        for key in ("created_at", "next_at", "done_at"):
            row[key] = None if row[key] is None else iso(row[key])
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    columns = (
        "delivery_id",
        "hook_id",
        "topic",
        "status",
        "attempts",
        "last_code",
        "last_error",
        "created_at",
    )
    click.echo(table(rows, columns) if rows else "(no deliveries)")


@webhooks_cli.command("run")
@data_option
@click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(min=0.01),
    default=0.2,
    show_default=True,
    help="Seconds between looks at the data directory.",
)
def run_cli(data: Path | None, poll_s: float) -> None:
    """Deliver webhooks for a data directory until SIGINT or SIGTERM.

    `tooltrail collect` delivers for its own directory; run this where agents land into
    a directory themselves (the embedded setup). One deliverer per directory.

    Example:

        tooltrail webhooks run --data tooltrail-data
    """
    from tooltrail.webhooks import Deliverer

    root = config.data_dir(data)
    deliverer = Deliverer(root, poll_s=poll_s)
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with domain_errors():
            deliverer.start()
        click.echo(f"delivering webhooks for {root} (Ctrl-C to stop)", err=True)
        while not done.wait(1.0):
            pass
    finally:
        deliverer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["tail_cli", "webhooks_cli"]
