"""The ``tooltrail`` command line: one click group; each command parses, calls one library
function, prints.

Heavy libraries (duckdb, polars, pyarrow) are imported inside the commands so that
``tooltrail --help`` stays fast. Domain errors become ``click.ClickException`` with exit
code 2 (bad usage or bad input); exit 1 means the command ran and found a problem.

One file past 600 lines on purpose: one click group with every top-level command, each a
thin parse-call-print wrapper (policy, collect, proxy and tools live in their own modules).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from tooltrail import __version__, config
from tooltrail.cli_common import CliError, F, data_option, domain_errors
from tooltrail.output import FORMATS

SESSION_COLUMNS = (
    "session_id",
    "agent_name",
    "status",
    "action_count",
    "allows",
    "denies",
    "rewrites",
    "approvals",
    "undecided",  # allows + denies + rewrites + approvals + undecided = action_count
    "max_blast_radius",
    "repos",
    "governed_by",  # gateway / instrumentation / empty (third-party spans only)
    "mcp_client_name",  # the MCP client, for sessions through the gateway
    "tags",
    "last_action_at",
)
TRACE_COLUMNS = (
    "occurred_at",
    "entry",  # llm / agent / tool / output / control / end
    "summary",
    "input_tokens",
    "output_tokens",
    "decision",
    "outcome",
    "actor",  # who paused / resumed / canceled / completed it, or who recorded the end
    "reason",
)
ACTION_COLUMNS = (
    "sequence",
    "start_time",
    "tool_name",
    "action_summary",
    "decision",
    "policy_rule",
    "enforced",  # a DENY decided after the fact did not stop the call
    "blast_radius",
    "duration_ms",
    "outcome",  # ok / error / denied (the span's OpenTelemetry status is in json and csv)
    "approval_outcome",
    "approval_decided_by",
    "approval_reason",
    "tool_definition_changed",  # the tool's definition differed from its pinned one
)


def format_option(fn: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(fn)


def _data(data: Path | None) -> Path:
    return config.data_dir(data)


def _existing_data(data: Path | None) -> Path:
    """The data directory of a command that reads or controls what is there: a directory
    that does not exist is a typo to report, not an empty history to show (or a control
    store no agent reads to create)."""
    root = _data(data)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise CliError(
            f"data directory {root} {what}: point --data or ${config.ENV_DATA} at the"
            " directory agents land in (or run `tooltrail demo`)"
        )
    return root


def _echo_df(df: Any, fmt: str, columns: tuple[str, ...] | None = None) -> None:
    from tooltrail.output import render

    click.echo(render(df, fmt, columns))


@click.group()
@click.version_option(__version__, prog_name="tooltrail")
def cli() -> None:
    """tooltrail: audit trail and policy gate for AI-agent tool calls.

    Every command takes --data DIR (or $TOOLTRAIL_DATA); listing commands take
    --format table|json|csv.

    Example:

        tooltrail demo --no-dashboard && tooltrail sessions --limit 10
    """


@cli.command()
@data_option
@format_option
@click.option("--agent", help="Only sessions of this agent name.")
@click.option(
    "--status",
    type=click.Choice(
        [
            "active",
            "completed",
            "failed",
            "abandoned",
            "waiting_approval",
            "paused",
            "canceled",
        ]
    ),
    help="Only sessions in this status.",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Only sessions with this tag (repeat: with every one of them).",
)
@click.option(
    "--since", help="Only sessions active within this window, e.g. 2h, 1h30m, 7d, or all."
)
@click.option(
    "--governed-by",
    type=click.Choice(["gateway", "instrumentation", "other"]),
    help="Only sessions governed by the MCP gateway, by in-process instrumentation, or"
    " by neither (other: third-party spans only).",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
def sessions(
    data: Path | None,
    fmt: str,
    agent: str | None,
    status: str | None,
    since: str | None,
    governed_by: str | None,
    limit: int,
    tags: tuple[str, ...],
) -> None:
    """List sessions, most recent activity first. governed_by says who governed a
    session's calls: the MCP gateway (`tooltrail proxy`; mcp_client_name is its client),
    tooltrail's in-process instrumentation, or neither (empty). A session that recorded
    its end is completed or failed; one whose agent died without ending is abandoned.

    Example:

        tooltrail sessions --governed-by gateway --tag nightly --since 2h --format json
    """
    from tooltrail import analytics
    from tooltrail.policy.durations import parse_since_seconds

    with domain_errors():
        if since is not None:
            parse_since_seconds(since)  # the error names the option (--since)
        df = analytics.sessions(
            _existing_data(data),
            agent=agent,
            status=status,
            since=since,
            governed_by=governed_by,
            tags=list(tags) or None,
            limit=limit,
        )
    _echo_df(df, fmt, SESSION_COLUMNS)


@cli.command()
@data_option
@format_option
@click.option(
    "--full", is_flag=True, help="Show every value whole (tables cut cells at 48 characters)."
)
@click.option(
    "--action",
    "which",
    metavar="N|SPAN_ID",
    help="Show only the action with sequence number N (or this span id, for actions without"
    " one), every field whole, arguments too.",
)
@click.option(
    "--trace",
    is_flag=True,
    help="Show the activity trace instead: LLM steps, tool calls, pause / resume / cancel /"
    " complete and the session's end and final output, in the order they happened.",
)
@click.option(
    "--only",
    type=click.Choice(["all", "reasoning", "tools"]),
    default="all",
    show_default=True,
    help="With --trace: every entry, the model's steps (reasoning), or the tool calls"
    " (control events and the end are always shown).",
)
@click.argument("session_id")
def show(
    data: Path | None,
    fmt: str,
    full: bool,
    which: str | None,
    trace: bool,
    only: str,
    session_id: str,
) -> None:
    """Show one session: its header, every action in sequence order (with how each call
    ended and, for held calls, the approval's outcome, decider and reason), then who
    paused, resumed, canceled or completed it (CSV: the actions only). JSON carries every
    column, whole. --trace shows the activity trace instead (prompts and outputs whole
    in JSON).

    Example:

        tooltrail show 3f2a9c6e0b7d4c419d0e5d2b7f1c8a10 --trace --only tools
    """
    from tooltrail import analytics
    from tooltrail.output import records, render, render_mapping

    if which is not None and trace:
        raise CliError("--action and --trace show different things: give one of them")
    if only != "all" and not trace:  # else it would be ignored without a word
        raise CliError(f"--only {only} chooses among the trace's entries: give it with --trace")
    root = _existing_data(data)
    with domain_errors(), analytics.connect(root) as con:
        header = analytics.session(con, session_id)
        if header is None:
            raise CliError(f"no session {session_id!r} in {root}")
        if trace:
            steps = analytics.session_trace(con, session_id, only=only)
        else:
            actions = analytics.session_actions(con, session_id)
            control = analytics.session_control_history(con, session_id)
    if trace:
        _show_trace(header, steps, fmt, full)
        return
    if which is not None:
        _show_action(actions, session_id, which, fmt)
    elif fmt == "json":
        doc = {
            "session": records(header)[0],
            "actions": records(actions),
            "control_events": records(control),
        }
        click.echo(json.dumps(doc, indent=2, default=str))
    elif fmt == "csv":
        click.echo(render(actions, "csv"))
    else:
        click.echo(render_mapping(header.row(0, named=True), full=full))
        click.echo()
        click.echo(render(actions, "table", _shown_action_columns(actions), full=full))
        if control.height:
            click.echo()
            click.echo(render(control, "table", full=full))


def _show_trace(header: Any, steps: Any, fmt: str, full: bool) -> None:
    """The activity trace: JSON {session, trace}; CSV the entries; a table after the
    header otherwise."""
    from tooltrail.output import records, render, render_mapping

    if fmt == "json":
        doc = {"session": records(header)[0], "trace": records(steps)}
        click.echo(json.dumps(doc, indent=2, default=str))
    elif fmt == "csv":
        click.echo(render(steps, "csv"))
    else:
        click.echo(render_mapping(header.row(0, named=True), full=full))
        click.echo()
        click.echo(render(steps, "table", list(TRACE_COLUMNS), full=full))


def _shown_action_columns(actions: Any) -> list[str]:
    """The table's columns: the approval ones only when the session held a call, the
    changed-definition flag only when a called tool had changed."""
    held = actions.height and actions["approval_outcome"].is_not_null().any()
    changed = actions.height and bool(actions["tool_definition_changed"].any())
    return [
        c
        for c in ACTION_COLUMNS
        if (held or not c.startswith("approval_")) and (changed or c != "tool_definition_changed")
    ]


def _show_action(actions: Any, session_id: str, which: str, fmt: str) -> None:
    """One action, every field whole: a key/value block (arguments as indented JSON)."""
    import polars as pl

    from tooltrail.output import records, render, render_mapping, terminal_safe

    key = which.strip()
    if key.isdigit():
        one = actions.filter(pl.col("sequence") == int(key))
    else:
        one = actions.filter(pl.col("span_id") == key.lower())
    if one.is_empty():
        numbers = [str(n) for n in actions["sequence"].drop_nulls().to_list()]
        unnumbered = actions.filter(pl.col("sequence").is_null())["span_id"].to_list()
        known = ", ".join([*numbers, *(f"span {s}" for s in unnumbered)])
        raise CliError(
            terminal_safe(
                f"--action {which}: session {session_id!r} has no action with that sequence"
                f" number or span id (it has: {known or 'none'})"
            )
        )
    if fmt == "csv":
        click.echo(render(one, "csv"))
        return
    if fmt == "json":
        click.echo(json.dumps(records(one)[0], indent=2, default=str))
        return
    row = one.row(0, named=True)
    row.pop("status_code", None)  # OpenTelemetry's word; `outcome` says it (json keeps it)
    long = {k: row.pop(k) for k in ("arguments", "arguments_rewritten", "result_preview")}
    click.echo(render_mapping(row, full=True))
    for key, value in long.items():
        if value:
            click.echo(f"\n{key}:\n{_pretty(value)}")


def _pretty(text: str) -> str:
    """JSON text indented for reading (as it is, when it is not JSON); terminal-safe."""
    from tooltrail.output import terminal_safe

    with contextlib.suppress(ValueError, TypeError):
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    return terminal_safe(text)


@cli.command()
@data_option
@format_option
@click.argument("sql")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N rows.")
def query(data: Path | None, fmt: str, sql: str, limit: int | None) -> None:
    """Run read-only SQL over the views (spans, actions, sessions, approvals).

    Write statements are refused.

    Example:

        tooltrail query "SELECT tool_name, count(*) FROM actions GROUP BY 1 ORDER BY 2 DESC"
    """
    from tooltrail import analytics

    with domain_errors():
        df = analytics.run_query(_existing_data(data), sql, limit=limit)
    _echo_df(df, fmt)


@cli.command()
@data_option
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=config.ENV_POLICY,
    help="Decide undecided tool spans with this policy (after the fact).",
)
def ingest(data: Path | None, files: tuple[Path, ...], policy: Path | None) -> None:
    """Land OTLP/JSON files (the OpenTelemetry Collector file exporter format).

    Every file is validated first: a malformed line is reported with its file and line
    number and nothing is landed. A span already landed (or repeated in the input) is
    skipped, so ingesting a file again adds nothing. A valid span whose values cannot be
    normalized is set aside alone (named on stderr, never its values; exit 1), except a
    tool call: it lands reduced, its arguments replaced (docs/DATA.md); the rest lands.

    Example:

        tooltrail ingest traces.jsonl --data ./tooltrail-data
    """
    from tooltrail.collector.otlp import ingest_files
    from tooltrail.collector.pipeline import policy_row_hook
    from tooltrail.policy import load_policy

    root = _data(data)
    with domain_errors():
        # Loaded first: for a one-shot command a policy that cannot load is bad input
        # (exit 2, nothing landed), not rows to land as policy-error for good.
        loaded = None if policy is None else load_policy(policy)
        report = ingest_files(
            list(files),
            root,
            row_hook=policy_row_hook(loaded),
            already_landed=_landed_span_ids(root),
        )
        _refresh_duckdb_file(root)
    click.echo(f"landed {report.rows} spans from {len(files)} file(s) into {root}")
    if report.skipped:
        click.echo(f"skipped {report.skipped} spans already landed (or repeated in the input)")
    if report.set_aside:
        # Valid OTLP that could not be normalized: the rest landed; say which (never the
        # values) and exit 1, as compact does when it skips something.
        click.echo(f"set aside {len(report.set_aside)} span(s) that could not be landed:", err=True)
        for item in report.set_aside:
            click.echo(f"  {item.describe()}", err=True)
        sys.exit(1)


def _landed_span_ids(root: Path) -> Callable[[list[str]], set[tuple[str, str]]] | None:
    if not root.is_dir():
        return None  # nothing landed yet

    def landed(span_ids: list[str]) -> set[tuple[str, str]]:
        from tooltrail import analytics

        return analytics.landed_span_ids(root, span_ids)

    return landed


@cli.command()
@data_option
def compact(data: Path | None) -> None:
    """Merge small Parquet files into files sorted by session, atomically.

    Safe while agents keep exporting: readers see the old files or the new, never both.

    Example:

        tooltrail compact --data ./tooltrail-data
    """
    from tooltrail import analytics
    from tooltrail.collector.compact import compact as run_compact

    root = _existing_data(data)

    def progress(name: str) -> None:
        click.echo(f"compacted {name}", err=True)

    with domain_errors():
        report = run_compact(root, progress=progress)
        analytics.build_session_index(root)
        analytics.build_duckdb_file(root)
    click.echo(
        f"{report.partitions} partition(s) rewritten, {report.rows} rows, "
        f"files {report.files_before} -> {report.files_after}"
    )
    if report.skipped:
        for line in report.skipped:
            click.echo(f"skipped {line}", err=True)
        sys.exit(1)


def _refresh_duckdb_file(root: Path) -> None:
    from tooltrail import analytics

    if root.exists():
        analytics.build_duckdb_file(root)


DEMO_HOST = "127.0.0.1"
DEMO_MAX_WAIT_S = 7 * 24 * 3600.0


@cli.command()
@data_option
@click.option("--sessions", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Makes the run repeatable.")
@click.option("--fresh", is_flag=True, help="Start over: delete what an earlier demo landed.")
@click.option("--no-dashboard", is_flag=True, help="Do not start the dashboard at the end.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Dashboard port."
)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, max=DEMO_MAX_WAIT_S),
    default=None,
    help="With --no-dashboard: keep the agents of the calls left for you waiting up to"
    " this many seconds (decide them with `tooltrail approve` / `deny` meanwhile)."
    "  [default: 0]",
)
def demo(
    data: Path | None,
    sessions: int,
    seed: int,
    fresh: bool,
    no_dashboard: bool,
    port: int,
    wait_s: float | None,
) -> None:
    """Run the main job end to end: scripted agents do real git work through the real
    mcp-server-git, governed by examples/policy-git.yaml at call time, while a demo
    approver approves and denies held calls; then show the sessions (and the dashboard).

    A last release's held calls are left for you: their agents keep waiting (up to the
    policy's approval timeout) while the dashboard runs, so approving one there or with
    `tooltrail approve` really runs its git call. Stopping the dashboard (Ctrl-C,
    SIGTERM) stops those agents: what is still pending ends abandoned. With
    --no-dashboard they stop when the demo ends, at once unless --wait keeps them
    waiting.

    Re-running adds sessions; --fresh starts over. The agents work only in sandbox
    repositories under the data directory.

    Example:

        tooltrail demo --sessions 30 --seed 7 --no-dashboard --wait 120
    """
    from tooltrail.demo import DemoRun

    if wait_s is not None and not no_dashboard:
        raise CliError(
            "--wait applies with --no-dashboard; with the dashboard the agents wait while it runs"
        )
    if not no_dashboard:
        # Refused before the agents run, not after a minute of work.
        _check_can_listen(DEMO_HOST, port)
    root = _data(data)
    with _stop_signals_raise(), domain_errors():
        run = DemoRun(root, sessions=sessions, seed=seed, fresh=fresh)
        try:
            with run:
                report = _demo_until_ready(run, sessions)
                _echo_demo_report(report, no_dashboard, wait_s or 0.0)
                if not no_dashboard:
                    from tooltrail.demo import demo_policy_path

                    _serve_dashboard(report.data_dir, port, DEMO_HOST, demo_policy_path())
                elif wait_s and report.left_pending and run.wait_for_operator(wait_s):
                    click.echo("every held call was decided: the demo's agents are done")
                if report.left_pending:
                    click.echo("stopping the demo's agents...", err=True)
        finally:
            _echo_left_pending_outcome(run)


def _demo_until_ready(run: Any, sessions: int) -> Any:
    with click.progressbar(length=sessions, label="agent sessions", file=sys.stderr) as bar:

        def on_event(event: dict[str, object]) -> None:
            if event.get("event") == "plan":
                # The operator's release is not counted: its sessions end later.
                bar.length = int(str(event["sessions"]))
            elif event.get("event") == "session":
                bar.update(1)

        run.on_event = on_event
        report = run.ready()
    run.on_event = None
    return report


def _echo_demo_report(report: Any, no_dashboard: bool, wait_s: float) -> None:
    click.echo(
        f"{len(report.sessions)} sessions in {report.seconds:.1f}s; approvals: "
        f"{len(report.approved)} approved, {len(report.denied)} denied, "
        f"{len(report.left_pending)} left for you (tooltrail approvals)"
    )
    from tooltrail import analytics

    df = analytics.sessions(report.data_dir, limit=max(len(report.sessions), 1))
    _echo_df(df, "table", SESSION_COLUMNS)
    if not report.left_pending:
        return
    if not no_dashboard:
        until = "while the dashboard runs (until Ctrl-C)"
    elif wait_s:
        until = f"for {wait_s:g}s"
    else:
        # Said here so nobody decides a call that is gone: --wait keeps them waiting.
        click.echo(
            f"  {len(report.left_pending)} held calls were left for you; their agents stop"
            " waiting as the demo ends (--no-dashboard), so they end abandoned."
            " Use the dashboard, or --wait SECONDS, to decide them live."
        )
        return
    click.echo(
        f"  their agents are waiting {until}: approving one (dashboard, or"
        f" `tooltrail approve ID --by NAME --data {report.data_dir}`) runs its git call"
    )
    for approval_id in report.left_pending:
        click.echo(f"    {approval_id}")


def _echo_left_pending_outcome(run: Any) -> None:
    """How the calls left for the operator ended, once the demo's agents are gone."""
    if not run.report.left_pending or not _has_store(run.root):
        return
    ended = run.operator_approvals()
    click.echo(
        "calls left for you: "
        + ", ".join(f"{r.approval_id} {r.status}" for r in ended)
        + (" (their agents stopped waiting)" if any(r.abandoned for r in ended) else "")
    )


@contextlib.contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: by an exception, so the fleet is
    stopped in order (its waiting agents give up) rather than left without its command."""

    def stop(signum: int, _frame: object) -> None:
        # Once: a second signal while stopping must not cut the stop short.
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_dashboard(
    root: Path, port: int, host: str, policy: Path | None, secrets: Path | None = None
) -> None:
    from tooltrail.dashboard import check_bind, run

    with domain_errors():
        check_bind(root, host)
    _check_can_listen(host, port)  # before printing a URL that may be another server's
    click.echo(f"dashboard: http://{host}:{port}  (Ctrl-C to stop)")
    with domain_errors():
        code = run(root, port=port, host=host, policy=policy, secrets=secrets)
    if code not in (0, -2, 130):  # a clean stop or Ctrl-C
        raise click.ClickException(f"the dashboard exited with code {code}")


def _check_can_listen(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As servers bind: a port left in TIME_WAIT is free, one listening is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


@cli.command()
@data_option
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=config.ENV_POLICY,
    help="The active policy, for the Policy page.",
)
@click.option(
    "--secrets",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A secrets.toml whose [auth] section configures OpenID sign-in (st.login);"
    " default: Streamlit's .streamlit/secrets.toml.",
)
def dashboard(
    data: Path | None, port: int, host: str, policy: Path | None, secrets: Path | None
) -> None:
    """Open the Streamlit dashboard over the data directory: sessions, session detail,
    approvals (approve / deny), blast radius, policy replay and SQL. With access control
    on, everyone signs in (local account, or OpenID); without it, only a loopback --host
    is served.

    Example:

        tooltrail dashboard --data ./tooltrail-data --port 8501
    """
    _serve_dashboard(_existing_data(data), port, host, policy, secrets)


APPROVAL_COLUMNS = (
    "approval_id",
    "status",
    "session_id",
    "agent_name",
    "tool_name",
    "policy_rule",
    "blast_radius",
    "requested_at",
    "decided_by",
    "decision_reason",
    "wait_ms",
    "verified",
)


def _store(root: Path) -> Any:
    from tooltrail.control import ControlStore

    return ControlStore(root)


def _has_store(root: Path) -> bool:
    """Whether ``root`` holds a control store. Commands that read it, or refuse, must not
    leave a new ``control.sqlite`` in a directory a mistyped --data pointed at."""
    return (root / config.CONTROL_FILE).exists()


@cli.command()
@data_option
@format_option
@click.option(
    "--status",
    type=click.Choice(["pending", "approved", "denied", "expired", "abandoned", "all"]),
    default="pending",
    show_default=True,
)
def approvals(data: Path | None, fmt: str, status: str) -> None:
    """List approval requests (pending by default; expired ones are marked first).

    These are the control store's records: `reason` is the policy rule's reason,
    `decision_reason` the decider's, and `wait_ms` runs from filing to decision as the
    store saw it. The `approvals` view (tooltrail query) names them `policy_reason` and
    `reason`, and its `wait_ms` is the agent's own wait, recorded on the span.

    Example:

        tooltrail approvals --status all --format json
    """
    import polars as pl

    from tooltrail.control import ApprovalRecord
    from tooltrail.control_verify import annotate

    root = _existing_data(data)
    _notice_single_user(root)
    _notice_trust(root)
    records: list[ApprovalRecord] = []
    problems: dict[str, list[str]] = {}
    if _has_store(root):
        with domain_errors(), _store(root) as store:
            records = store.list_approvals(status)
            problems = annotate(store, records)
    rows = [r.to_dict() for r in records]
    for row in rows:
        for key in ("requested_at", "expires_at", "decided_at"):
            row[key] = _epoch(row[key])
        # Checked against the control ledger: False with the reasons when it was edited.
        found = problems.get(row["approval_id"], [])
        row["verified"] = not found
        row["tampered"] = "; ".join(found) if found else None
    df = pl.DataFrame(rows) if rows else pl.DataFrame(schema=list(APPROVAL_COLUMNS))
    _echo_df(df, fmt, APPROVAL_COLUMNS)


def _epoch(value: float | None) -> Any:
    import datetime as dt

    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)


_by_option = click.option(
    "--by",
    "by",
    help="Who decides (recorded). Required in single-user mode; with access control on, the"
    " credential's user decides and --by may only repeat that name.",
)
_reason_option = click.option("--reason", help="Why (recorded, shown to the agent).")


def _control_command(
    name: str,
    id_name: str,
    command: Callable[..., None],
    summary: str,
    example: str,
    options: tuple[Callable[[Callable[..., None]], Callable[..., None]], ...] = (),
) -> click.Command:
    """``NAME [--data DIR] ID --by WHO [--reason WHY] [options]`` running ``command``; its
    help laid out like the other commands' docstrings."""
    command.__doc__ = f"{summary}\n\n    Example:\n\n        {example}\n"
    for option in options:
        command = option(command)
    params = data_option(click.argument(id_name)(_by_option(_reason_option(command))))
    return click.command(name=name)(params)


def _notice_single_user(root: Path) -> None:
    """Say on standard error (scripts read standard output) when names are not checked."""
    from tooltrail import access

    with domain_errors():
        on = access.enabled(root)
    if not on:
        click.echo(access.single_user_notice(root), err=True)


def _notice_trust(root: Path) -> None:
    """Say on standard error what a decision's signature is verified against, unless it is
    a pinned trust root (``$TOOLTRAIL_TRUST_ROOT``): unsigned, or keys the agent's account
    can rewrite."""
    from tooltrail.signing import load_trust_root

    with domain_errors():
        notice = load_trust_root(root).notice(root)
    if notice:
        click.echo(notice, err=True)


def _acting_as(root: Path, by: str | None, action: Any) -> tuple[str, str | None, Any]:
    """Who a decision or session change is recorded as, their role and their signer: in
    single-user mode the typed ``--by`` (role and signer None: unsigned); with access
    control on the credential's user, whose role must allow ``action`` (``--by`` naming
    anyone else is refused) and whose key, sealed under that credential, signs."""
    from tooltrail import access
    from tooltrail.errors import AccessDeniedError
    from tooltrail.signing import decider_signer

    _notice_trust(root)
    with domain_errors():
        who = access.identify(root)
        if who is not None:
            if who.is_agent:
                raise AccessDeniedError(
                    f"agent {who.name!r} may not {access.ACTION_WORDS[action]}: that needs a"
                    " user's credential"
                )
            access.check_acting_as(who, by, "--by")
            access.require(who, action)
            credential = access.presented_credential(root)
            assert credential is not None  # identify() found one
            return who.name, who.role, decider_signer(root, credential)
    click.echo(access.single_user_notice(root), err=True)
    if not by or not by.strip():
        raise CliError("--by is required in single-user mode: who decides is recorded")
    return by, None, None


def _decision_command(name: str, outcome: str, summary: str, example: str) -> click.Command:
    def command(data: Path | None, approval_id: str, by: str | None, reason: str | None) -> None:
        root = _existing_data(data)
        who, role, signer = _acting_as(root, by, "decide")
        if not _has_store(root):
            raise CliError(
                f"no approval request {approval_id!r} in {root}: it holds no control store"
                f" ({config.CONTROL_FILE}); is --data the directory your agents use?"
            )
        with domain_errors(), _store(root) as store:
            record = store.decide(
                approval_id, outcome, by=who, reason=reason, role=role, signer=signer
            )
        click.echo(f"{record.approval_id} {record.status} by {record.decided_by}")

    return _control_command(name, "approval_id", command, summary, example)


cli.add_command(
    _decision_command(
        "approve",
        "approved",
        "Approve a held tool call: the agent's call proceeds with the arguments shown.",
        'tooltrail approve apr-1a2b3c4d5e6f --by alice --reason "release window"',
    )
)
cli.add_command(
    _decision_command(
        "deny",
        "denied",
        "Deny a held tool call: the agent gets a structured denial naming who and why.",
        'tooltrail deny apr-1a2b3c4d5e6f --by alice --reason "not during the freeze"',
    )
)


_force_option = click.option(
    "--force",
    is_flag=True,
    help="Control a session id no agent has reported yet (no landed action, no request).",
)


def _session_command(action: str, summary: str, example: str) -> click.Command:
    def command(
        data: Path | None, session_id: str, by: str | None, reason: str | None, force: bool
    ) -> None:
        from tooltrail.control import SESSION_ACTION_DONE

        root = _existing_data(data)
        who, _, signer = _acting_as(root, by, "control")
        if not force:
            _require_known_session(root, session_id)
        with domain_errors(), _store(root) as store:
            control = store.set_session_state(
                session_id, action, by=who, reason=reason, signer=signer
            )
        click.echo(
            f"session {control.session_id} {SESSION_ACTION_DONE[action]} by {control.changed_by}"
        )

    return _control_command(action, "session_id", command, summary, example, (_force_option,))


def _require_known_session(root: Path, session_id: str) -> None:
    """A mistyped or shortened id must not look like a stopped agent: the session must have
    landed an action or be known to the control store (a call held for approval has not
    landed yet, but its request names the session)."""
    from tooltrail import analytics

    if _has_store(root):
        with domain_errors(), _store(root) as store:
            if store.knows_session(session_id):
                return
    with domain_errors():
        if analytics.session(root, session_id) is not None:
            return
    raise CliError(
        f"no session {session_id!r} in {root}: no landed action and no approval request"
        " names it (list ids with `tooltrail sessions`; --force controls an id no agent"
        " has reported yet)"
    )


cli.add_command(
    _session_command(
        "pause",
        "Pause a session: no new tool call starts until resume; calls in flight finish.",
        "tooltrail pause 3f2a9c6e0b7d4c419d0e5d2b7f1c8a10 --by ops",
    )
)
cli.add_command(
    _session_command(
        "resume",
        "Resume a paused session: its held calls go on.",
        "tooltrail resume 3f2a9c6e0b7d4c419d0e5d2b7f1c8a10 --by ops",
    )
)
cli.add_command(
    _session_command(
        "cancel",
        "Cancel a session: every later tool call is denied (session canceled); final.",
        "tooltrail cancel 3f2a9c6e0b7d4c419d0e5d2b7f1c8a10 --by ops --reason runaway",
    )
)


@cli.command()
@data_option
@click.argument("session_id")
@_by_option
@click.option("--reason", required=True, help="Why it is complete (recorded).")
@_force_option
def complete(data: Path | None, session_id: str, by: str | None, reason: str, force: bool) -> None:
    """Mark a session complete (who and why are recorded): its status reads completed
    from then on, whatever its spans say (e.g. an abandoned session whose work an
    operator knows was done). Needs the operator role when access control is on; the
    completion is chained in the control ledger and signed with the operator's key, and
    `tooltrail verify` flags a completion written or edited by hand.

    Example:

        tooltrail complete 3f2a9c6e0b7d4c419d0e5d2b7f1c8a10 --by ops --reason "finished by hand"
    """
    root = _existing_data(data)
    who, _, signer = _acting_as(root, by, "control")
    if not force:
        _require_known_session(root, session_id)
    with domain_errors(), _store(root) as store:
        event = store.complete_session(session_id, by=who, reason=reason, signer=signer)
    click.echo(f"session {event.session_id} completed by {event.actor}: {event.reason}")


def _register_groups() -> None:
    from tooltrail.access_cli import agents_cli, login_cli, users_cli
    from tooltrail.chain_cli import delete_cli, retention_cli, verify_cli
    from tooltrail.collector.cli import collect_cli
    from tooltrail.gateway.cli import proxy_cli, tools_cli
    from tooltrail.live_cli import tail_cli, webhooks_cli
    from tooltrail.policy.cli import policy_cli

    cli.add_command(policy_cli)
    cli.add_command(collect_cli)
    cli.add_command(proxy_cli)
    cli.add_command(tools_cli)
    cli.add_command(users_cli)
    cli.add_command(agents_cli)
    cli.add_command(login_cli)
    cli.add_command(tail_cli)
    cli.add_command(webhooks_cli)
    cli.add_command(verify_cli)
    cli.add_command(delete_cli)
    cli.add_command(retention_cli)


_register_groups()


def main() -> None:  # pragma: no cover - console entry
    cli()


if __name__ == "__main__":  # pragma: no cover - `python -m tooltrail.cli`
    main()
