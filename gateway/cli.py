"""``tooltrail proxy``: the click command (registered by tooltrail.cli with add_command)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Final

import click

from tooltrail import config
from tooltrail.cli_common import data_option, domain_errors
from tooltrail.output import FORMATS
from tooltrail.semconv import TRIGGERS

WRAP: Final = "wrap"


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
    """Route every stdio server of an MCP client's configuration through the gateway."""
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
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
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

    \b
    Example:
      tooltrail proxy --policy policy.yaml --data ./tooltrail-data -- \\
          npx -y @modelcontextprotocol/server-filesystem /srv/project
      tooltrail proxy wrap ~/.cursor/mcp.json --policy policy.yaml
    """
    if command[0] == WRAP:  # a server named "wrap" is started by path: ./wrap
        ctx = click.get_current_context()
        wrap_cli.main(list(command[1:]), prog_name=f"{ctx.command_path} {WRAP}")
        return
    from tooltrail.gateway.stdio import ProxyOptions, run_proxy

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
        status = run_proxy(opts)
    sys.exit(status)


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
