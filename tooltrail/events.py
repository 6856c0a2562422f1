"""Live events: one model for what happens in a data directory (docs/EVENTS.md).

An :class:`Event` is an action landed (a tool-call span in Parquet), an approval requested,
decided or expired, a session paused, resumed, canceled or marked complete by an operator,
or a tool definition pinned or changed (the gateway's pins). It carries what the landed,
scrubbed record holds (the action's summary, never its arguments) and an ``id``: the
encoded position (:class:`Cursor`) just past it, so a reader that lost its connection
resumes from the last id it saw (SSE's ``Last-Event-ID``). :mod:`tooltrail.event_stream`
reads and follows them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from tooltrail.errors import BadInputError

KINDS: Final = (
    "action",
    "approval.requested",
    "approval.decided",
    "approval.expired",
    "session.paused",
    "session.resumed",
    "session.canceled",
    "session.completed",
    "tool.pinned",
    "tool.changed",
)
_CURSOR_VERSION: Final = "1"


# --- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened. ``time`` is seconds since the epoch (UTC); ``detail`` holds
    the kind's own fields (tool, blast radius, rule, approval id, actor, server, hash...)."""

    kind: str
    time: float
    session: str | None
    agent: str | None
    decision: str | None
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "time": iso(self.time),
            "session": self.session,
            "agent": self.agent,
            "decision": self.decision,
            "summary": self.summary,
            **self.detail,
        }


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a reader is: per source, the position of the last event read.

    ``spans``: (file mtime ns, file path under spans/, last row index read);
    ``control``: the last control event id; ``completed``: the last operator completion's
    id (-1: from where the stream is when the reader starts; what an id written before
    completions were streamed means); the others (timestamp, row key).
    """

    spans: tuple[int, str, int] = (0, "", -1)
    control: int = 0
    requested: tuple[float, str] = (0.0, "")
    settled: tuple[float, str] = (0.0, "")
    pinned: tuple[float, str] = (0.0, "")
    changed: tuple[float, str] = (0.0, "")
    completed: int = 0

    def encode(self) -> str:
        doc = [
            list(self.spans),
            self.control,
            list(self.requested),
            list(self.settled),
            list(self.pinned),
            list(self.changed),
            self.completed,
        ]
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return _CURSOR_VERSION + "." + base64.urlsafe_b64encode(text).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor an event id encodes; BadInputError naming the id otherwise."""
        version, _, body = text.strip().partition(".")
        try:
            if version != _CURSOR_VERSION:
                raise ValueError("unknown version")
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            spans, control, requested, settled, pinned, changed, *rest = json.loads(raw)
            if len(rest) > 1:
                raise ValueError("too many positions")
            return cls(
                spans=(int(spans[0]), str(spans[1]), int(spans[2])),
                control=int(control),
                requested=_mark(requested),
                settled=_mark(settled),
                pinned=_mark(pinned),
                changed=_mark(changed),
                completed=int(rest[0]) if rest else -1,
            )
        except (ValueError, TypeError, IndexError, binascii.Error) as e:
            raise BadInputError(
                f"event id {text[:80]!r} is not one this stream gave ({e})"
            ) from None

    @classmethod
    def at(cls, seconds: float) -> Cursor:
        """Everything that happened (landed, for actions) at ``seconds`` or later; control
        events, positioned by id, from the first (``event_stream.start_cursor`` finds the
        id that goes with the time)."""
        ns = int(seconds * 1e9)
        mark = (seconds, "")
        return cls((ns, "", -1), 0, mark, mark, mark, mark, 0)


def _mark(value: Any) -> tuple[float, str]:
    return (float(value[0]), str(value[1]))


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader gets: every given set must hold the event's value. ``kinds``
    entries match a kind or its family (``approval`` matches ``approval.decided``).
    ``owned_by``: an agent's name; only events of sessions that agent holds pass."""

    sessions: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    decisions: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    owned_by: str | None = None

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in KINDS and not any(k.startswith(kind + ".") for k in KINDS):
                raise BadInputError(f"kind {kind!r} is not one of {', '.join(KINDS)}")

    def passes(self, event: Event, owned: frozenset[str] | None = None) -> bool:
        if self.kinds and not any(
            event.kind == k or event.kind.startswith(k + ".") for k in self.kinds
        ):
            return False
        if self.sessions and not session_in(event.session, self.sessions):
            return False
        if self.agents and event.agent not in self.agents:
            return False
        if self.decisions and (event.decision or "").upper() not in self.decisions:
            return False
        return owned is None or session_in(event.session, owned)


def make_filter(
    *,
    sessions: Iterable[str] = (),
    agents: Iterable[str] = (),
    decisions: Iterable[str] = (),
    kinds: Iterable[str] = (),
    owned_by: str | None = None,
) -> EventFilter:
    """A filter from option values (decisions compared upper-case)."""
    keys: set[str] = set()
    for s in sessions:
        keys |= {s, _session_key(s)}
    return EventFilter(
        sessions=frozenset(keys),
        agents=frozenset(agents),
        decisions=frozenset(d.upper() for d in decisions),
        kinds=frozenset(kinds),
        owned_by=owned_by,
    )


def _session_key(session: str) -> str:
    # The control and access stores key sessions by their scrubbed id (control.session_key).
    from tooltrail.control import session_key

    return session_key(session)


def session_in(session: str | None, keys: frozenset[str]) -> bool:
    return session is not None and (session in keys or _session_key(session) in keys)


__all__ = ["KINDS", "Cursor", "Event", "EventFilter", "iso", "make_filter", "session_in"]
