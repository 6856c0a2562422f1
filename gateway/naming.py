"""The name the gateway knows a server by: the operator's, never the server's own word.

A server says who it is in ``initialize`` (``serverInfo.name``), but that is the server's
claim: a server that renames itself would escape its pinned tool definitions (every tool
new again) and could borrow the policy rules written for another server. So the name that
keys pins and policy ``server`` conditions comes from the operator: ``--server-name``
(``tooltrail proxy wrap`` sets it to the client configuration's key), or else it is
derived from the command the operator configured. The server's own name is recorded
beside it (``tooltrail.mcp.server.reported_name``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Final

from tooltrail.errors import BadInputError

# Programs that start the real server: their own options come first, then the server.
_LAUNCHERS: Final = frozenset(
    {"npx", "bunx", "uvx", "pipx", "node", "nodejs", "bun", "deno", "env", "exec", "uv"}
    | {"docker", "podman"}
)
# Subcommands of a launcher that come before the server ("uv run X", "pipx run X").
_SUBCOMMANDS: Final = frozenset({"run", "exec", "dlx", "tool"})
_PYTHON: Final = re.compile(r"^python(\d+(\.\d+)?)?$")
# Launcher options that take a value as the next word.
_OPTION_VALUE: Final = frozenset(
    {"-p", "--package", "--from", "--with", "-e", "--env", "-v", "--volume", "--name", "-w"}
    | {"--network", "--mount", "--workdir", "-u", "--user", "--entrypoint", "--env-file"}
)
# A script's generic file name says less than the package directory it lives in.
_GENERIC_STEMS: Final = frozenset({"index", "main", "server", "cli", "__main__", "run", "start"})
_BUILD_DIRS: Final = frozenset({"dist", "build", "lib", "src", "bin", "out", "build-esm"})
_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


def check_server_name(name: str, where: str = "--server-name") -> str:
    """``name`` if it can key pins and rules; BadInputError naming ``where`` otherwise."""
    if not _NAME.fullmatch(name):
        raise BadInputError(
            f"{where}: {name!r} is not a usable server name (1-128 characters: letters,"
            " digits and . _ : / @ + -, starting with a letter or digit)"
        )
    return name


def server_name_of(command: Sequence[str]) -> str:
    """A stable name for the server ``command`` starts.

    >>> server_name_of(["npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv"])
    'server-filesystem'
    >>> server_name_of(["python3", "-m", "mcp_server_git", "--repository", "."])
    'mcp_server_git'
    """
    word = _server_word(list(command))
    name = _name_of_word(word) if word else ""
    if not name:
        raise BadInputError(
            f"cannot tell a server name from the command {' '.join(command)!r}:"
            " give one with --server-name"
        )
    return check_server_name(name, "the server name derived from the command")


def _server_word(words: list[str]) -> str | None:
    """The word of the command that names the server: past launchers and their options."""
    i = 0
    while i < len(words):
        word = words[i]
        base = PurePath(word).name
        if base in _LAUNCHERS or _PYTHON.match(base) or base in _SUBCOMMANDS:
            i += 1
            continue
        if word == "-m" and i + 1 < len(words):  # python -m MODULE
            return words[i + 1]
        if word.startswith("-"):
            i += 2 if word in _OPTION_VALUE else 1
            continue
        if "=" in word and not word.startswith("/"):  # env NAME=VALUE server ...
            i += 1
            continue
        return word
    return None


def _name_of_word(word: str) -> str:
    path = PurePath(word)
    parts = [p for p in path.parts if p not in ("/", ".", "..")]
    if len(parts) > 1 and PurePath(parts[-1]).stem in _GENERIC_STEMS:
        # .../node_modules/@scope/server-x/dist/index.js: the package directory.
        dirs = parts[:-1]
        while dirs and dirs[-1] in _BUILD_DIRS:
            dirs.pop()
        if dirs:
            return _strip_version(dirs[-1])
    if word.startswith("@") and "/" in word:  # @scope/package[@version]
        return _strip_version(word.split("/", 1)[1])
    if "/" in word and not path.is_absolute() and not word.startswith("."):
        return _strip_version(word.rsplit("/", 1)[1])  # an image or package path: a/b
    name = path.name
    for suffix in (".js", ".mjs", ".cjs", ".ts", ".py", ".exe"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _strip_version(name)


def _strip_version(name: str) -> str:
    # package@1.2.3 or image:tag
    for sep in ("@", ":"):
        head, found, _ = name.partition(sep)
        if found and head:
            name = head
    return name
