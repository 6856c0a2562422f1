"""Pinned tool definitions: what each server's tools looked like when first seen.

A server can change a tool after the user trusted it (a "rug pull"), or describe it so as to
steer the model (tool poisoning). The gateway keeps, per server and tool, the definition it
first saw (name, title, description, input and output schema, annotations) and its hash, in
``<data>/tool-pins.sqlite``. A later ``tools/list`` that shows another definition records a
change; the tool stays *changed* until someone accepts it (``tooltrail tools accept SERVER
TOOL``), which pins the new definition. What a changed tool's calls get is the gateway's
``--pin-tools`` (deny, approve, warn).
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
# The parts of a tool definition a model reads or a call depends on.
DEFINITION_KEYS: Final = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
)

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
    return {k: tool[k] for k in DEFINITION_KEYS if k in tool}


def definition_hash(definition: Mapping[str, Any]) -> str:
    text = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
                elif row[0] != digest:
                    con.execute(
                        "INSERT OR IGNORE INTO tool_changes VALUES (?, ?, ?, ?, ?)",
                        (server, name, digest, text, now),
                    )
                    changed[name] = digest
        return changed

    def accept(self, server: str, tool: str) -> str:
        """Pin the latest changed definition of ``tool``; its hash."""
        with self._write() as con:
            row = con.execute(
                "SELECT hash, definition FROM tool_changes WHERE server = ? AND tool = ?"
                " ORDER BY seen_at DESC LIMIT 1",
                (server, tool),
            ).fetchone()
            if row is None:
                raise BadInputError(f"no changed definition of {tool!r} on server {server!r}")
            con.execute(
                "UPDATE tool_pins SET hash = ?, definition = ?, pinned_at = ?"
                " WHERE server = ? AND tool = ?",
                (row[0], row[1], time.time(), server, tool),
            )
            con.execute("DELETE FROM tool_changes WHERE server = ? AND tool = ?", (server, tool))
        return str(row[0])

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
