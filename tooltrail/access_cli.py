"""``tooltrail users``, ``tooltrail agents`` and ``tooltrail login``: who may act on a data
directory (docs/SECURITY.md, "Access control").

A credential is printed once, as the last line of standard output, and never kept in
clear (``tooltrail.access``). Managing users and agents needs an admin's credential
(``$TOOLTRAIL_TOKEN`` or ``tooltrail login``), except for the directory's first user,
who must be an admin.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from tooltrail import config
from tooltrail.cli_common import CliError, data_option, domain_errors


def _format_option(fn: Any) -> Any:
    from tooltrail.output import FORMATS

    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(fn)


def _acting(root: Path) -> Any:
    """The presented credential's principal (None when none is presented and the
    directory has no users yet: adding the first user needs none)."""
    from tooltrail import access

    if not access.enabled(root):
        return None
    return access.identify(root)


def _print_credential(what: str, principal: Any, credential: str) -> None:
    click.echo(
        f"{what} {principal.kind} {principal.name} ({principal.role}); its credential, shown"
        " only now (keep it secret; `rotate` issues a new one):"
    )
    click.echo(credential)


def _warn(warning: str | None) -> None:
    if warning:
        click.echo(f"warning: {warning}", err=True)


def _list(root: Path, kind: str, fmt: str) -> None:
    import polars as pl

    from tooltrail import access
    from tooltrail.output import render

    columns = ["name", "kind", "role", "disabled", "created_at", "created_by", "rotated_at"]
    rows: list[dict[str, Any]] = []
    if access.access_path(root).exists():
        with domain_errors():
            _acting_reader(root)
            with access.AccessStore(root) as store:
                rows = [p.to_dict() for p in store.principals(kind)]  # type: ignore[arg-type]
    if fmt == "json":
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    import datetime as dt

    for row in rows:  # times as UTC timestamps, as `tooltrail approvals` shows them
        for key in ("created_at", "rotated_at", "disabled_at"):
            value = row[key]
            row[key] = None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)
    df = pl.DataFrame(rows) if rows else pl.DataFrame(schema=columns)
    click.echo(render(df, fmt, tuple(columns)))


def _acting_reader(root: Path) -> None:
    """Listing needs an admin's credential once access control is on (it names everyone
    who may act, and who is disabled)."""
    from tooltrail import access

    who = _acting(root)
    if who is not None:
        access.require(who, "admin")


def _group(kind: str) -> click.Group:
    plural = f"{kind}s"
    role_help = (
        "viewer (read), approver (decide), operator (+ pause/resume/cancel), admin (+ users)"
    )

    @click.group(name=plural)
    def group() -> None:
        pass

    group.help = (
        f"Manage the {plural} who may act on a data directory (docs/SECURITY.md).\n\n"
        f"    Example:\n\n        tooltrail {plural} add "
        + ("alice --role admin" if kind == "user" else "release-bot")
        + "\n"
    )

    def add(data: Path | None, name: str, role: str) -> None:
        from tooltrail import access

        root = config.data_dir(data)
        with domain_errors():
            by = _acting(root)
            with access.AccessStore(root) as store:
                principal, credential = store.add(name, kind, role, by=by)  # type: ignore[arg-type]
                warning = store.trust_warning
        _print_credential("added", principal, credential)
        _warn(warning)

    add.__doc__ = (
        f"Add a {kind} and print its credential once, as the last line of standard output."
        + (" The first user of a data directory must be an admin." if kind == "user" else "")
        + f"\n\n    Example:\n\n        tooltrail {plural} add "
        + ("alice --role approver" if kind == "user" else "release-bot")
        + "\n"
    )
    params: Any = click.argument("name")(add)
    if kind == "user":
        params = click.option(
            "--role",
            type=click.Choice(["viewer", "approver", "operator", "admin"]),
            required=True,
            help=role_help,
        )(params)
    else:
        params = click.option("--role", default="agent", hidden=True)(params)
    group.add_command(click.command(name="add")(data_option(params)))

    def list_cmd(data: Path | None, fmt: str) -> None:
        _list(config.data_dir(data), kind, fmt)

    list_cmd.__doc__ = (
        f"List the {plural} (never their credentials); needs an admin once access control"
        f" is on.\n\n    Example:\n\n        tooltrail {plural} list --format json\n"
    )
    group.add_command(click.command(name="list")(data_option(_format_option(list_cmd))))

    def disable(data: Path | None, name: str) -> None:
        from tooltrail import access

        root = config.data_dir(data)
        with domain_errors():
            by = _need_identity(root)
            with access.AccessStore(root) as store:
                principal = store.disable(name, kind, by=by)  # type: ignore[arg-type]
                warning = store.trust_warning
        click.echo(f"disabled {principal.kind} {principal.name}: its credential no longer works")
        _warn(warning)

    disable.__doc__ = (
        f"Disable a {kind}: its credential stops working at once.\n\n    Example:\n\n"
        f"        tooltrail {plural} disable {'alice' if kind == 'user' else 'release-bot'}\n"
    )
    group.add_command(click.command(name="disable")(data_option(click.argument("name")(disable))))

    def rotate(data: Path | None, name: str) -> None:
        from tooltrail import access

        root = config.data_dir(data)
        with domain_errors():
            by = _need_identity(root)
            with access.AccessStore(root) as store:
                principal, credential = store.rotate(name, kind, by=by)  # type: ignore[arg-type]
                warning = store.trust_warning
        _print_credential("rotated", principal, credential)
        _warn(warning)

    rotate.__doc__ = (
        f"Issue a new credential for a {kind} (the old one stops working) and print it once,"
        " as the last line of standard output. An admin rotates anyone's; a user their own."
        f"\n\n    Example:\n\n        tooltrail {plural} rotate"
        f" {'alice' if kind == 'user' else 'release-bot'}\n"
    )
    group.add_command(click.command(name="rotate")(data_option(click.argument("name")(rotate))))
    return group


def _need_identity(root: Path) -> Any:
    who = _acting(root)
    if who is None:
        raise CliError(
            f"{root} has no users: add the first with `tooltrail users add NAME --role admin`"
        )
    return who


users_cli = _group("user")
agents_cli = _group("agent")


@users_cli.command(name="add-relay")
@data_option
@click.argument("name")
def add_relay_cli(data: Path | None, name: str) -> None:
    """Add a relay: the signing key the dashboard uses for people who sign in through
    OpenID (st.login), and print its credential once, as the last line of standard output.
    Give that credential to the dashboard only (secrets.toml: [tooltrail] oidc_signer, or
    $TOOLTRAIL_OIDC_SIGNER); it authenticates to nothing else. The relay signs only for
    e-mails mapped with `users map-email`, as their role; `users disable` and `users
    rotate` revoke or replace it. Needs an admin's credential (docs/SECURITY.md §7).

    Example:

        tooltrail users add-relay dashboard
    """
    from tooltrail import access

    root = config.data_dir(data)
    with domain_errors():
        by = _need_identity(root)
        with access.AccessStore(root) as store:
            principal, credential = store.add(name, "relay", access.RELAY_ROLE, by=by)
            warning = store.trust_warning
    _print_credential("added", principal, credential)
    _warn(warning)


@users_cli.command(name="export-keys")
@data_option
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def export_keys(data: Path | None, path: Path) -> None:
    """Write the deciders' and relays' public keys (revoked ones marked) and the e-mails'
    role grants (what a relay may vouch for, and when) to PATH as a pinned trust root.
    Keep PATH where the agents' account cannot write, and point whoever releases held
    calls at it with TOOLTRAIL_TRUST_ROOT (docs/SECURITY.md, "Signed decisions").
    While TOOLTRAIL_TRUST_ROOT is set, `users add`, `add-relay`, `rotate`, `disable`,
    `map-email` and `unmap-email` keep it current.
    Needs an admin's credential.

    Example:

        tooltrail users export-keys /etc/tooltrail/trust-root.json
    """
    from tooltrail import access
    from tooltrail.signing import write_trust_file

    root = config.data_dir(data)
    with domain_errors():
        access.require(_need_identity(root), "admin")
        with access.AccessStore(root) as store:
            keys = store.decider_keys()
            grants = store.email_grants()
        try:
            write_trust_file(path, keys, grants)
        except OSError as e:
            raise CliError(f"cannot write the trust root {path}: {e}") from e
    click.echo(f"wrote {len(keys)} decider key(s) and {len(grants)} e-mail role grant(s) to {path}")


@users_cli.command(name="map-email")
@data_option
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["viewer", "approver", "operator", "admin"]),
    required=True,
    help="The role of whoever the dashboard's OpenID provider signs in with this e-mail.",
)
def map_email_cli(data: Path | None, email: str, role: str) -> None:
    """Give a role to whoever signs in to the dashboard through its OpenID provider
    (st.login) with this e-mail; they decide as that e-mail. Replaces an earlier role;
    needs an admin's credential.

    Example:

        tooltrail users map-email carol@example.com --role approver
    """
    from tooltrail import access

    root = config.data_dir(data)
    with domain_errors():
        by = _need_identity(root)
        with access.AccessStore(root) as store:
            mapped = store.map_email(email, role, by=by)
    click.echo(f"mapped {mapped.email} to {mapped.role} (dashboard sign-in through OpenID)")


@users_cli.command(name="unmap-email")
@data_option
@click.argument("email")
def unmap_email_cli(data: Path | None, email: str) -> None:
    """Take an e-mail's role away: its dashboard session is signed out on its next run.
    Needs an admin's credential.

    Example:

        tooltrail users unmap-email carol@example.com
    """
    from tooltrail import access

    root = config.data_dir(data)
    with domain_errors():
        by = _need_identity(root)
        with access.AccessStore(root) as store:
            store.unmap_email(email, by=by)
    click.echo(f"unmapped {access.check_email(email)}")


@users_cli.command(name="emails")
@data_option
@_format_option
def emails_cli(data: Path | None, fmt: str) -> None:
    """List the e-mails mapped to roles for OpenID sign-in; needs an admin once access
    control is on.

    Example:

        tooltrail users emails --format json
    """
    import polars as pl

    from tooltrail import access
    from tooltrail.output import render

    root = config.data_dir(data)
    rows: list[dict[str, Any]] = []
    if access.access_path(root).exists():
        with domain_errors():
            _acting_reader(root)
            with access.AccessStore(root) as store:
                rows = [m.to_dict() for m in store.email_roles()]
    if fmt == "json":
        import json

        click.echo(json.dumps(rows, indent=2))
        return
    import datetime as dt

    for row in rows:
        row["created_at"] = dt.datetime.fromtimestamp(row["created_at"], tz=dt.UTC)
    columns = ("email", "role", "created_at", "created_by")
    click.echo(
        render(pl.DataFrame(rows) if rows else pl.DataFrame(schema=list(columns)), fmt, columns)
    )


@click.command(name="login")
@data_option
def login_cli(data: Path | None) -> None:
    """Check a credential against a data directory and keep it for the commands that act
    (approve, deny, pause, resume, cancel, complete, delete, retention, users, agents,
    webhooks): read from standard input, or prompted for without echo. Kept owner-only
    (0600) in credentials.json in $TOOLTRAIL_CONFIG_DIR (else $XDG_CONFIG_HOME/tooltrail,
    else ~/.config/tooltrail); $TOOLTRAIL_TOKEN, when set, wins over it.

    Example:

        tooltrail login --data ./tooltrail-data < alice.credential
    """
    from tooltrail import access

    root = config.data_dir(data)
    if sys.stdin.isatty():
        credential = click.prompt("credential", hide_input=True)
    else:
        credential = sys.stdin.readline()
    credential = credential.strip()
    with domain_errors():
        if not access.enabled(root):
            raise CliError(f"{root} has no users (single-user mode): there is nothing to log in to")
        with access.AccessStore(root) as store:
            principal = store.authenticate(credential)
        if principal.is_agent:
            raise CliError(
                f"that is agent {principal.name!r}'s credential: agents present theirs as"
                f" ${config.ENV_COLLECTOR_TOKEN}, they do not log in"
            )
        path = access.save_credential(root, credential)
    click.echo(f"logged in to {root} as {principal.name} ({principal.role}); kept in {path}")
