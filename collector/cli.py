"""``tooltrail collect``: the click command (registered by tooltrail.cli with add_command)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tooltrail import config
from tooltrail.cli_common import data_option, domain_errors

ENV_TOKEN = "TOOLTRAIL_COLLECTOR_TOKEN"
ENV_DECISION_TOKEN = "TOOLTRAIL_COLLECTOR_DECISION_TOKEN"
ENV_RETENTION = "TOOLTRAIL_RETENTION"  # the age `tooltrail retention` defaults to, too


@click.command(name="collect")
@data_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=4318, show_default=True, help="0 = any free."
)
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=config.ENV_POLICY,
    show_envvar=True,
    help="Decide undecided tool spans with this policy (after the fact).",
)
@click.option(
    "--token",
    envvar=ENV_TOKEN,
    show_envvar=True,
    help="Bearer token every request must carry (required off loopback).",
)
@click.option(
    "--decision-token",
    envvar=ENV_DECISION_TOKEN,
    show_envvar=True,
    help="Bearer token for approval decisions (default: --token). Keep it from agents.",
)
@click.option(
    "--durability",
    type=click.Choice(["spool", "direct"]),
    default="spool",
    show_default=True,
    help="spool: fsync'd write-ahead log, landed in the background; direct: one Parquet "
    "file per request.",
)
@click.option(
    "--max-body",
    "max_body",
    type=click.IntRange(min=1024),
    default=32 * 1024 * 1024,
    show_default=True,
    help="Largest request body in bytes (413 above).",
)
@click.option(
    "--max-backlog",
    "max_backlog",
    type=click.IntRange(min=1024),
    default=256 * 1024 * 1024,
    show_default=True,
    help="Spooled bytes not yet landed before senders get 503 + Retry-After.",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds before spooled spans are landed (queryable).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Processes that normalize and land spans (default: one per core; "
    "0 = inside the collector process).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=2),
    default=512,
    show_default=True,
    help="Open connections at most (capped at half the open-file limit); more get 503.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=15.0,
    show_default=True,
    help="Seconds a connection has to send a request's line and headers (also the idle "
    "time of a keep-alive connection).",
)
@click.option(
    "--quarantine-retention",
    "quarantine_days",
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Days the notes of spans set aside (ids and reasons, no values) are kept in "
    "spool/quarantine.",
)
@click.option(
    "--max-streams",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Event streams (GET /v1/events) open at once (at most a quarter of the "
    "connections); more get 503.",
)
@click.option(
    "--events-heartbeat",
    "events_heartbeat",
    type=click.FloatRange(min=0.1),
    default=15.0,
    show_default=True,
    help="Seconds of silence after which an event stream sends a keep-alive comment.",
)
@click.option(
    "--webhooks/--no-webhooks",
    "webhooks",
    default=True,
    show_default=True,
    help="Deliver the data directory's webhooks (tooltrail webhooks add) from this process.",
)
@click.option(
    "--retention",
    envvar=ENV_RETENTION,
    show_envvar=True,
    help="Delete terminal sessions idle longer than this (90d, 12w), on start and every "
    "--retention-every, with a signed tombstone by 'retention (collector)'. Default: never.",
)
@click.option(
    "--retention-every",
    default=None,
    help="How often retention runs (30m, 1h, 1d; default 1h); only with --retention.",
)
def collect_cli(
    data: Path | None,
    host: str,
    port: int,
    policy: Path | None,
    token: str | None,
    decision_token: str | None,
    durability: str,
    max_body: int,
    max_backlog: int,
    flush_interval: float,
    workers: int | None,
    max_connections: int,
    header_timeout: float,
    quarantine_days: float,
    max_streams: int,
    events_heartbeat: float,
    webhooks: bool,
    retention: str | None,
    retention_every: str | None,
) -> None:
    """Receive OTLP/HTTP spans from remote agents and land them (and serve approvals).

    POST /v1/traces (protobuf or JSON, gzip), approvals under /v1/approvals, the live
    event stream GET /v1/events (Server-Sent Events), GET /metrics and /healthz; delivers
    webhooks. Runs until Ctrl-C / SIGTERM, then lands what is spooled.

    Example:

        tooltrail collect --data ./tooltrail-data --policy policy.yaml --retention 90d
    """
    from tooltrail.collector.receiver import DEFAULT_MAX_DECODED_BYTES, Limits
    from tooltrail.collector.server import CollectorConfig, Running, default_workers, serve
    from tooltrail.policy import load_policy

    for name, env, value in (
        ("--token", ENV_TOKEN, token),
        ("--decision-token", ENV_DECISION_TOKEN, decision_token),
    ):
        # `--token "$TOKEN"` or `-e TOOLTRAIL_COLLECTOR_DECISION_TOKEN=$DECIDER` with the
        # variable unset must not start a collector without (decision) auth: click reads
        # an empty variable as unset, so it is checked here.
        if value is None and os.environ.get(env) is not None:
            value = os.environ[env]
        if value is not None and not value.strip():
            raise click.BadParameter(
                f"is empty (an unset shell variable? ${env} counts too); leave it out to run"
                " without a token on loopback",
                param_hint=name,
            )
    with domain_errors():
        every_s = _retention_every(retention, retention_every)
        # Load here so a bad policy stops start-up with its file and line (exit 2)
        # instead of landing every row as policy-error. Workers load it from the path.
        if policy is not None:
            load_policy(policy)
        cfg = CollectorConfig(
            data_dir=config.data_dir(data),
            host=host,
            port=port,
            policy=policy,
            token=token,
            decision_token=decision_token,
            durability="direct" if durability == "direct" else "spool",
            limits=Limits(
                max_body_bytes=max_body, max_decoded_bytes=max(max_body, DEFAULT_MAX_DECODED_BYTES)
            ),
            max_backlog_bytes=max_backlog,
            flush_interval_s=flush_interval,
            workers=default_workers() if workers is None else workers,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
            quarantine_retention_s=quarantine_days * 86400.0,
            max_streams=max_streams,
            events_heartbeat_s=events_heartbeat,
            webhooks=webhooks,
            retention=retention,
            retention_every_s=every_s,
        )

        def ready(running: Running) -> None:
            if running.collector.access.on():
                guard = "access control: users' and agents' own credentials"
            elif cfg.token:
                guard = "token required"
            else:
                guard = "no token: any local process may post"
            click.echo(
                f"tooltrail collect listening on {running.url} "
                f"(data {cfg.data_dir}, durability {cfg.durability}, {guard})"
            )
            sys.stdout.flush()

        serve(cfg, on_ready=ready)
    click.echo("tooltrail collect stopped", err=True)


def _retention_every(retention: str | None, every: str | None) -> float:
    """--retention's age is checked by CollectorConfig; its interval here (named)."""
    from tooltrail.errors import BadInputError
    from tooltrail.policy.durations import parse_since_seconds

    if every is not None and retention is None:
        raise BadInputError("--retention-every needs --retention (or $TOOLTRAIL_RETENTION)")
    seconds = parse_since_seconds(every or "1h", option="--retention-every", accepts_all=False)
    if seconds is None:
        raise BadInputError("--retention-every: give an interval (1h), not 'all'")
    return seconds


if __name__ == "__main__":  # `python -m tooltrail.collector.cli` until the group registers it
    collect_cli()
