"""``tooltrail proxy wrap``: route an MCP client's ``mcpServers`` through the gateway.

Claude Desktop, Claude Code and Cursor share one configuration shape::

    {"mcpServers": {"NAME": {"command": "npx", "args": [...], "env": {...}}, ...}}

Wrapping turns every stdio entry into ``{"command": TOOLTRAIL, "args": ["proxy", --policy,
--data, "--", COMMAND, *ARGS], ...}`` (paths absolute; --data defaults to
``$TOOLTRAIL_DATA`` or ./tooltrail-data where the wrap runs; its other keys kept), leaving
a backup beside the file (``CONFIG.json.tooltrail-backup``) the first time; ``--undo`` puts
the backup back.
Entries already wrapped are left alone, so wrapping twice changes nothing; entries that are
not stdio (``url``: remote servers) are left as they are and reported. The file is replaced
atomically: a failure leaves the old one whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tooltrail import config as config_module
from tooltrail.errors import BadInputError
from tooltrail.gateway.naming import check_server_name

BACKUP_SUFFIX: Final = ".tooltrail-backup"


@dataclass(slots=True)
class WrapReport:
    wrapped: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    not_stdio: list[str] = field(default_factory=list)
    backup: Path | None = None
    data: Path | None = None


def tooltrail_command() -> str:
    """The ``tooltrail`` to start, by absolute path: clients such as Claude Desktop do not
    start servers with the user's shell ``PATH``."""
    beside = Path(sys.executable).with_name("tooltrail")
    if beside.exists():
        return str(beside)
    found = shutil.which("tooltrail")
    return str(Path(found).resolve()) if found else "tooltrail"


def backup_path(config: Path) -> Path:
    return config.with_name(config.name + BACKUP_SUFFIX)


def _load(config: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = config.read_text(encoding="utf-8")
    except OSError as e:
        raise BadInputError(f"{config}: cannot read it: {e.strerror or e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInputError(f"{config}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("mcpServers"), dict):
        raise BadInputError(f'{config}: no "mcpServers" object (the client\'s MCP servers)')
    return text, doc


def _is_wrapped(
    config: Path, name: str, entry: dict[str, Any], command: str, head: list[str]
) -> bool:
    """Whether ``entry`` already runs through this gateway: this tooltrail's own command
    with the same policy and data directory. An entry that merely looks like a gateway
    (any binary named ``tooltrail``, another policy, another data directory: a cloned
    project's ``.mcp.json`` can say anything) is refused, naming it, rather than reported
    as governed."""
    args = entry.get("args")
    if not isinstance(args, list) or args[:1] != ["proxy"]:
        return False
    if Path(str(entry.get("command", ""))).name != "tooltrail":
        return False
    if entry.get("command") == command and args[: len(head)] == head and "--" in args:
        return True
    raise BadInputError(
        f"{config}: mcpServers.{name} already runs `tooltrail proxy`, but not this one"
        f" ({entry.get('command')!r} {' '.join(map(str, args))!r}; this wrap would run"
        f" {command!r} {' '.join(head)!r}): check where it came from, then put the"
        " server's own command back (or `tooltrail proxy wrap --undo`) and wrap again"
    )


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            Path(tmp).chmod(path.stat().st_mode & 0o7777)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def server_name_from_key(key: str) -> str:
    """A configuration key as a server name (characters a name cannot hold become -)."""
    name = re.sub(r"[^A-Za-z0-9._:/@+-]", "-", key).strip("-")[:127] or "server"
    return check_server_name(name if name[0].isalnum() else f"s{name}")


def wrap(config: Path, policy: Path | None = None, data: Path | None = None) -> WrapReport:
    """Wrap every stdio server of ``config`` (see the module docstring)."""
    original, doc = _load(config)
    report = WrapReport()
    head = ["proxy"]
    if policy is not None:
        head += ["--policy", str(policy.resolve())]
    # Always absolute: clients start servers in a directory of their own choosing.
    report.data = config_module.data_dir(data).resolve()
    head += ["--data", str(report.data)]
    command = tooltrail_command()
    servers: dict[str, Any] = doc["mcpServers"]
    for name, entry in servers.items():
        if not isinstance(entry, dict):
            raise BadInputError(f"{config}: mcpServers.{name} is not an object")
        if _is_wrapped(config, name, entry, command, head):
            report.already.append(name)
            continue
        if "command" not in entry:
            report.not_stdio.append(name)  # a remote (url) server: the HTTP gateway's job
            continue
        if not isinstance(entry["command"], str) or not entry["command"].strip():
            # Refused, not skipped as "not stdio": a client that starts it anyway would run
            # it ungoverned while the wrap said all was well.
            raise BadInputError(
                f"{config}: mcpServers.{name}.command is not a command (a non-empty string):"
                f" {entry['command']!r}"
            )
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise BadInputError(f"{config}: mcpServers.{name}.args is not a list of strings")
        # The configuration's key names the server for pins and policy rules: the
        # operator's word, not the one the server gives itself.
        named = ["--server-name", server_name_from_key(name)]
        servers[name] = {
            **entry,
            "command": command,
            "args": [*head, *named, "--", entry["command"], *args],
        }
        report.wrapped.append(name)
    if not report.wrapped:
        return report
    backup = backup_path(config)
    if not backup.exists():  # the first wrap's backup is the client's own configuration
        _write_atomically(backup, original)
    report.backup = backup
    _write_atomically(config, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return report


def undo(config: Path) -> Path:
    """Put the backup made by ``wrap`` back in place of ``config``; the backup's path."""
    backup = backup_path(config)
    if not backup.exists():
        raise BadInputError(f"{config}: no backup to restore ({backup} does not exist)")
    text = backup.read_text(encoding="utf-8")
    _write_atomically(config, text)
    backup.unlink()
    return backup
