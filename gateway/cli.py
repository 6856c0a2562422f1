"""``tooltrail proxy``: the click command (registered by tooltrail.cli with add_command)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click
from click.core import ParameterSource

from tooltrail import config
from tooltrail.cli_common import data_option, domain_errors
from tooltrail.errors import BadInputError
from tooltrail.output import FORMATS
from tooltrail.semconv import TRIGGERS

if TYPE_CHECKING:
    from tooltrail.gateway.connection import ProxyOptions
    from tooltrail.gateway.http import HttpOptions

WRAP: Final = "wrap"
# The bearer token of `proxy --listen` (as $TOOLTRAIL_COLLECTOR_TOKEN is `collect`'s).
ENV_PROXY_TOKEN: Final = "TOOLTRAIL_PROXY_TOKEN"


@click.command(name="proxy wrap")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The policy every wrapped server's calls are decided by.",
)
@data_option
@click.option("--undo", is_flag=True, help="Put the backup made by the first wrap back.")
def wrap_cli(config_file: Path, policy: Path | None, data: Path | None, undo: bool) -> None:
    """Route every stdio server of an MCP client's configuration through the gateway.

    Each stdio entry of `mcpServers` (Claude Desktop, Claude Code, Cursor) becomes
    `tooltrail proxy --policy FILE --data DIR --server-name NAME -- COMMAND...` (absolute
    paths, other keys kept); remote (`url`) servers and ones already wrapped are left
    alone. The first wrap keeps the file as it was in CONFIG_FILE.tooltrail-backup, which
    --undo puts back.

    Example:

        tooltrail proxy wrap claude_desktop_config.json --policy policy.yaml
    """
    from tooltrail.gateway.wrap import undo as undo_wrap
    from tooltrail.gateway.wrap import wrap

    with domain_errors():
        if undo:
            undo_wrap(config_file)
            click.echo(f"restored {config_file} from its backup")
            return
        report = wrap(config_file, policy=policy, data=data)
    if report.wrapped:
        click.echo(f"wrapped {', '.join(report.wrapped)} (backup: {report.backup})")
        click.echo(f"spans and approvals: {report.data}")
        if policy is None:
            click.echo("no --policy: every call is denied until TOOLTRAIL_POLICY names one")
    if report.already:
        click.echo(f"already through the gateway: {', '.join(report.already)}")
    if report.not_stdio:
        click.echo(f"not stdio, left as is: {', '.join(report.not_stdio)}")
    if not report.wrapped:
        click.echo(f"{config_file} unchanged")


@click.command(
    name="proxy",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--policy",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=config.ENV_POLICY,
    show_envvar=True,
    help="Decide every tools/call with this policy (none: every call is denied, unless --observe).",
)
@data_option
@click.option("--agent-name", help="Agent name of the session (default: the client's name).")
@click.option(
    "--session-id",
    envvar=config.ENV_SESSION_ID,
    show_envvar=True,
    help="Session id (default: one new session per client connection).",
)
@click.option("--trigger", type=click.Choice(TRIGGERS), help="What started the run.")
@click.option(
    "--collector",
    metavar="URL",
    envvar=config.ENV_COLLECTOR_URL,
    show_envvar=True,
    help="Send spans to `tooltrail collect` at URL; approvals and session control go "
    "through it too.",
)
@click.option("--observe", is_flag=True, help="Record every call without enforcing the policy.")
@click.option(
    "--pin-tools",
    type=click.Choice(["deny", "approve", "warn"]),
    default=None,
    help="What calls of a tool whose definition changed since it was pinned get "
    "(default: the policy's pin_tools, else approve; `tooltrail tools` lists changes, "
    "`tooltrail tools accept` accepts one).",
)
@click.option(
    "--server-name",
    metavar="NAME",
    help="The name pins and the policy's `server` conditions know this server by "
    "(default: derived from COMMAND; never the server's own serverInfo name).",
)
@click.option(
    "--max-held",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Calls that may wait for a decision at once on one connection; more are denied "
    "(rule gateway-limit).",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve MCP's streamable HTTP transport at http://HOST:PORT/mcp instead of stdio "
    "(one server process per MCP session). Loopback unless --token is given.",
)
@click.option(
    "--token",
    envvar=ENV_PROXY_TOKEN,
    show_envvar=True,
    help="With --listen: bearer token every request must carry (required off loopback).",
)
@click.option(
    "--upstream",
    metavar="URL",
    help="With --listen: front this remote streamable HTTP MCP server instead of COMMAND.",
)
@click.option(
    "--servers",
    "servers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --listen: serve every server of this YAML file at /mcp/NAME (docs/GATEWAY.md).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1800.0,
    show_default=True,
    help="With --listen: seconds without a request (and no open stream) that end a session.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="With --listen: MCP sessions at once (each has its own server); more get 503.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def proxy_cli(
    policy: Path | None,
    data: Path | None,
    agent_name: str | None,
    session_id: str | None,
    trigger: str | None,
    collector: str | None,
    observe: bool,
    pin_tools: str | None,
    server_name: str | None,
    max_held: int,
    listen: str | None,
    token: str | None,
    upstream: str | None,
    servers_file: Path | None,
    idle_timeout: float,
    max_sessions: int,
    command: tuple[str, ...],
) -> None:
    """MCP gateway in front of a stdio server: governs any MCP client.

    An MCP client starts `tooltrail proxy [OPTIONS] -- COMMAND [ARG...]` in place of the
    server. The gateway starts COMMAND, relays JSON-RPC both ways unchanged and decides
    each tools/call first: ALLOW forwards it, DENY answers the client with an isError
    result naming the rule, REWRITE forwards the rewritten arguments, REQUIRE_APPROVAL
    holds it until `tooltrail approve` / `deny` (or the dashboard) decides. Every call is
    one span in --data. Stdout carries only the protocol; logs go to stderr.

    `tooltrail proxy wrap CONFIG.json [--policy FILE] [--data DIR] [--undo]` rewrites
    an MCP client's `mcpServers` (Claude Desktop, Claude Code, Cursor) so every stdio
    server runs through the gateway, keeping a backup; --undo restores it.

    With `--listen HOST:PORT` the gateway serves MCP's streamable HTTP transport at
    /mcp instead: each MCP session (Mcp-Session-Id) gets its own COMMAND and is one
    tooltrail session. `--upstream URL` fronts a remote streamable HTTP server, and
    `--servers FILE` serves several, each at /mcp/NAME.

    \b
    Example:
      tooltrail proxy --policy policy.yaml --data ./tooltrail-data -- \\
          npx -y @modelcontextprotocol/server-filesystem /srv/project
      tooltrail proxy wrap ~/.cursor/mcp.json --policy policy.yaml
      tooltrail proxy --listen 127.0.0.1:8765 --policy policy.yaml -- \\
          npx -y @modelcontextprotocol/server-filesystem /srv/project
    """
    ctx = click.get_current_context()
    if listen is None:
        _stdio_only(ctx, upstream, servers_file, command)
    elif ctx.get_parameter_source("session_id") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--session-id does not go with --listen: each MCP session is one")
    if command and command[0] == WRAP:  # a server named "wrap" is started by path: ./wrap
        wrap_cli.main(list(command[1:]), prog_name=f"{ctx.command_path} {WRAP}")
        return
    from tooltrail.gateway.connection import ProxyOptions
    from tooltrail.gateway.stdio import run_proxy

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="tooltrail proxy: %(levelname)s %(message)s"
    )
    opts = ProxyOptions(
        command=command,
        policy=policy,
        data_dir=data,
        agent_name=agent_name,
        session_id=session_id,
        trigger=trigger,
        collector=collector,
        observe=observe,
        pin_tools=pin_tools,
        server_name=server_name,
        max_held=max_held,
    )
    with domain_errors():
        if listen is None:
            status = run_proxy(opts)
        else:
            http = _http_options(opts, listen, token, upstream, servers_file)
            from tooltrail.gateway.http import run_http

            status = run_http(
                dataclasses.replace(http, idle_timeout_s=idle_timeout, max_sessions=max_sessions)
            )
    sys.exit(status)


def _stdio_only(
    ctx: click.Context, upstream: str | None, servers_file: Path | None, command: tuple[str, ...]
) -> None:
    if ctx.get_parameter_source("token") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--token goes with --listen")
    if upstream is not None or servers_file is not None:
        raise click.UsageError("--upstream and --servers go with --listen")
    if not command:
        raise click.UsageError("give the server's command after --, or --listen HOST:PORT")


def _http_options(
    opts: ProxyOptions,
    listen: str,
    token: str | None,
    upstream: str | None,
    servers_file: Path | None,
) -> HttpOptions:
    try:
        from tooltrail.gateway.http import HttpOptions
    except ImportError as e:
        raise BadInputError(
            f"--listen needs the HTTP server libraries ({e.name}): pip install 'tooltrail[mcp]'"
        ) from e
    from tooltrail.gateway.servers import ServerSpec, check_url, load_servers

    given = [v for v in (opts.command, upstream, servers_file) if v]
    if len(given) != 1:
        raise click.UsageError("--listen serves one of: -- COMMAND, --upstream URL, --servers FILE")
    if token is None and os.environ.get(ENV_PROXY_TOKEN) is not None:
        # click reads an empty variable as unset: `TOOLTRAIL_PROXY_TOKEN= ...` meant a token.
        token = os.environ[ENV_PROXY_TOKEN]
    if token is not None and not token.strip():
        raise click.BadParameter(
            f"is empty (an unset shell variable? ${ENV_PROXY_TOKEN} counts too)",
            param_hint="--token",
        )
    host, port = _host_port(listen)
    if servers_file is not None:
        servers = load_servers(servers_file)
    elif upstream is not None:
        servers = (ServerSpec(name=None, url=check_url(upstream, "--upstream")),)
    else:
        servers = (ServerSpec(name=None, command=tuple(opts.command)),)
    return HttpOptions(host=host, port=port, proxy=opts, servers=servers, token=token)


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return host.strip("[]"), int(port)


PIN_COLUMNS: Final = ("server", "tool", "status", "hash", "changed_to", "pinned_at")


@click.group(name="tools", invoke_without_command=True)
@data_option
@click.option("--server", help="Only this MCP server's tools.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.pass_context
def tools_cli(ctx: click.Context, data: Path | None, server: str | None, fmt: str) -> None:
    """Tool definitions the gateway pinned, and the ones that changed since.

    A changed tool's calls get what the policy's `pin_tools` (or `tooltrail proxy
    --pin-tools`) says (default: held for approval) until `tooltrail tools accept SERVER
    TOOL --hash H` pins the reviewed definition (`tooltrail tools show SERVER TOOL`).

    \b
    Example:
      tooltrail tools --server server-filesystem --format json
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = data  # `tooltrail tools --data D accept ...` means D too
        return
    import polars as pl

    from tooltrail.gateway.pins import PinStore
    from tooltrail.output import render

    with domain_errors():
        store = PinStore(config.data_dir(data), create=False)
        try:
            rows = [r.to_json_dict() for r in store.rows(server)]
        finally:
            store.close()
    frame = pl.DataFrame(
        rows, schema={c: pl.Utf8 for c in PIN_COLUMNS[:-1]} | {"pinned_at": pl.Float64}
    )
    click.echo(render(frame.select(PIN_COLUMNS), fmt))


@tools_cli.command(name="show")
@data_option
@click.argument("server")
@click.argument("tool")
@click.pass_context
def tools_show(ctx: click.Context, data: Path | None, server: str, tool: str) -> None:
    """A pinned tool's definition and every change not yet accepted, as JSON.

    Read the changed definition (its description and schema are what the model will be
    shown) before accepting it by its hash.

    \b
    Example:
      tooltrail tools show server-filesystem write_file
    """
    import json

    from tooltrail.gateway.pins import PinStore

    data = data or ctx.obj
    with domain_errors():
        store = PinStore(config.data_dir(data), create=False)
        try:
            shown = store.show(server, tool)
        finally:
            store.close()
    click.echo(json.dumps(shown, indent=2, ensure_ascii=False))


@tools_cli.command(name="accept")
@data_option
@click.argument("server")
@click.argument("tool")
@click.option(
    "--hash",
    "reviewed",
    required=True,
    metavar="HASH",
    help="The changed definition's hash (`tooltrail tools` column changed_to; at least 16 "
    "hex digits): only the definition you reviewed is pinned.",
)
@click.pass_context
def tools_accept(
    ctx: click.Context, data: Path | None, server: str, tool: str, reviewed: str
) -> None:
    """Accept a tool's changed definition: pin it, so its calls are decided as before.

    \b
    Example:
      tooltrail tools show server-filesystem write_file
      tooltrail tools accept server-filesystem write_file --hash 3f1c9a0b7d2e4f5a
    """
    from tooltrail.gateway.pins import PinStore

    data = data or ctx.obj

    with domain_errors():
        store = PinStore(config.data_dir(data), create=False)
        try:
            digest = store.accept(server, tool, reviewed)
        finally:
            store.close()
    click.echo(f"pinned {server} {tool} at {digest}")
