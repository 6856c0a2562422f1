"""``--servers FILE``: several MCP servers behind one streamable HTTP listener.

Each server is served at ``/mcp/NAME``. The file is YAML::

    servers:
      files:                          # NAME: letters, digits, '-', '_'
        command: npx                  # a stdio server: command (+ args, env) ...
        args: [-y, "@modelcontextprotocol/server-filesystem", /srv/project]
        env: {NODE_OPTIONS: --max-old-space-size=256}
        policy: files-policy.yaml     # optional; default: the --policy of the command
      remote:
        url: http://127.0.0.1:3001/mcp   # ... or a remote streamable HTTP server

Every problem is reported with the file, its line and the field (``servers.files.args``),
all of them at once, as a ``BadInputError`` (exit 2 on the command line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tooltrail.errors import BadInputError, PolicyError
from tooltrail.policy.loader import LineDict, parse_yaml

__all__ = ["ServerSpec", "load_servers"]

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SERVER_KEYS: Final = ("command", "args", "env", "url", "policy")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server behind the listener: a stdio ``command`` we start per MCP session, or
    the ``url`` of a remote streamable HTTP server. ``name`` None: the one server of
    ``--listen ... -- COMMAND`` (or ``--upstream URL``), served at ``/mcp``."""

    name: str | None
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str | None = None
    policy: Path | None = None

    @property
    def path(self) -> str:
        return "/mcp" if self.name is None else f"/mcp/{self.name}"


def check_url(url: str, where: str) -> str:
    """``url`` if it is an absolute http(s) URL; BadInputError naming ``where`` if not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"{where}: {url!r} is not an http:// or https:// URL")
    return url


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int, str]] = []

    def add(self, line: int | None, where: str, message: str) -> None:
        self.found.append((line or 0, f"{self.source}:{line or '?'}: {where}: {message}"))


def _line(doc: Any, key: str) -> int | None:
    if isinstance(doc, LineDict):
        return doc.key_lines.get(key, doc.line)
    return None


def load_servers(path: Path) -> tuple[ServerSpec, ...]:
    """The servers of a ``--servers`` file; BadInputError naming file, line and field.

    Example::

        specs = load_servers(Path("servers.yaml"))
        [s.path for s in specs]   # ['/mcp/files', '/mcp/remote']
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{source}: cannot read the servers file: {e}") from e
    try:
        doc = parse_yaml(text, source)
    except PolicyError as e:  # parse_yaml reports YAML problems as a policy's
        raise BadInputError(str(e)) from e
    problems = _Problems(source)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("servers"), LineDict):
        problems.add(_line(doc, "servers") or 1, "servers", "needs a mapping of NAME: server")
        _raise(problems)
    for key in doc:
        if key != "servers":
            problems.add(_line(doc, key), str(key), "unknown key (expected: servers)")
    servers: LineDict = doc["servers"]
    if not servers:
        problems.add(servers.line or _line(doc, "servers"), "servers", "names no server")
    specs = [
        _server(name, entry, servers, path.parent, problems) for name, entry in servers.items()
    ]
    _raise(problems)
    return tuple(s for s in specs if s is not None)


def _raise(problems: _Problems) -> None:
    if problems.found:
        raise BadInputError("\n".join(text for _, text in sorted(problems.found)))


def _server(
    name: Any, entry: Any, servers: LineDict, base: Path, problems: _Problems
) -> ServerSpec | None:
    line = servers.key_lines.get(name, servers.line)
    where = f"servers.{name}"
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        problems.add(line, where, "a server name is 1-64 letters, digits, '-' or '_'")
        return None
    if not isinstance(entry, LineDict):
        problems.add(line, where, "needs a mapping (command: ... or url: ...)")
        return None
    before = len(problems.found)
    for key in entry:
        if key not in SERVER_KEYS:
            problems.add(
                _line(entry, key),
                f"{where}.{key}",
                f"unknown key (one of {', '.join(SERVER_KEYS)})",
            )
    command = entry.get("command")
    url = entry.get("url")
    if (command is None) == (url is None):
        problems.add(line, where, "needs exactly one of command (a stdio server) or url")
    if url is not None and ("args" in entry or "env" in entry):
        problems.add(line, where, "args and env go with command, not url")
    argv = _command(command, entry, where, problems) if command is not None else ()
    env = _env(entry, where, problems)
    if url is not None:
        if not isinstance(url, str):
            problems.add(_line(entry, "url"), f"{where}.url", "needs a string")
        else:
            try:
                check_url(url, f"{where}.url")
            except BadInputError as e:
                problems.add(_line(entry, "url"), f"{where}.url", str(e).split(": ", 1)[1])
    policy = _policy(entry, where, base, problems)
    if len(problems.found) > before:
        return None
    return ServerSpec(
        name=name,
        command=argv,
        env=env,
        url=url if isinstance(url, str) else None,
        policy=policy,
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _command(command: Any, entry: LineDict, where: str, problems: _Problems) -> tuple[str, ...]:
    args = entry.get("args", [])
    if not (isinstance(command, str) and command) and not (_strings(command) and command):
        problems.add(
            _line(entry, "command"), f"{where}.command", "needs a string or a list of strings"
        )
        return ()
    if not _strings(args):
        problems.add(_line(entry, "args"), f"{where}.args", "needs a list of strings")
        return ()
    head: Sequence[str] = [command] if isinstance(command, str) else command
    return (*head, *args)


def _env(entry: LineDict, where: str, problems: _Problems) -> dict[str, str]:
    env = entry.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        problems.add(
            _line(entry, "env"),
            f"{where}.env",
            "needs a mapping of names to strings (quote numbers)",
        )
        return {}
    return dict(env)


def _policy(entry: LineDict, where: str, base: Path, problems: _Problems) -> Path | None:
    policy = entry.get("policy")
    if policy is None:
        return None
    if not isinstance(policy, str) or not policy:
        problems.add(_line(entry, "policy"), f"{where}.policy", "needs a file name")
        return None
    path = Path(policy).expanduser()
    path = path if path.is_absolute() else base / path  # relative to the servers file
    if not path.is_file():
        problems.add(_line(entry, "policy"), f"{where}.policy", f"{path} is not a file")
        return None
    return path
