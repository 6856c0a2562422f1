"""Which agent holds each session, for the collector's landing (issue 17, provenance).

With access control on, a session id belongs to the first agent credential that uses it:
the first to send a span naming it (bound here, when the span lands), file an approval
request in it or read its control state (bound by the HTTP routes, ``AccessGate``). The
binding is a row of ``session_owners`` in ``<data>/access.sqlite`` and never changes, so a
span another agent's credential sends into that session lands as a claim
(``collector.pipeline.stamp_provenance``), and that agent's requests and control reads
there are refused (403).

Why at landing and not in the HTTP thread: landing computes the row's ``session_id`` (the
first session attribute in SPEC §2's precedence, else the trace id, scrubbed); checking
the very value that lands leaves no second derivation an attacker could make disagree
with it. The binding follows landing order, which is spool (acknowledgement) order; two
first senders landing at once in two worker processes are settled by SQLite (``INSERT ...
ON CONFLICT DO NOTHING`` in one write transaction, then a read): exactly one owns the
session, the other's spans land claimed.

Only a session a span names binds: a session id that is the span's trace id (no session
attribute) is checked against the owners but never claimed, since one trace legitimately
crosses agents (context propagated from one agent to another).

Cost: owners never change, so each landed session id's owner is cached for the process's
life (bounded); a batch asks the store only about ids it has not seen held, in one read
(plus one write transaction when it binds). A store that cannot be read fails closed and
loses nothing: :class:`SessionOwnersUnavailable` is an ``OSError``, so the spool segment
stays and is landed again (spool mode) or the sender gets 503 and resends (direct mode).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from tooltrail.access import AccessStore
from tooltrail.control import session_key
from tooltrail.errors import StoreError

_MAX_ENTRIES: Final = 65536


class SessionOwnersUnavailable(OSError):
    """The access store could not be read or written: land the batch later."""


class SessionOwners:
    """Landed session id -> the agent holding it, over ``session_owners``; thread-safe
    (direct mode lands in the request threads)."""

    def __init__(self, data_dir: Path, max_entries: int = _MAX_ENTRIES) -> None:
        self.data_dir = data_dir
        self._max = max_entries
        self._owner: dict[str, str] = {}
        self._key: dict[str, str] = {}
        self._lock = threading.Lock()
        self.store_reads = 0  # how often a batch had to ask the store (tests, benchmarks)

    def held(self, wanted: Sequence[tuple[str, str, bool]]) -> dict[str, str]:
        """The holder of each session among ``wanted`` that is held, once every unheld one
        marked bindable is bound to its first sender.

        ``wanted``: ``(landed session id, sending agent, bindable)`` per row, in landing
        order (bindable: the span names the session, it is not its trace id)."""
        found: dict[str, str] = {}
        first: dict[str, str | None] = {}  # unknown ids -> the agent to bind them to
        for sid, agent, bindable in wanted:
            owner = self._owner.get(sid)
            if owner is not None:
                found[sid] = owner
            elif first.get(sid) is None:
                first[sid] = agent if bindable else None
        if first:
            found.update(self._ask(first))
        return found

    def _ask(self, first: dict[str, str | None]) -> dict[str, str]:
        keys = {sid: self._key_of(sid) for sid in first}
        try:
            with AccessStore(self.data_dir) as store:
                self.store_reads += 1
                held = store.session_owners(list(keys.values()))
                claims = [
                    (keys[sid], agent)
                    for sid, agent in first.items()
                    if agent is not None and keys[sid] not in held
                ]
                if claims:
                    held.update(store.claim_sessions(claims))
        except (StoreError, sqlite3.Error) as e:
            raise SessionOwnersUnavailable(
                f"cannot read which agent holds each session ({e}): landing later"
            ) from e
        found = {sid: held[key] for sid, key in keys.items() if key in held}
        with self._lock:
            if len(self._owner) + len(found) > self._max:
                self._owner.clear()
            self._owner.update(found)
        return found

    def _key_of(self, sid: str) -> str:
        key = self._key.get(sid)
        if key is None:
            key = session_key(sid)
            with self._lock:
                if len(self._key) >= self._max:
                    self._key.clear()
                self._key[sid] = key
        return key


__all__ = ["SessionOwners", "SessionOwnersUnavailable"]
