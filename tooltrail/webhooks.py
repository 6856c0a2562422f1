"""Signed webhooks: notifications of what needs a person, delivered off the agents' path.

Hooks live in ``<data>/webhooks.sqlite`` (owner-only: it holds the signing secrets) with
every delivery (status, attempts, last error). A :class:`Deliverer` follows the data
directory's events (:class:`tooltrail.events.EventSource`), queues one delivery per hook
whose topics match, and sends them from its own threads with retries and backoff. Agents
never wait on it: an agent's call lands its span or files its request and returns; the
deliverer reads those later from the stores. It runs inside ``tooltrail collect`` and as
``tooltrail webhooks run`` (for agents that land into a directory themselves); a lock file
keeps it to one per data directory.

Signing (docs/EVENTS.md has a receiver's check that runs): the header
``Tooltrail-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``;
receivers recompute it and reject a timestamp older than a few minutes (replays).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tooltrail.errors import BadInputError, StoreError
from tooltrail.event_stream import EventSource, head
from tooltrail.events import Cursor, Event

_log = logging.getLogger(__name__)

WEBHOOKS_FILE: Final = "webhooks.sqlite"
LOCK_FILE: Final = "webhooks.lock"
SIGNATURE_HEADER: Final = "Tooltrail-Signature"
TOLERANCE_S: Final = 300
TOPICS: Final = (
    "approval.requested",
    "approval.decided",
    "approval.expired",
    "deny.high",  # an action DENY at blast radius High or Critical
    "session.paused",
    "session.canceled",
    "tool.changed",
)
MAX_ATTEMPTS: Final = 8
BACKOFF_S: Final = 2.0  # then 4, 8 ... (capped at MAX_BACKOFF_S)
MAX_BACKOFF_S: Final = 300.0
SEND_TIMEOUT_S: Final = 5.0
_SENDERS: Final = 4
_CURSOR_KEY: Final = "cursor"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS hooks (
    hook_id     TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    topics      TEXT NOT NULL,
    slack       INTEGER NOT NULL DEFAULT 0,
    secret      TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
    hook_id     TEXT NOT NULL,
    topic       TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    body        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_code   INTEGER,
    last_error  TEXT,
    created_at  REAL NOT NULL,
    next_at     REAL NOT NULL,
    done_at     REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Hook:
    hook_id: str
    url: str
    topics: tuple[str, ...]
    slack: bool
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook_id": self.hook_id,
            "url": self.url,
            "topics": list(self.topics),
            "slack": self.slack,
            "created_at": self.created_at,
        }


def topic_of(event: Event) -> str | None:
    """The webhook topic an event is, or None when no hook is told of it."""
    if event.kind == "action":
        high = event.detail.get("blast_radius") in ("High", "Critical")
        # A decision an unauthenticated sender claims (provenance: verified false) is not
        # tooltrail's: no one is paged for it.
        claimed = event.detail.get("verified") is False
        return "deny.high" if event.decision == "DENY" and high and not claimed else None
    return event.kind if event.kind in TOPICS else None


def check_topics(topics: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(t.strip() for t in topics if t.strip())) or TOPICS
    for t in chosen:
        if t not in TOPICS:
            raise BadInputError(f"--events: {t!r} is not one of {', '.join(TOPICS)}")
    return chosen


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInputError(f"webhook URL {url!r}: give an http:// or https:// URL with a host")
    return url


# --- signing --------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Tooltrail-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in fields.get("v1", []))


def payload(event: Event, topic: str, slack: bool) -> bytes:
    """The body sent for ``event``: the event as JSON, or Slack's ``{"text": ...}``."""
    if slack:
        where = f" (session {event.session})" if event.session else ""
        text = f"[tooltrail] {topic}: {event.summary}{where}"
        return json.dumps({"text": text}, ensure_ascii=False).encode()
    doc = {"topic": topic, "event": event.to_json_dict()}
    return json.dumps(doc, default=str, ensure_ascii=False).encode()


# --- the store ------------------------------------------------------------------------------


class WebhookStore:
    """Hooks, deliveries and the deliverer's position in ``<data>/webhooks.sqlite``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / WEBHOOKS_FILE
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Owner-only from the start: the file holds the signing secrets.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._con = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            self._con.row_factory = sqlite3.Row
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the webhooks store: {e}") from e

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> WebhookStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._con.execute("BEGIN IMMEDIATE")
            yield self._con
            self._con.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                self._con.execute("ROLLBACK")
            raise StoreError(f"{self.path}: writing webhooks failed: {e}") from e

    def add(self, url: str, topics: Sequence[str] = (), *, slack: bool = False) -> tuple[Hook, str]:
        """A new hook and its secret (kept here for signing; shown to its owner once)."""
        hook = Hook(
            hook_id="wh_" + secrets.token_hex(6),
            url=check_url(url),
            topics=check_topics(topics),
            slack=slack,
            created_at=time.time(),
        )
        secret = "whsec_" + secrets.token_urlsafe(32)
        # The first hook fixes where delivery starts: what happens from now on is sent,
        # even when no deliverer runs yet (it catches up when it starts).
        start = None if self.cursor() is not None else head(self.path.parent)
        with self._tx() as con:
            if start is not None:
                self._save_cursor(con, start)
            con.execute(
                "INSERT INTO hooks VALUES (?, ?, ?, ?, ?, ?)",
                (
                    hook.hook_id,
                    hook.url,
                    json.dumps(hook.topics),
                    int(slack),
                    secret,
                    hook.created_at,
                ),
            )
        return hook, secret

    def hooks(self) -> list[Hook]:
        rows = self._con.execute("SELECT * FROM hooks ORDER BY created_at").fetchall()
        return [
            Hook(
                r["hook_id"],
                r["url"],
                tuple(json.loads(r["topics"])),
                bool(r["slack"]),
                r["created_at"],
            )
            for r in rows
        ]

    def remove(self, hook_id: str) -> None:
        with self._tx() as con:
            if con.execute("DELETE FROM hooks WHERE hook_id = ?", (hook_id,)).rowcount == 0:
                raise BadInputError(f"no webhook {hook_id!r} (see `tooltrail webhooks list`)")
            con.execute(
                "UPDATE deliveries SET status = 'failed', last_error = 'webhook removed'"
                " WHERE hook_id = ? AND status = 'pending'",
                (hook_id,),
            )

    def deliveries(
        self, hook_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        rows = self._con.execute(
            "SELECT delivery_id, hook_id, topic, event_id, status, attempts, last_code,"
            " last_error, created_at, next_at, done_at FROM deliveries"
            " WHERE (? IS NULL OR hook_id = ?) AND (? IS NULL OR status = ?)"
            " ORDER BY delivery_id DESC LIMIT ?",
            (hook_id, hook_id, status, status, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def cursor(self) -> Cursor | None:
        row = self._con.execute("SELECT value FROM state WHERE key = ?", (_CURSOR_KEY,)).fetchone()
        return None if row is None else Cursor.decode(row[0])

    def enqueue(self, events: Sequence[Event], cursor: Cursor) -> int:
        """Queue a delivery per matching hook for each event, and move the position past
        them, in one transaction (a crash queues an event's deliveries once, or not yet)."""
        hooks = self.hooks()
        now = time.time()
        queued = 0
        with self._tx() as con:
            for event in events:
                topic = topic_of(event)
                if topic is None:
                    continue
                for hook in hooks:
                    if topic in hook.topics:
                        body = payload(event, topic, hook.slack).decode()
                        con.execute(
                            "INSERT INTO deliveries (hook_id, topic, event_id, body, status,"
                            " created_at, next_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                            (hook.hook_id, topic, event.id, body, now, now),
                        )
                        queued += 1
            self._save_cursor(con, cursor)
        return queued

    @staticmethod
    def _save_cursor(con: sqlite3.Connection, cursor: Cursor) -> None:
        con.execute(
            "INSERT INTO state VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_CURSOR_KEY, cursor.encode()),
        )

    def due(self, now: float, limit: int = 32) -> list[dict[str, Any]]:
        rows = self._con.execute(
            "SELECT d.delivery_id, d.body, d.attempts, h.url, h.secret FROM deliveries d"
            " JOIN hooks h USING (hook_id) WHERE d.status = 'pending' AND d.next_at <= ?"
            " ORDER BY d.next_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [dict(r) for r in rows]

    def record(
        self,
        delivery_id: int,
        attempts: int,
        code: int | None,
        error: str | None,
        *,
        backoff_s: float,
        max_attempts: int,
    ) -> None:
        now = time.time()
        if error is None:
            status, next_at, done = "delivered", now, now
        elif attempts >= max_attempts:
            status, next_at, done = "failed", now, now
        else:
            status, done = "pending", None
            next_at = now + min(MAX_BACKOFF_S, backoff_s * 2 ** (attempts - 1))
        with self._tx() as con:
            con.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, last_code = ?, last_error = ?,"
                " next_at = ?, done_at = ? WHERE delivery_id = ?",
                (status, attempts, code, error, next_at, done, delivery_id),
            )


# --- delivery -------------------------------------------------------------------------------


def send(url: str, secret: str, body: bytes, timeout_s: float = SEND_TIMEOUT_S) -> int:
    """POST one signed delivery; its HTTP status (2xx) or an error naming what failed."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "tooltrail-webhooks",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        },
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        answer.read(65536)
        return int(answer.status)


class DelivererLockedError(StoreError):
    """Another deliverer already serves this data directory."""


class Deliverer:
    """Follows ``data_dir``'s events and delivers them to its hooks (one per directory)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        poll_s: float = 0.2,
        backoff_s: float = BACKOFF_S,
        max_attempts: int = MAX_ATTEMPTS,
        timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.data_dir = data_dir
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.stop_event = threading.Event()
        self._lock_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(_SENDERS, "tooltrail-webhook")
        self._sending: set[int] = set()
        self._sending_lock = threading.Lock()

    def lock(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DelivererLockedError(
                f"webhooks for {self.data_dir} are delivered by another process already"
                " (tooltrail collect or tooltrail webhooks run)"
            ) from None
        self._lock_fd = fd

    def start(self) -> None:
        """Take the lock (DelivererLockedError when held), fix where delivery starts (the
        saved position, else now), and deliver in a thread."""
        self.lock()
        if (self.data_dir / WEBHOOKS_FILE).exists():
            with WebhookStore(self.data_dir) as store:
                if store.cursor() is None:
                    store.enqueue([], head(self.data_dir))
        self._thread = threading.Thread(target=self.run, name="tooltrail-webhooks", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def run(self) -> None:
        """Until ``stop_event``: queue new events' deliveries, send the due ones. Idle
        (creating nothing) until the directory has a webhooks store (the first hook)."""
        while not (self.data_dir / WEBHOOKS_FILE).exists():
            if self.stop_event.wait(1.0):
                return
        with WebhookStore(self.data_dir) as store:
            source = EventSource(self.data_dir, store.cursor() or head(self.data_dir), settle=True)
            try:
                while not self.stop_event.is_set():
                    try:
                        self.step(store, source)
                    except Exception:  # one bad step must not end notifications
                        _log.exception("tooltrail webhooks: delivery step failed")
                    self.stop_event.wait(self.poll_s)
            finally:
                source.close()

    def step(self, store: WebhookStore, source: EventSource) -> None:
        events = source.poll()
        if events or store.cursor() is None:
            store.enqueue(events, source.cursor)
        for due in store.due(time.time()):
            with self._sending_lock:
                if due["delivery_id"] in self._sending:
                    continue
                self._sending.add(due["delivery_id"])
            self._pool.submit(self._deliver, due)

    def _deliver(self, due: dict[str, Any]) -> None:
        code: int | None = None
        error: str | None = None
        try:
            code = send(due["url"], due["secret"], due["body"].encode(), self.timeout_s)
        except urllib.error.HTTPError as e:
            code, error = e.code, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            error = f"{type(e).__name__}: {reason}"[:500]
        try:
            with WebhookStore(self.data_dir) as store:
                store.record(
                    due["delivery_id"],
                    due["attempts"] + 1,
                    code,
                    error,
                    backoff_s=self.backoff_s,
                    max_attempts=self.max_attempts,
                )
        except StoreError:
            _log.exception("tooltrail webhooks: cannot record delivery %s", due["delivery_id"])
        finally:
            with self._sending_lock:
                self._sending.discard(due["delivery_id"])


__all__ = [
    "SIGNATURE_HEADER",
    "TOPICS",
    "WEBHOOKS_FILE",
    "Deliverer",
    "DelivererLockedError",
    "Hook",
    "WebhookStore",
    "payload",
    "sign",
    "topic_of",
    "verify",
]
