"""The control ledger: an append-only hash chain of everything that decides a held call.

``control.sqlite``'s tables (``approvals``, ``session_controls``, ``control_events``) are
the store's working state: quick to read, and editable by anyone who can write the file.
The ledger (table ``control_ledger``, same file, written in the same transaction as the
state it records) is what the state is checked against:

* one entry per filed request (``request``), decision (``decision``: approve or deny, by
  a person), system outcome (``system``: expired, abandoned) and session-control change
  (``control``: pause, resume, cancel), and an operator's completion of a session
  (``completion``: ``tooltrail complete``; a record, not a state change);
* each entry's body is RFC 8785 canonical JSON holding its ``seq`` (1, 2, 3 ... with no
  gaps) and ``prev``, the SHA-256 of the entry before it: editing or deleting any entry
  breaks the chain from there on;
* decisions, control changes and completions are signed by the decider's Ed25519 key
  *over the body*, so a signature also covers the chain head it extended (a signed
  head): a deleted cancel followed by any signed entry no longer verifies. A deleted
  last entry leaves a gap against SQLite's own ``sqlite_sequence`` counter for the
  table (``check_chain``).

Checking a record = its state row agrees with its ledger entries, and the entries verify
(docs/SECURITY.md, "Tamper detection").
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from tooltrail.errors import TamperedError
from tooltrail.signing import RELAY_ROLE, Signer, TrustRoot, canonical

if TYPE_CHECKING:
    from tooltrail.access import Action

EntryKind = Literal["request", "decision", "system", "control", "completion"]
GENESIS: Final = "genesis"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS control_ledger (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    ref         TEXT NOT NULL,
    body        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    key_id      TEXT,
    signature   TEXT
);
CREATE INDEX IF NOT EXISTS control_ledger_ref ON control_ledger (ref, seq);
"""
TABLE: Final = "control_ledger"
OBJECTS: Final = frozenset({"control_ledger", "control_ledger_ref"})


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    kind: str
    ref: str
    body: str
    hash: str
    key_id: str | None
    signature: str | None

    def payload(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        if not isinstance(doc, dict):
            raise TamperedError(f"ledger entry {self.seq} is not an object")
        return doc

    @property
    def signed(self) -> bool:
        return bool(self.key_id and self.signature)


@dataclass(frozen=True, slots=True)
class Broken:
    """One record that does not verify: what (``request``, ``session``, ``ledger``),
    which (an approval id, a session id, a ledger seq) and why."""

    record: str
    ref: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        return {"record": self.record, "ref": self.ref, "problem": self.problem}


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), row[5], row[6])


_COLUMNS: Final = "seq, kind, ref, body, hash, key_id, signature"


def append(
    con: sqlite3.Connection,
    kind: EntryKind,
    ref: str,
    payload: Mapping[str, Any],
    signer: Signer | None = None,
) -> Entry:
    """Append one entry inside the caller's write transaction (which serializes appends)."""
    last = con.execute(f"SELECT seq, hash FROM {TABLE} ORDER BY seq DESC LIMIT 1").fetchone()  # noqa: S608 - fixed name
    counter = con.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone()
    seq = max(int(counter[0]) if counter else 0, int(last[0]) if last else 0) + 1
    body = canonical({**payload, "seq": seq, "prev": str(last[1]) if last else GENESIS}).decode()
    entry_hash = hashlib.sha256(body.encode()).hexdigest()
    key_id = signature = None
    if signer is not None:
        key_id, signature = signer.key_id, signer.sign(body.encode())
    con.execute(
        f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",  # noqa: S608 - fixed name
        (seq, kind, ref, body, entry_hash, key_id, signature),
    )
    return Entry(seq, kind, ref, body, entry_hash, key_id, signature)


def entries_for(con: sqlite3.Connection, ref: str) -> list[Entry]:
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM {TABLE} WHERE ref = ? ORDER BY seq",  # noqa: S608 - fixed name
        (ref,),
    )
    return [_entry(r) for r in rows]


def all_entries(con: sqlite3.Connection) -> list[Entry]:
    rows = con.execute(f"SELECT {_COLUMNS} FROM {TABLE} ORDER BY seq")  # noqa: S608 - fixed name
    return [_entry(r) for r in rows]


def head(con: sqlite3.Connection) -> tuple[int, int, int]:
    """(entries, highest seq, SQLite's counter): equal when nothing was deleted. One cheap
    look, for callers that check on every tool call."""
    # One statement, one snapshot: two reads in autocommit saw a writer's commit between
    # them (counter ahead of the entries), a false "entries were deleted" under load.
    count, top, counter = con.execute(
        f"SELECT count(*), coalesce(max(seq), 0),"  # noqa: S608 - fixed name
        " (SELECT seq FROM sqlite_sequence WHERE name = ?)"
        f" FROM {TABLE}",
        (TABLE,),
    ).fetchone()
    return int(count), int(top), int(counter) if counter is not None else 0


def check_head(con: sqlite3.Connection) -> None:
    """TamperedError when entries were deleted (a gap, or a cut-off tail)."""
    count, top, counter = head(con)
    if count != top or top != counter:
        raise TamperedError(
            f"the control ledger lost entries ({count} entries, highest seq {top}, SQLite's"
            f" counter {counter}): a record was deleted from control.sqlite"
        )


def check_chain(entries: Sequence[Entry], counter: int) -> list[Broken]:
    """Every break in the chain: a body that does not hash to its hash, a missing seq, a
    ``prev`` that is not the previous entry's hash, or a tail cut below ``counter``."""
    broken: list[Broken] = []
    prev = GENESIS
    expected = 1
    for e in entries:
        where = f"seq {e.seq}"
        if hashlib.sha256(e.body.encode()).hexdigest() != e.hash:
            broken.append(Broken("ledger", where, "its body was edited (hash mismatch)"))
        try:
            doc = e.payload()
        except (ValueError, TamperedError):
            broken.append(Broken("ledger", where, "its body is not JSON"))
            doc = {}
        if e.seq != expected:
            broken.append(Broken("ledger", where, f"entries {expected}..{e.seq - 1} were deleted"))
        if doc.get("seq") != e.seq or doc.get("prev") != prev:
            broken.append(
                Broken("ledger", where, "it does not follow the entry before it (chain broken)")
            )
        prev, expected = e.hash, e.seq + 1
    if counter >= expected:
        broken.append(
            Broken("ledger", f"seq {expected}", f"entries {expected}..{counter} were deleted")
        )
    return broken


def verify_signed(entry: Entry, trust: TrustRoot) -> str | None:
    """Why a decision or control entry does not verify against ``trust`` (None: it does).
    In single-user mode (``trust.required`` false) nothing is signed and nothing is checked.
    The signer must be the decider the body names, holding the role it names, and its key
    must not have been revoked before the entry's time; or a relay key vouching for an
    OpenID identity (``relay_problem``)."""
    if not trust.required:
        return None
    try:
        key = trust.verify(entry.body, entry.key_id, entry.signature)
        doc = entry.payload()
    except TamperedError as e:
        return str(e)
    at = doc.get("at")
    if key.revoked_at is not None and (not isinstance(at, int | float) or at >= key.revoked_at):
        return f"key {key.key_id} of {key.principal!r} was revoked before it"
    if key.role == RELAY_ROLE:
        action: Action = "decide" if entry.kind == "decision" else "control"
        return relay_problem(trust, key.principal, doc, action)
    if doc.get("relay") is not None:
        return f"it claims relay {doc.get('relay')!r} but was signed by {key.principal!r}"
    if doc.get("decider") != key.principal:
        return f"it names {doc.get('decider')!r} but was signed by {key.principal!r}"
    if doc.get("role") != key.role:
        return f"it claims role {doc.get('role')!r}; {key.principal!r} holds {key.role!r}"
    return None


def relay_problem(
    trust: TrustRoot, relay: str, doc: Mapping[str, Any], action: Action
) -> str | None:
    """Why relay ``relay`` may not vouch for the decider of ``doc`` (None: it may).

    A relay signs only for an OpenID identity: an e-mail (as ``map-email`` stores it) that
    no key of the trust root belongs to (so never as a local decider, nor as a relay),
    holding at the entry's time (``at``) a role grant in the trust root for exactly the
    role the entry claims, and that role must allow ``action``. The rule's approvers are
    then checked against that e-mail and role as for anyone."""
    from tooltrail.access import ACTION_WORDS, is_openid_identity, role_may

    decider, role, at = doc.get("decider"), doc.get("role"), doc.get("at")
    if doc.get("relay") != relay:
        return f"it names relay {doc.get('relay')!r} but was signed by relay {relay!r}"
    if not isinstance(decider, str) or not is_openid_identity(decider):
        return f"relay {relay!r} vouches only for OpenID e-mails, not {decider!r}"
    if any(k.principal == decider for k in trust.keys.values()):
        return f"relay {relay!r} cannot sign as {decider!r}, who holds keys of their own"
    if not isinstance(role, str) or not role_may(role, action):
        return f"{decider!r} as {role!r} may not {ACTION_WORDS[action]}"
    if not any(g.email == decider and g.role == role and g.held_at(at) for g in trust.grants):
        return (
            f"{decider!r} was not mapped to role {role!r} at that time (`tooltrail users"
            f" map-email`), so relay {relay!r} cannot vouch for it"
        )
    return None


__all__ = [
    "SCHEMA",
    "Broken",
    "Entry",
    "append",
    "check_chain",
    "check_head",
    "entries_for",
    "head",
    "relay_problem",
    "verify_signed",
]
