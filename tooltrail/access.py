"""Who may do what: the users and agents of a data directory, in ``<data>/access.sqlite``.

Access control is on for a data directory as soon as one user exists; before that the
directory is in *single-user mode* (every decision surface says so). A principal is a
user (a person: ``viewer``, ``approver``, ``operator`` or ``admin``), an agent (its
own fixed role, ``agent``) or a relay (role ``relay``: the dashboard's signer for OpenID
sign-ins, whose credential authenticates to nothing and only unseals its key). Each holds
one credential:

    ttu_<key id: 16 hex>_<secret: 43 url-safe base64>     users
    tta_<key id: 16 hex>_<secret: 43 url-safe base64>     agents
    ttr_<key id: 16 hex>_<secret: 43 url-safe base64>     relays

The prefix makes a credential recognisable in logs and scrubbable (tooltrail's secret
rules carry it: ``tooltrail_credential``); the key id finds the row, and the whole
credential is verified against a slow hash (scrypt, ``hashlib.scrypt``: OpenSSL's, in
the standard library) compared in constant time. Nothing else of it is stored: reading
the file, or a backup of it, yields no credential that works.

Roles are ordered, each holding the powers of those before it (docs/SECURITY.md, "Access
control"): viewer (read) < approver (decide requests whose rule lists them, by name or
``role:NAME``, or ``*``) < operator (pause, resume, cancel) < admin (users, agents,
retention, delete). Agents send spans, file and poll their own approval requests and read
their own sessions' control state; nothing else.

The later parts of issue 16 attach here: a decider's Ed25519 public key will be a row of
``decider_keys`` naming the principal it belongs to, so a signed decision names a user
this store knows and whose role may take it.

One file past 600 lines on purpose: the credential format, its hashing, the store, the
role checks and the credential a command presents are one trust boundary, reviewed
together; every surface (CLI, collector, dashboard) calls into it and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

from tooltrail import config
from tooltrail._files import write_json_atomically
from tooltrail.errors import AccessDeniedError, BadInputError, NotAuthenticatedError, StoreError
from tooltrail.signing import (
    DECIDER_ROLES,
    RELAY_ROLE,
    DeciderKey,
    EmailGrant,
    new_decider_key,
    sync_trust_file,
)

Kind = Literal["user", "agent", "relay"]
KINDS: Final = ("user", "agent", "relay")
# Ordered: each role may do what the roles before it may.
ROLES: Final = ("viewer", "approver", "operator", "admin")
AGENT_ROLE: Final = "agent"
ROLE_PREFIX: Final = "role:"  # in a rule's `approvers`: every user holding that role or above

Action = Literal["read", "decide", "control", "admin"]
# The least role that may take each action.
_ACTION_ROLE: Final[dict[str, str]] = {
    "read": "viewer",
    "decide": "approver",
    "control": "operator",
    "admin": "admin",
}
ACTION_WORDS: Final = {
    "read": "read the record",
    "decide": "decide approval requests",
    "control": "pause, resume, cancel or complete sessions",
    "admin": "manage users and agents",
}

PREFIXES: Final[dict[str, str]] = {"user": "ttu_", "agent": "tta_", "relay": "ttr_"}
_KEY_ID_HEX: Final = 16
_SECRET_BYTES: Final = 32
_SECRET_CHARS: Final = 43  # url-safe base64 of 32 bytes, unpadded
_CREDENTIAL_RE: Final = re.compile(
    rf"tt[uar]_(?P<key>[0-9a-f]{{{_KEY_ID_HEX}}})_(?P<secret>[A-Za-z0-9_\-]{{{_SECRET_CHARS}}})"
)
# scrypt (RFC 7914) at the cost OWASP and `cryptography` recommend for interactive use:
# N=2^14, r=8, p=1 (16 MiB, tens of milliseconds). Kept with each hash, so the cost can be
# raised later without invalidating credentials already issued.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# An e-mail an OpenID provider vouches for (dashboard sign-in): local@domain, no spaces.
_EMAIL_RE: Final = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})")
# Session keys per `IN (...)` query: well under SQLite's bound-parameter limit.
_IN_CHUNK: Final = 500

_PRINCIPALS: Final = """
CREATE TABLE IF NOT EXISTS principals (
    name            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('user', 'agent', 'relay')),
    role            TEXT NOT NULL
                    CHECK (role IN ('viewer', 'approver', 'operator', 'admin', 'agent', 'relay')),
    disabled        INTEGER NOT NULL DEFAULT 0,
    key_id          TEXT NOT NULL UNIQUE,
    credential_hash TEXT NOT NULL,
    created_at      REAL NOT NULL,
    created_by      TEXT,
    rotated_at      REAL,
    disabled_at     REAL
);
"""
# Every role an e-mail held and when (email_roles is the current one): what a relay's
# signature for that e-mail is verified against, also for decisions made before a change.
_GRANTS: Final = """
CREATE TABLE IF NOT EXISTS email_grants (
    grant_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL,
    granted_at  REAL NOT NULL,
    revoked_at  REAL
);
"""
_SCHEMA: Final = (
    _PRINCIPALS
    + _GRANTS
    + """
CREATE TABLE IF NOT EXISTS session_owners (
    session_id  TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    claimed_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS email_roles (
    email       TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'approver', 'operator', 'admin')),
    created_at  REAL NOT NULL,
    created_by  TEXT
);
-- Deciders' Ed25519 keys (tooltrail.signing): the private half sealed under the user's
-- credential, so only whoever presents that credential can sign with it.
CREATE TABLE IF NOT EXISTS decider_keys (
    key_id      TEXT PRIMARY KEY,
    principal   TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    sealed_key  TEXT NOT NULL,
    added_at    REAL NOT NULL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS access_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    actor       TEXT,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL
);
"""
)
_TABLES: Final = frozenset(
    {"principals", "session_owners", "access_events", "email_roles", "email_grants", "decider_keys"}
)


@dataclass(frozen=True, slots=True)
class Principal:
    """A user or an agent, as stored (never its credential)."""

    name: str
    kind: str
    role: str
    disabled: bool
    created_at: float
    created_by: str | None
    rotated_at: float | None
    disabled_at: float | None

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    @property
    def is_relay(self) -> bool:
        return self.kind == "relay"

    def may(self, action: Action) -> bool:
        """Whether this principal's role allows ``action`` (agents, relays: none of them)."""
        return self.kind == "user" and role_at_least(self.role, _ACTION_ROLE[action])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EmailRole:
    """An e-mail the dashboard's OpenID provider may vouch for, and the role it holds."""

    email: str
    role: str
    created_at: float
    created_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def role_at_least(role: str, least: str) -> bool:
    """Whether ``role`` holds the powers of ``least`` (roles are ordered, ``ROLES``)."""
    if role not in ROLES or least not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(least)


def approver_allowed(approvers: Sequence[str], who: str, role: str | None = None) -> bool:
    """Whether ``who`` (holding ``role``; None in single-user mode) is one of a rule's
    ``approvers``: ``*``, their name, or ``role:NAME`` for their role or one below it."""
    for entry in approvers:
        if entry in ("*", who):
            return True
        if (
            role is not None
            and entry.startswith(ROLE_PREFIX)
            and role_at_least(role, entry[len(ROLE_PREFIX) :])
        ):
            return True
    return False


def role_may(role: str, action: Action) -> bool:
    """Whether a user holding ``role`` may take ``action`` (the dashboard's OIDC users hold
    a role through their e-mail, not a principal)."""
    return role_at_least(role, _ACTION_ROLE[action])


def check_email(email: str) -> str:
    """An e-mail as mapped and compared: trimmed and lower-cased (providers differ in case)."""
    value = email.strip().lower()
    if not _EMAIL_RE.fullmatch(value) or ".." in value:
        raise BadInputError(f"e-mail {email!r}: expected local-part@domain")
    return value


def is_openid_identity(name: str) -> bool:
    """Whether ``name`` can be an identity a relay vouches for: an e-mail exactly as
    ``check_email`` stores it (lower-case, trimmed). Local names may hold '@' too; that
    they are not also mapped e-mails is kept by ``add`` and ``map_email``, and the verifier
    refuses any name that holds a key."""
    try:
        return check_email(name) == name
    except BadInputError:
        return False


def check_name(name: str, what: str = "name") -> str:
    """A principal's name: letters, digits, ``.``, ``_``, ``@``, ``-`` (at most 64), and
    nothing the secret scrubber would change (it is stored and compared as it is)."""
    from tooltrail.redact import Redactor

    if not _NAME_RE.fullmatch(name):
        raise BadInputError(
            f"{what} {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a"
            " letter or digit"
        )
    if Redactor().scrub_text(name)[0] != name:
        raise BadInputError(f"{what} {name!r} looks like a credential; choose another")
    return name


def new_credential(kind: Kind) -> tuple[str, str]:
    """A fresh credential and its key id."""
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=").decode()
    return f"{PREFIXES[kind]}{key_id}_{secret}", key_id


def parse_credential(credential: str) -> tuple[str, str]:
    """``(kind, key id)`` of a well-formed credential; NotAuthenticatedError otherwise
    (the message never repeats what was given)."""
    match = _CREDENTIAL_RE.fullmatch(credential.strip())
    if match is None:
        raise NotAuthenticatedError(
            "the credential is not a tooltrail credential (ttu_... for a user, tta_... for"
            " an agent, ttr_... for a relay)"
        )
    prefix = credential.strip()[:4]
    kind = next(k for k, p in PREFIXES.items() if p == prefix)
    return kind, match["key"]


def hash_credential(credential: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of a credential."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(
        credential.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_HASH_BYTES
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_credential(credential: str, stored: str) -> bool:
    """Whether ``credential`` hashes to ``stored`` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(
            credential.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def access_path(data_dir: str | os.PathLike[str] | None) -> Path:
    return config.data_dir(data_dir) / config.ACCESS_FILE


def enabled(data_dir: str | os.PathLike[str] | None) -> bool:
    """Whether access control is on for the data directory: one user exists (disabled or
    not). A store that exists but cannot be read raises StoreError: never read as "off"."""
    path = access_path(data_dir)
    if not path.exists():
        return False
    with AccessStore(data_dir) as store:
        return store.has_users()


SINGLE_USER_NOTICE: Final = (
    "single-user mode: no users in {root}, so names are not checked"
    " (`tooltrail users add NAME --role admin` turns access control on)"
)


def single_user_notice(root: Path) -> str:
    return SINGLE_USER_NOTICE.format(root=root)


def _principal(row: sqlite3.Row) -> Principal:
    return Principal(
        name=row["name"],
        kind=row["kind"],
        role=row["role"],
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        rotated_at=row["rotated_at"],
        disabled_at=row["disabled_at"],
    )


def _create_private(path: Path) -> None:
    """Create the store's file owner-only (0600) before SQLite opens it: SQLite gives its
    journal the database file's permissions, so nothing is ever readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class AccessStore:
    """Users, agents and agents' sessions of one data directory (``access.sqlite``).

    Writes are short ``BEGIN IMMEDIATE`` transactions; the file is owner-only (0600). One
    instance per thread.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = access_path(data_dir)
        # Why the pinned trust root could not follow the last change (None: it did).
        self.trust_warning: str | None = None
        try:
            _create_private(self.path)
            self._con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open the access store {self.path}: {e}") from e
        self._con.row_factory = sqlite3.Row
        try:
            names = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master")}
            if "principals" in names:  # made by an earlier version: bring it up to date
                _upgrade(self._con, names)
            if not names >= _TABLES:
                self._con.executescript(_SCHEMA)
        except sqlite3.Error as e:
            self._con.close()
            raise StoreError(f"cannot open the access store {self.path}: {e}") from e

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> AccessStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"access store {self.path} is unavailable: {e}") from e
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._con.execute(sql, params))
        except sqlite3.Error as e:
            raise StoreError(f"access store {self.path}: {e}") from e

    # -- reads ----------------------------------------------------------------------------

    def has_users(self) -> bool:
        return bool(self._rows("SELECT 1 FROM principals WHERE kind = 'user' LIMIT 1"))

    def principals(self, kind: Kind | None = None) -> list[Principal]:
        """The principals of ``kind`` (``user`` lists the relays too: ``tooltrail users``
        manages both); all of them when None."""
        if kind is None:
            rows = self._rows("SELECT * FROM principals ORDER BY kind DESC, name")
        else:
            kinds = _KIND_MATCHES[kind]
            marks = ",".join("?" * len(kinds))
            rows = self._rows(
                f"SELECT * FROM principals WHERE kind IN ({marks}) ORDER BY name",  # noqa: S608 - marks only
                kinds,
            )
        return [_principal(r) for r in rows]

    def get(self, name: str, kind: Kind | None = None) -> Principal:
        """The principal named ``name``; with ``kind``, only of that kind (``user`` takes
        a relay too, so ``users disable`` and ``users rotate`` manage relays)."""
        rows = self._rows("SELECT * FROM principals WHERE name = ?", (name,))
        if not rows or (kind is not None and rows[0]["kind"] not in _KIND_MATCHES[kind]):
            raise BadInputError(f"no {kind or 'user or agent'} named {name!r} in {self.path}")
        return _principal(rows[0])

    def row_by_key(self, key_id: str) -> tuple[Principal, str] | None:
        """The principal holding the credential with this key id, and the stored hash."""
        rows = self._rows("SELECT * FROM principals WHERE key_id = ?", (key_id,))
        return None if not rows else (_principal(rows[0]), str(rows[0]["credential_hash"]))

    def authenticate(self, credential: str) -> Principal:
        """The enabled principal whose credential this is; NotAuthenticatedError otherwise:
        the same words for unknown, rotated and mistyped; "disabled" only to whoever holds
        the disabled principal's valid credential."""
        return check_found(credential, self.row_by_key(parse_credential(credential)[1]))

    # -- writes ---------------------------------------------------------------------------

    def add(
        self, name: str, kind: Kind, role: str, *, by: Principal | None
    ) -> tuple[Principal, str]:
        """Add a user or an agent; returns it and its credential (shown once, never kept).

        The first user of a directory needs no credential (``by`` None) and must be an
        admin; after that ``by`` must be an enabled admin."""
        check_name(name)
        if kind == "agent":
            role = AGENT_ROLE
        elif kind == "relay":
            role = RELAY_ROLE
        elif role not in ROLES:
            raise BadInputError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        credential, key_id = new_credential(kind)
        hashed = hash_credential(credential)  # slow: before taking the write lock
        now = time.time()
        with self._tx() as con:
            first = not con.execute("SELECT 1 FROM principals WHERE kind = 'user'").fetchone()
            if first:
                if kind != "user" or role != "admin":
                    raise BadInputError(
                        f"{self.path.parent} has no users yet: the first must be an admin"
                        " (`tooltrail users add NAME --role admin`), who can then add the"
                        " others" + (" and the agents" if kind == "agent" else "")
                    )
            else:
                _require_admin(by)
            if con.execute("SELECT 1 FROM principals WHERE name = ?", (name,)).fetchone():
                raise BadInputError(f"a user or agent named {name!r} exists already")
            if con.execute("SELECT 1 FROM email_roles WHERE email = ?", (name.lower(),)).fetchone():
                # Local names and OpenID e-mails stay apart: a relay vouches for e-mails
                # only, and must never be able to sign as a local user.
                raise BadInputError(
                    f"{name!r} is an e-mail mapped for OpenID sign-in; choose another name"
                    " (or `tooltrail users unmap-email` it first)"
                )
            con.execute(
                "INSERT INTO principals (name, kind, role, disabled, key_id, credential_hash,"
                " created_at, created_by) VALUES (?,?,?,0,?,?,?,?)",
                (name, kind, role, key_id, hashed, now, None if by is None else by.name),
            )
            _new_decider_key(con, name, role, credential, now)
            _event(con, now, by, f"add {kind} ({role})", name)
        self.trust_warning = _sync_trust_root(self.path.parent)
        if by is None:  # the first user: access control starts with a control store
            _ensure_control_store(self.path.parent)
        return self.get(name), credential

    def disable(self, name: str, kind: Kind, *, by: Principal | None) -> Principal:
        """Disable a user or agent: its credential stops working at once. The last enabled
        admin cannot be disabled (nobody could manage the directory any more)."""
        now = time.time()
        with self._tx() as con:
            _require_admin(by)
            target = self.get(name, kind)
            if target.role == "admin" and not target.disabled:
                admins = con.execute(
                    "SELECT count(*) FROM principals WHERE role = 'admin' AND disabled = 0"
                ).fetchone()[0]
                if admins <= 1:
                    raise BadInputError(
                        f"{name!r} is the last enabled admin: add another admin first"
                    )
            con.execute(
                "UPDATE principals SET disabled = 1, disabled_at = ? WHERE name = ?", (now, name)
            )
            _revoke_keys(con, name, now)
            _event(con, now, by, f"disable {kind}", name)
        self.trust_warning = _sync_trust_root(self.path.parent)
        return self.get(name)

    def rotate(self, name: str, kind: Kind, *, by: Principal | None) -> tuple[Principal, str]:
        """Issue a new credential (the old one stops working at once). An admin may rotate
        anyone's; a user may rotate their own."""
        if by is None or not (by.name == name or by.may("admin")):
            _require_admin(by)
        target = self.get(name, kind)
        credential, key_id = new_credential(target.kind)  # type: ignore[arg-type]
        hashed = hash_credential(credential)
        now = time.time()
        with self._tx() as con:
            con.execute(
                "UPDATE principals SET key_id = ?, credential_hash = ?, rotated_at = ?"
                " WHERE name = ?",
                (key_id, hashed, now, name),
            )
            _revoke_keys(con, name, now)
            _new_decider_key(con, name, target.role, credential, now)
            _event(con, now, by, f"rotate {kind}", name)
        self.trust_warning = _sync_trust_root(self.path.parent)
        return self.get(name), credential

    def claim_session(self, agent: str, session_id: str) -> bool:
        """Bind a session to the agent that first uses it (files a request or reads its
        control state); True when the session is this agent's (now or before). A read
        first: agents ask about their session every second, and only the first ask writes."""
        rows = self._rows("SELECT agent FROM session_owners WHERE session_id = ?", (session_id,))
        if rows:
            return bool(rows[0][0] == agent)
        with self._tx() as con:
            con.execute(
                "INSERT INTO session_owners (session_id, agent, claimed_at) VALUES (?,?,?)"
                " ON CONFLICT (session_id) DO NOTHING",
                (session_id, agent, time.time()),
            )
            row = con.execute(
                "SELECT agent FROM session_owners WHERE session_id = ?", (session_id,)
            ).fetchone()
        return row is not None and row[0] == agent

    def session_owners(self, keys: Sequence[str]) -> dict[str, str]:
        """The agent holding each of ``keys`` (session keys) that one holds: one read for a
        whole batch of spans (the collector's landing, :mod:`tooltrail.collector.owners`)."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(keys))
        for at in range(0, len(unique), _IN_CHUNK):
            part = unique[at : at + _IN_CHUNK]
            marks = ",".join("?" * len(part))
            rows = self._rows(
                f"SELECT session_id, agent FROM session_owners WHERE session_id IN ({marks})",  # noqa: S608 - placeholders only
                part,
            )
            found.update((str(r[0]), str(r[1])) for r in rows)
        return found

    def claim_sessions(self, claims: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Bind each ``(session key, agent)`` unless the session is held already (the
        first claim of a key wins, in order); the holder of every key claimed, after."""
        now = time.time()
        with self._tx() as con:
            con.executemany(
                "INSERT INTO session_owners (session_id, agent, claimed_at) VALUES (?,?,?)"
                " ON CONFLICT (session_id) DO NOTHING",
                [(key, agent, now) for key, agent in claims],
            )
        return self.session_owners([key for key, _ in claims])

    # -- e-mails of people who sign in to the dashboard through an OpenID provider --------

    def map_email(self, email: str, role: str, *, by: Principal | None) -> EmailRole:
        """Give whoever the dashboard's OpenID provider vouches for as ``email`` a role
        (replacing an earlier one). Needs an enabled admin."""
        email = check_email(email)
        if role not in ROLES:
            raise BadInputError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        now = time.time()
        with self._tx() as con:
            _require_admin(by)
            if con.execute("SELECT 1 FROM principals WHERE lower(name) = ?", (email,)).fetchone():
                raise BadInputError(
                    f"{email!r} is the name of a local user, agent or relay: an e-mail"
                    " signed in through OpenID must not share it (a relay signs for e-mails"
                    " only, never as a local user)"
                )
            con.execute(
                "INSERT INTO email_roles (email, role, created_at, created_by) VALUES (?,?,?,?)"
                " ON CONFLICT (email) DO UPDATE SET role = excluded.role,"
                " created_at = excluded.created_at, created_by = excluded.created_by",
                (email, role, now, None if by is None else by.name),
            )
            _end_grant(con, email, now)
            con.execute(
                "INSERT INTO email_grants (email, role, granted_at) VALUES (?,?,?)",
                (email, role, now),
            )
            _event(con, now, by, f"map e-mail ({role})", email)
        self.trust_warning = _sync_trust_root(self.path.parent)
        found = self.email_role(email)
        assert found is not None
        return found

    def unmap_email(self, email: str, *, by: Principal | None) -> None:
        """Remove an e-mail's role: its next dashboard run is signed out."""
        email = check_email(email)
        now = time.time()
        with self._tx() as con:
            _require_admin(by)
            if not con.execute("DELETE FROM email_roles WHERE email = ?", (email,)).rowcount:
                raise BadInputError(f"no e-mail {email!r} is mapped in {self.path}")
            _end_grant(con, email, now)
            _event(con, now, by, "unmap e-mail", email)
        self.trust_warning = _sync_trust_root(self.path.parent)

    def email_role(self, email: str) -> EmailRole | None:
        """The role mapped to ``email`` (compared lower-cased), if any."""
        try:
            email = check_email(email)
        except BadInputError:
            return None
        rows = self._rows("SELECT * FROM email_roles WHERE email = ?", (email,))
        return EmailRole(**dict(rows[0])) if rows else None

    def email_roles(self) -> list[EmailRole]:
        return [
            EmailRole(**dict(r)) for r in self._rows("SELECT * FROM email_roles ORDER BY email")
        ]

    def email_grants(self) -> list[EmailGrant]:
        """Every role every e-mail held, and when (the trust root carries them)."""
        if not self._rows("SELECT 1 FROM sqlite_master WHERE name = 'email_grants'"):
            return []  # an old store this process could not upgrade (read-only): none
        rows = self._rows(
            "SELECT email, role, granted_at, revoked_at FROM email_grants ORDER BY grant_id"
        )
        return [EmailGrant(**dict(r)) for r in rows]

    def decider_keys(self) -> list[DeciderKey]:
        """Every decider key (revoked ones too, with when), with its holder's role."""
        rows = self._rows(
            "SELECT k.key_id, k.principal, p.role, k.public_key, k.added_at,"
            " coalesce(k.revoked_at, p.disabled_at) AS revoked_at"
            " FROM decider_keys k JOIN principals p ON p.name = k.principal ORDER BY k.added_at"
        )
        return [DeciderKey(**dict(r)) for r in rows]

    def sealed_key(self, name: str) -> tuple[str, str] | None:
        """The current (unrevoked) key id of ``name`` and its sealed private key."""
        rows = self._rows(
            "SELECT key_id, sealed_key FROM decider_keys WHERE principal = ?"
            " AND revoked_at IS NULL ORDER BY added_at DESC LIMIT 1",
            (name,),
        )
        return None if not rows else (str(rows[0][0]), str(rows[0][1]))

    def events(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows("SELECT * FROM access_events ORDER BY event_id")]


def check_found(credential: str, found: tuple[Principal, str] | None) -> Principal:
    """The principal when ``credential`` verifies against the row found by its key id."""
    if found is None or not verify_credential(credential.strip(), found[1]):
        raise NotAuthenticatedError(
            "the credential is not valid (unknown, rotated since, or mistyped)"
        )
    principal = found[0]
    if principal.disabled:
        raise NotAuthenticatedError(f"{principal.kind} {principal.name!r} is disabled")
    if principal.is_relay:
        # Checked after the hash: only the relay's real holder learns what it is.
        raise NotAuthenticatedError(
            f"that is relay {principal.name!r}'s credential: it authenticates to nothing"
            " (no commands, no HTTP routes, no sign-in); it only lets the dashboard sign"
            " the decisions of people signed in through OpenID"
        )
    return principal


def check_relay(store: AccessStore, credential: str) -> Principal:
    """The enabled relay whose credential this is; NotAuthenticatedError otherwise."""
    try:
        kind, key_id = parse_credential(credential)
    except NotAuthenticatedError:
        kind, key_id = "", ""
    found = store.row_by_key(key_id) if kind == "relay" else None
    if (
        found is None
        or not found[0].is_relay
        or not verify_credential(credential.strip(), found[1])
    ):
        raise NotAuthenticatedError(
            "the relay credential is not valid (unknown, rotated since, or mistyped): an"
            " admin issues one with `tooltrail users add-relay NAME`"
        )
    if found[0].disabled:
        raise NotAuthenticatedError(f"relay {found[0].name!r} is disabled")
    return found[0]


def _new_decider_key(
    con: sqlite3.Connection, name: str, role: str, credential: str, now: float
) -> None:
    """A decider (approver, operator, admin) or a relay gets a key pair sealed under its
    credential."""
    if role not in DECIDER_ROLES and role != RELAY_ROLE:
        return
    key = new_decider_key(credential)
    con.execute(
        "INSERT INTO decider_keys (key_id, principal, public_key, sealed_key, added_at)"
        " VALUES (?,?,?,?,?)",
        (key.key_id, name, key.public_key, key.sealed, now),
    )


def _end_grant(con: sqlite3.Connection, email: str, now: float) -> None:
    con.execute(
        "UPDATE email_grants SET revoked_at = ? WHERE email = ? AND revoked_at IS NULL",
        (now, email),
    )


def _upgrade(con: sqlite3.Connection, names: set[str]) -> None:
    """A store from before relays: ``principals``' CHECKs refuse kind and role ``relay``
    (SQLite cannot alter a CHECK: the table is rebuilt, rows kept), and there are no
    ``email_grants`` (each mapped e-mail's role is held since it was mapped). One write
    transaction, checked again under its lock (another process may have done it). A
    reader that cannot write leaves it as it is: relays cannot exist there yet."""
    ddl = con.execute("SELECT sql FROM sqlite_master WHERE name = 'principals'").fetchone()
    if "email_grants" in names and "'relay'" in str(ddl[0]):
        return
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if "readonly" in str(e) or "read-only" in str(e):
            return
        raise
    try:
        ddl = con.execute("SELECT sql FROM sqlite_master WHERE name = 'principals'").fetchone()
        if "'relay'" not in str(ddl[0]):
            con.execute("ALTER TABLE principals RENAME TO principals_before_relays")
            con.execute(_PRINCIPALS)
            con.execute("INSERT INTO principals SELECT * FROM principals_before_relays")
            con.execute("DROP TABLE principals_before_relays")
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'email_grants'").fetchone():
            con.execute(_GRANTS)
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'email_roles'").fetchone():
                con.execute(
                    "INSERT INTO email_grants (email, role, granted_at)"
                    " SELECT email, role, created_at FROM email_roles"
                )
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _revoke_keys(con: sqlite3.Connection, name: str, now: float) -> None:
    con.execute(
        "UPDATE decider_keys SET revoked_at = ? WHERE principal = ? AND revoked_at IS NULL",
        (now, name),
    )


def _sync_trust_root(root: Path) -> str | None:
    """Keep ``$TOOLTRAIL_TRUST_ROOT`` (when set) in step with the keys just changed; why it
    could not be, or None. Not raised: the change is committed, and the credential it made
    must still be shown (it is shown only once)."""
    try:
        sync_trust_file(root)
    except (OSError, StoreError) as e:
        return (
            f"the keys changed but the trust root ${config.ENV_TRUST_ROOT} could not be"
            f" written ({e}): until `tooltrail users export-keys PATH` is run by its owner,"
            " decisions signed with the new keys do not verify there (fail closed)"
        )
    return None


def _ensure_control_store(root: Path) -> None:
    """Create ``control.sqlite`` when access control starts, so that from then on a
    missing control store reads as a deletion (``tooltrail verify``), not as "no decision
    made yet"."""
    from tooltrail.control import ControlStore

    ControlStore(root).close()


# Which stored kinds a kind names: `tooltrail users` manages the relays too.
_KIND_MATCHES: Final[dict[str, tuple[str, ...]]] = {
    "user": ("user", "relay"),
    "agent": ("agent",),
    "relay": ("relay",),
}


def _require_admin(by: Principal | None) -> None:
    if by is None:
        raise NotAuthenticatedError(
            "managing users and agents needs an admin's credential (TOOLTRAIL_TOKEN, or"
            " `tooltrail login`)"
        )
    if not by.may("admin"):
        raise AccessDeniedError(f"{by.kind} {by.name!r} ({by.role}) may not manage users")


def _event(
    con: sqlite3.Connection, at: float, by: Principal | None, action: str, target: str
) -> None:
    con.execute(
        "INSERT INTO access_events (at, actor, action, target) VALUES (?,?,?,?)",
        (at, None if by is None else by.name, action, target),
    )


def require(principal: Principal, action: Action) -> Principal:
    """``principal`` when its role may take ``action``; AccessDeniedError otherwise."""
    if not principal.may(action):
        who = (
            f"agent {principal.name!r}"
            if principal.is_agent
            else (f"{principal.name!r} ({principal.role})")
        )
        raise AccessDeniedError(f"{who} may not {ACTION_WORDS[action]}")
    return principal


def check_acting_as(principal: Principal, claimed: str | None, where: str) -> None:
    """Refuse a claimed name (``--by``, a body's ``by``) that is not the credential's."""
    if claimed is not None and claimed != principal.name:
        raise AccessDeniedError(
            f"{where} {claimed!r} differs from the credential's user {principal.name!r}:"
            " with access control on, a decision is recorded as whoever's credential made it"
        )


class CredentialCache:
    """Verified credentials of a long-running process (the collector): scrypt runs once
    per credential, not per request. Each entry remembers the stored hash it verified
    against; every use re-reads the row by key id (one indexed read), so a disable or a
    rotation takes effect on the next request. Credentials are kept only as an HMAC under
    a key random per process."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._key = secrets.token_bytes(32)
        self._max = max_entries
        self._seen: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def authenticate(self, store: AccessStore, credential: str) -> Principal:
        credential = credential.strip()
        _, key_id = parse_credential(credential)
        found = store.row_by_key(key_id)
        mark = hmac.new(self._key, credential.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._seen.get(key_id)
        cached = (
            found is not None
            and known is not None
            and hmac.compare_digest(known[0], mark)
            and known[1] == found[1]
        )
        if cached and found is not None:
            if found[0].disabled:
                raise NotAuthenticatedError(f"{found[0].kind} {found[0].name!r} is disabled")
            return found[0]
        principal = check_found(credential, found)
        assert found is not None
        with self._lock:
            if len(self._seen) >= self._max:
                self._seen.clear()
            self._seen[key_id] = (mark, found[1])
        return principal


# -- the credential a command-line user presents --------------------------------------------

CREDENTIALS_FILE: Final = "credentials.json"


def credentials_path() -> Path:
    return config.config_dir() / CREDENTIALS_FILE


def _data_key(root: Path) -> str:
    return str(root.resolve())


def saved_credential(root: Path) -> str | None:
    """The credential ``tooltrail login`` saved for this data directory, if any."""
    path = credentials_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the saved credentials {path}: {e}") from e
    value = doc.get(_data_key(root)) if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def save_credential(root: Path, credential: str) -> Path:
    """Keep ``credential`` for this data directory in the user's config dir, owner-only
    (0600), written whole (a temporary file renamed over the old one)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            doc = {str(k): str(v) for k, v in loaded.items()}
    doc[_data_key(root)] = credential
    return write_json_atomically(path, doc, 0o600)


def presented_credential(root: Path) -> str | None:
    """``$TOOLTRAIL_TOKEN`` when set, else the one ``tooltrail login`` saved for ``root``."""
    return os.environ.get(config.ENV_TOKEN) or saved_credential(root)


def identify(root: Path) -> Principal | None:
    """Who the command line acts as in ``root``: None in single-user mode; the principal
    of the presented credential otherwise (NotAuthenticatedError without a valid one)."""
    if not enabled(root):
        return None
    credential = presented_credential(root)
    if not credential:
        raise NotAuthenticatedError(
            f"access control is on for {root}: set {config.ENV_TOKEN} to your credential,"
            " or run `tooltrail login`"
        )
    with AccessStore(root) as store:
        return store.authenticate(credential)


__all__ = [
    "AGENT_ROLE",
    "KINDS",
    "PREFIXES",
    "RELAY_ROLE",
    "ROLES",
    "AccessStore",
    "CredentialCache",
    "EmailRole",
    "Principal",
    "approver_allowed",
    "check_acting_as",
    "check_email",
    "check_relay",
    "enabled",
    "identify",
    "is_openid_identity",
    "require",
    "role_at_least",
    "role_may",
]
