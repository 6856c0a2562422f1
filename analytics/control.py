"""The hook through which the live control store (approvals, pause / cancel) reaches the views.

The store itself (``<data>/control.sqlite``) belongs to the approvals issue. Analytics only
needs two small relations from it, with the columns below:

- ``control_approvals``: one row per approval request (pending or decided);
- ``control_sessions``: one row per session that has a control state (its *current* state);
- ``control_events``: every pause / resume / cancel, and an operator's ``complete``, in
  order (who, when, why).

A :data:`ControlLoader` returns them as pyarrow tables. :func:`default_control_loader`
returns empty tables while ``control.sqlite`` does not exist (nothing is created just by
looking); when it does, it reads every approval request and session state through
:class:`tooltrail.control.ControlStore` (which also expires overdue requests as it reads).
Callers can pass another loader to :func:`tooltrail.analytics.connect`; its tables are
matched to the schemas below by column name (missing columns become null).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from tooltrail.config import CONTROL_FILE

_TS = pa.timestamp("us", tz="UTC")

APPROVAL_OUTCOMES: Final = ("pending", "approved", "denied", "expired", "abandoned")
SESSION_STATES: Final = ("running", "paused", "canceled")

CONTROL_APPROVALS_SCHEMA: Final = pa.schema(
    [
        pa.field("approval_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("trace_id", pa.string()),
        pa.field("span_id", pa.string()),
        pa.field("agent_name", pa.string()),
        pa.field("tool_name", pa.string()),
        pa.field("arguments", pa.string()),
        pa.field("policy_rule", pa.string()),
        pa.field("policy_reason", pa.string()),
        pa.field("blast_radius", pa.string()),
        pa.field("status", pa.string()),  # one of APPROVAL_OUTCOMES
        pa.field("requested_at", _TS),
        pa.field("expires_at", _TS),
        pa.field("decided_at", _TS),
        pa.field("decided_by", pa.string()),
        pa.field("reason", pa.string()),  # the decider's reason
    ]
)

CONTROL_SESSIONS_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", pa.string()),
        pa.field("state", pa.string()),  # one of SESSION_STATES
        pa.field("changed_by", pa.string()),
        pa.field("changed_at", _TS),
        pa.field("reason", pa.string()),
    ]
)


CONTROL_EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", pa.string()),
        pa.field("action", pa.string()),  # pause / resume / cancel / complete
        pa.field("changed_by", pa.string()),
        pa.field("changed_at", _TS),
        pa.field("reason", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class ControlTables:
    """What the views join: pyarrow tables with the schemas above (no events: none)."""

    approvals: Any
    sessions: Any
    events: Any = dataclasses.field(default_factory=CONTROL_EVENTS_SCHEMA.empty_table)


ControlLoader = Callable[[Path], ControlTables]


def empty_control() -> ControlTables:
    return ControlTables(
        CONTROL_APPROVALS_SCHEMA.empty_table(), CONTROL_SESSIONS_SCHEMA.empty_table()
    )


def conform(table: Any, schema: Any) -> Any:
    """``table`` with exactly ``schema``'s columns (by name), cast to its types."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            arrays.append(table.column(field.name).cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def control_tables(approvals: Any, sessions: Any, events: Any = None) -> ControlTables:
    """Build :class:`ControlTables` from any pyarrow tables with (a subset of) the columns."""
    return ControlTables(
        conform(approvals, CONTROL_APPROVALS_SCHEMA),
        conform(sessions, CONTROL_SESSIONS_SCHEMA),
        CONTROL_EVENTS_SCHEMA.empty_table()
        if events is None
        else conform(events, CONTROL_EVENTS_SCHEMA),
    )


def default_control_loader(data_dir: Path) -> ControlTables:
    """The live store's approvals and session states; empty while there is no store."""
    if not (data_dir / CONTROL_FILE).exists():
        return empty_control()
    # Imported here: the store is only needed once a control file exists.
    from tooltrail.control import ControlStore

    with ControlStore(data_dir) as store:
        records = store.list_approvals("all")
        states = store.session_states()
        # An operator's completions join the history as action `complete`, in time order.
        history = sorted([*store.control_history(), *store.completions()], key=lambda e: e.at)
    approvals = pa.Table.from_pylist(
        [
            {
                "approval_id": r.approval_id,
                "session_id": r.session_id,
                "trace_id": r.trace_id,
                "span_id": r.span_id,
                "agent_name": r.agent_name,
                "tool_name": r.tool_name,
                "arguments": r.arguments,
                "policy_rule": r.policy_rule,
                "policy_reason": r.reason,
                "blast_radius": r.blast_radius,
                "status": r.status,
                "requested_at": _utc(r.requested_at),
                "expires_at": _utc(r.expires_at),
                "decided_at": _utc(r.decided_at),
                "decided_by": r.decided_by,
                "reason": r.decision_reason,
            }
            for r in records
        ],
        schema=CONTROL_APPROVALS_SCHEMA,
    )
    sessions = pa.Table.from_pylist(
        [
            {
                "session_id": c.session_id,
                "state": c.state,
                "changed_by": c.changed_by,
                "changed_at": _utc(c.changed_at),
                "reason": c.reason,
            }
            for c in states
        ],
        schema=CONTROL_SESSIONS_SCHEMA,
    )
    events = pa.Table.from_pylist(
        [
            {
                "session_id": e.session_id,
                "action": e.action,
                "changed_by": e.actor,
                "changed_at": _utc(e.at),
                "reason": e.reason,
            }
            for e in history
        ],
        schema=CONTROL_EVENTS_SCHEMA,
    )
    return ControlTables(approvals, sessions, events)


def _utc(epoch_s: float | None) -> dt.datetime | None:
    return None if epoch_s is None else dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)


__all__ = [
    "APPROVAL_OUTCOMES",
    "CONTROL_APPROVALS_SCHEMA",
    "CONTROL_EVENTS_SCHEMA",
    "CONTROL_SESSIONS_SCHEMA",
    "SESSION_STATES",
    "ControlLoader",
    "ControlTables",
    "conform",
    "control_tables",
    "default_control_loader",
    "empty_control",
]
