"""Pinned tool definitions: what each server's tools looked like when first seen.

A server can change a tool after the user trusted it (a "rug pull"), or describe it so as to
steer the model (tool poisoning). The gateway keeps, per server and tool, the definition it
first saw (the whole tool object: name, title, description, schemas, annotations, icons,
``_meta`` and anything else a model could be shown) and its SHA-256, in
``<data>/tool-pins.sqlite``. Servers are keyed by the operator's name for them
(tooltrail.gateway.naming), never by the name a server gives itself. A later ``tools/list``
that shows another definition records a change; the tool stays *changed* until someone
accepts it (``tooltrail tools accept SERVER TOOL --hash H``, naming the definition
reviewed), which pins that definition. What a changed tool's calls get is the policy's
``pin_tools`` or the gateway's ``--pin-tools`` (deny, approve, warn).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tooltrail.errors import BadInputError, StoreError

PINS_FILE: Final = "tool-pins.sqlite"
# Pins made before the whole definition was hashed covered only these keys, cut to 64 bits:
# such a pin is renewed in place when the tool still matches it (no false "changed").
LEGACY_KEYS: Final = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
LEGACY_HASH_CHARS: Final = 16
# `tools accept --hash` takes a prefix this long or more (64 bits: not guessable by chance).
MIN_ACCEPT_PREFIX: Final = 16

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS tool_pins (
    server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL, definition TEXT NOT NULL,
    pinned_at REAL NOT NULL, PRIMARY KEY (server, tool));
CREATE TABLE IF NOT EXISTS tool_changes (
    server TEXT NOT NULL, tool TEXT NOT NULL, hash TEXT NOT NULL, definition TEXT NOT NULL,
    seen_at REAL NOT NULL, PRIMARY KEY (server, tool, hash));
"""


@dataclass(frozen=True, slots=True)
class PinRow:
    server: str
    tool: str
    hash: str
    pinned_at: float
    changed_to: str | None  # the latest unaccepted definition's hash, if any

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "tool": self.tool,
            "hash": self.hash,
            "pinned_at": self.pinned_at,
            "status": "changed" if self.changed_to else "pinned",
            "changed_to": self.changed_to,
        }


def definition_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the server says about a tool: a field left out of the hash is a field a
    rug pull could change unnoticed (``_meta``, ``icons``, a future key)."""
    return dict(tool)


def definition_hash(definition: Mapping[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _legacy_hash(tool: Mapping[str, Any]) -> str:
    return definition_hash({k: tool[k] for k in LEGACY_KEYS if k in tool})[:LEGACY_HASH_CHARS]


class PinStore:
    """The pins of one data directory (sqlite, WAL: the gateway and the CLI share it)."""

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        path = data_dir / PINS_FILE
        if not create and not path.exists():
            raise BadInputError(f"no pinned tool definitions in {data_dir} ({PINS_FILE})")
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._con = sqlite3.connect(path, timeout=10, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise StoreError(f"{path}: cannot open the tool pins: {e}") from e

    def close(self) -> None:
        self._con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._con.execute("BEGIN IMMEDIATE")
            yield self._con
            self._con.execute("COMMIT")
        except sqlite3.Error as e:
            self._con.execute("ROLLBACK")
            raise StoreError(f"writing the tool pins failed: {e}") from e

    def observe(self, server: str, tools: Iterable[Mapping[str, Any]]) -> dict[str, str]:
        """Pin tools seen for the first time; record changed ones. Returns the changed
        tools (name -> the hash now served), accepted changes excluded."""
        changed: dict[str, str] = {}
        now = time.time()
        with self._write() as con:
            for tool in tools:
                name = tool.get("name")
                if not isinstance(name, str):
                    continue
                definition = definition_of(tool)
                digest = definition_hash(definition)
                text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
                row = con.execute(
                    "SELECT hash FROM tool_pins WHERE server = ? AND tool = ?", (server, name)
                ).fetchone()
                if row is None:
                    con.execute(
                        "INSERT INTO tool_pins VALUES (?, ?, ?, ?, ?)",
                        (server, name, digest, text, now),
                    )
                elif len(row[0]) == LEGACY_HASH_CHARS and row[0] == _legacy_hash(tool):
                    con.execute(
                        "UPDATE tool_pins SET hash = ?, definition = ?"
                        " WHERE server = ? AND tool = ?",
                        (digest, text, server, name),
                    )
                elif row[0] != digest:
                    con.execute(
                        "INSERT OR IGNORE INTO tool_changes VALUES (?, ?, ?, ?, ?)",
                        (server, name, digest, text, now),
                    )
                    changed[name] = digest
        return changed

    def accept(self, server: str, tool: str, reviewed: str) -> str:
        """Pin the changed definition of ``tool`` whose hash starts with ``reviewed`` (the
        one a person looked at: a later change is not accepted by accident); its hash."""
        reviewed = reviewed.strip().lower()
        if len(reviewed) < MIN_ACCEPT_PREFIX or not all(c in "0123456789abcdef" for c in reviewed):
            raise BadInputError(
                f"--hash: give the reviewed definition's hash (at least {MIN_ACCEPT_PREFIX}"
                " hex digits, as `tooltrail tools --format json` shows it in changed_to)"
            )
        with self._write() as con:
            rows = con.execute(
                "SELECT hash, definition FROM tool_changes WHERE server = ? AND tool = ?"
                " ORDER BY seen_at DESC",
                (server, tool),
            ).fetchall()
            if not rows:
                raise BadInputError(f"no changed definition of {tool!r} on server {server!r}")
            matching = [r for r in rows if r[0].startswith(reviewed)]
            if len(matching) != 1:
                latest = rows[0][0]
                raise BadInputError(
                    f"--hash {reviewed}: no changed definition of {tool!r} on {server!r} has"
                    f" that hash (the latest is {latest}; review it with"
                    f" `tooltrail tools show {server} {tool}`)"
                )
            row = matching[0]
            con.execute(
                "UPDATE tool_pins SET hash = ?, definition = ?, pinned_at = ?"
                " WHERE server = ? AND tool = ?",
                (row[0], row[1], time.time(), server, tool),
            )
            con.execute("DELETE FROM tool_changes WHERE server = ? AND tool = ?", (server, tool))
        return str(row[0])

    def show(self, server: str, tool: str) -> dict[str, Any]:
        """The pinned definition of ``tool`` and every unaccepted change (newest first)."""
        try:
            pin = self._con.execute(
                "SELECT hash, definition, pinned_at FROM tool_pins WHERE server = ? AND tool = ?",
                (server, tool),
            ).fetchone()
            changes = self._con.execute(
                "SELECT hash, definition, seen_at FROM tool_changes WHERE server = ? AND tool = ?"
                " ORDER BY seen_at DESC",
                (server, tool),
            ).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"reading the tool pins failed: {e}") from e
        if pin is None:
            raise BadInputError(f"no pinned tool {tool!r} on server {server!r}")
        return {
            "server": server,
            "tool": tool,
            "pinned": {"hash": pin[0], "pinned_at": pin[2], "definition": json.loads(pin[1])},
            "changes": [
                {"hash": h, "seen_at": at, "definition": json.loads(d)} for h, d, at in changes
            ],
        }

    def rows(self, server: str | None = None) -> list[PinRow]:
        sql = (
            "SELECT p.server, p.tool, p.hash, p.pinned_at,"
            " (SELECT c.hash FROM tool_changes c WHERE c.server = p.server AND c.tool = p.tool"
            "  ORDER BY c.seen_at DESC LIMIT 1)"
            " FROM tool_pins p WHERE (? IS NULL OR p.server = ?) ORDER BY p.server, p.tool"
        )
        try:
            found = self._con.execute(sql, (server, server)).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"reading the tool pins failed: {e}") from e
        return [PinRow(*r) for r in found]
