"""``tooltrail proxy``: the click command (registered by tooltrail.cli with add_command)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from tooltrail import config
from tooltrail.cli_common import data_option
from tooltrail.semconv import TRIGGERS


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
    help="Send spans to `tooltrail collect` at URL; approvals and session control go "
    "through it too.",
)
@click.option("--observe", is_flag=True, help="Record every call without enforcing the policy.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def proxy_cli(
    policy: Path | None,
    data: Path | None,
    agent_name: str | None,
    session_id: str | None,
    trigger: str | None,
    collector: str | None,
    observe: bool,
    command: tuple[str, ...],
) -> None:
    """MCP gateway in front of a stdio server: governs any MCP client.

    An MCP client starts `tooltrail proxy [OPTIONS] -- COMMAND [ARG...]` in place of the
    server. The gateway starts COMMAND, relays JSON-RPC both ways unchanged and decides
    each tools/call first: ALLOW forwards it, DENY answers the client with an isError
    result naming the rule, REWRITE forwards the rewritten arguments, REQUIRE_APPROVAL
    holds it until `tooltrail approve` / `deny` (or the dashboard) decides. Every call is
    one span in --data. Stdout carries only the protocol; logs go to stderr.

    \b
    Example:
      tooltrail proxy --policy policy.yaml --data ./tooltrail-data -- \\
          npx -y @modelcontextprotocol/server-filesystem /srv/project
    """
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
    )
    try:
        status = run_proxy(opts)
    except RuntimeError as e:
        raise click.UsageError(str(e)) from e
    sys.exit(status)
