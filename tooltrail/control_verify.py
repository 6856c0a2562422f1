"""Checking ``control.sqlite`` against its ledger: before a held call is released, for the
views (a ``verified`` / ``tampered`` field per record), and all of it (``verify_control``,
which ``tooltrail verify`` calls).

The rules (docs/SECURITY.md, "Tamper detection"):

* a request row must equal its ``request`` entry in every field a decider relies on
  (``REQUEST_FIELDS``: tool, arguments hash, policy version, approvers, expiry, blast
  radius, reason ...);
* a decided row must equal its last ``decision`` / ``system`` entry (status, decider,
  time, reason);
* an approval releases a call only through a ``decision`` entry that names the request's
  exact digest, arguments hash and policy version, made before the deadline by a decider
  the filed rule lists, and, when the trust root requires it, signed by that decider's key;
* an expiry releases a call (``on_timeout: ALLOW``) only at or after the filed deadline, by
  the waiter's own clock;
* a session's state must equal what its ``control`` entries say; the ledger's chain must
  be whole (no edited body, no missing entry, no cut-off tail);
* an operator's completion row must equal its ``completion`` entry (who, when, why), which
  must verify: one without it is not believed by the views (``ControlStore.completions``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tooltrail import ledger
from tooltrail.access import approver_allowed
from tooltrail.control import (
    ADOPTED_REF,
    APPROVED,
    EXPIRED,
    PENDING,
    ApprovalRecord,
    ControlStore,
    _derived_state,
    _record,
    completion_key,
    completion_problem,
    request_content,
    request_differences,
    request_digest,
)
from tooltrail.errors import StoreError, TamperedError
from tooltrail.signing import TrustRoot


def release_refusal(
    store: ControlStore, filed: ApprovalRecord, record: ApprovalRecord, *, now: float | None = None
) -> str | None:
    """Why the waiter of ``filed`` must not run its call although the store says
    ``record.status`` (None: nothing stands in the way). ``filed`` is the waiter's own copy,
    taken when it filed: edits made to the row since count for nothing."""
    now = time.time() if now is None else now
    if record.status == EXPIRED and now < filed.expires_at:
        return _tampered(
            filed, f"it is marked expired before its deadline ({filed.expires_at:.3f})"
        )
    if record.status != APPROVED:
        return None  # denied, abandoned, expired at its time: the call does not run anyway
    try:
        entries = store._busy_retry(lambda: ledger.entries_for(store._con, filed.approval_id))
        trust = store.trust()
    except (sqlite3.Error, StoreError) as e:
        return _tampered(filed, f"its decision cannot be checked ({e})")
    decisions = [e for e in entries if e.kind in ("decision", "system")]
    if not decisions:
        return _tampered(
            filed, "it is marked approved but its ledger holds no decision (status rewritten)"
        )
    if len(decisions) > 1:
        return _tampered(filed, "its ledger holds more than one decision")
    problem = approval_problem(decisions[0], filed, trust)
    if problem is None and record.decided_by != decisions[0].payload().get("decider"):
        problem = "the decider was renamed in control.sqlite"
    return None if problem is None else _tampered(filed, problem)


def record_from_json(doc: Mapping[str, Any]) -> ApprovalRecord:
    """An ``ApprovalRecord`` from the collector's JSON form of it (``record_json``)."""
    values: dict[str, Any] = {name: doc.get(name) for name in ApprovalRecord.__dataclass_fields__}
    values["arguments"] = json.dumps(doc.get("arguments"), sort_keys=True)
    values["approvers"] = tuple(doc.get("approvers") or ())
    return ApprovalRecord(**values)


def _tampered(filed: ApprovalRecord, problem: str) -> str:
    return (
        f"approval {filed.approval_id} does not verify: {problem}; the control store was"
        " tampered with, so the held call does not run"
    )


def approval_problem(entry: ledger.Entry, filed: ApprovalRecord, trust: TrustRoot) -> str | None:
    """Why ``entry`` does not approve exactly ``filed`` (None: it does)."""
    try:
        doc = entry.payload()
    except (ValueError, TamperedError):
        return "its decision entry is not JSON"
    if doc.get("outcome") != APPROVED or doc.get("approval_id") != filed.approval_id:
        return "its decision entry does not approve this request"
    for name, want in (
        ("request", request_digest(filed)),
        ("arguments_hash", filed.arguments_hash),
        ("policy_version", filed.policy_version),
    ):
        if doc.get(name) != want:
            return f"the approval was given for another {name.replace('_', ' ')}"
    at = doc.get("at")
    if not isinstance(at, int | float) or at >= filed.expires_at:
        return "the approval is dated after the request's deadline"
    if at < filed.requested_at:
        # A key may not be used to date a decision into a time it was valid (before its
        # revocation, within an e-mail's role grant) for a request that did not exist yet.
        return "the approval is dated before the request was filed"
    problem = ledger.verify_signed(entry, trust)
    if problem is not None:
        return f"its signature does not verify: {problem}"
    decider = doc.get("decider")
    role = doc.get("role") if trust.required else None
    if not isinstance(decider, str) or not approver_allowed(
        filed.approvers, decider, role if isinstance(role, str) else None
    ):
        return f"{decider!r} is not among the approvers the rule listed"
    return None


# -- the views and `tooltrail verify` -----------------------------------------------------


def record_problems(con: sqlite3.Connection, record: ApprovalRecord, trust: TrustRoot) -> list[str]:
    """Every way ``record`` disagrees with its ledger entries (empty: it verifies)."""
    entries = ledger.entries_for(con, record.approval_id)
    filed = [e for e in entries if e.kind == "request"]
    if not filed:
        return ["filed before signed records (no ledger entry): unverified"]
    problems: list[str] = []
    try:
        differs = request_differences(filed[0].payload(), request_content(record))
    except (ValueError, TamperedError):
        differs = "its ledger entry"
    if differs:
        problems.append(f"edited since filed: {differs}")
    if not record.arguments_intact():
        problems.append("its arguments no longer match their hash")
    ends = [e for e in entries if e.kind in ("decision", "system")]
    if record.status == PENDING:
        if ends:
            problems.append("marked pending but its ledger holds a decision")
        return problems
    if not ends:
        return [
            *problems,
            f"marked {record.status} but its ledger holds no decision (status rewritten)",
        ]
    last = ends[-1].payload()
    for column, key in (
        ("status", "outcome"),
        ("decided_at", "at"),
        ("decision_reason", "reason"),
    ):
        if getattr(record, column) != last.get(key):
            problems.append(f"{column} differs from its signed record")
    if ends[-1].kind == "decision" and record.decided_by != last.get("decider"):
        problems.append("decided_by differs from its signed record (decider renamed)")
    if record.status == APPROVED:
        signed = _filed_record(filed[0], record)
        problem = approval_problem(ends[-1], signed, trust) if signed else "unreadable"
        if problem is not None:
            problems.append(problem)
    return problems


def _filed_record(entry: ledger.Entry, record: ApprovalRecord) -> ApprovalRecord | None:
    """``record`` as its ledger entry says it was filed (for checking its decision)."""
    try:
        doc = entry.payload()
        values = {**record.to_dict(), **{k: doc[k] for k in doc if k in record.to_dict()}}
        values["approvers"] = tuple(values["approvers"])
        values.pop("wait_ms", None)
        return ApprovalRecord(**values)
    except (ValueError, TypeError, KeyError, TamperedError):
        return None


def annotate(store: ControlStore, records: Sequence[ApprovalRecord]) -> dict[str, list[str]]:
    """``record_problems`` of each record, by approval id; a trust root that cannot be read
    flags every record with why (fail closed: nothing shows as verified then)."""
    try:
        trust = store.trust()
    except StoreError as e:
        return {r.approval_id: [f"the trust root cannot be read: {e}"] for r in records}
    return {
        r.approval_id: store._busy_retry(lambda r=r: record_problems(store._con, r, trust))  # type: ignore[misc]
        for r in records
    }


def verify_control(data_dir: str | os.PathLike[str] | None) -> list[ledger.Broken]:
    """Every broken record of ``<data_dir>/control.sqlite``: the ledger's chain, each
    request (edited fields, a status or decider without its signed decision, an approval
    that does not verify), each session (state against its signed record, events deleted).
    Empty when everything verifies."""
    with ControlStore(data_dir) as store:
        return store._busy_retry(lambda: _verify(store))


def _verify(store: ControlStore) -> list[ledger.Broken]:
    con = store._con
    con.execute("BEGIN")  # one snapshot for every read below
    try:
        entries = ledger.all_entries(con)
        counter = ledger.head(con)[2]
        broken = ledger.check_chain(entries, counter)
        trust = store.trust()
        for row in con.execute("SELECT * FROM approvals ORDER BY requested_at"):
            record = _record(row)
            for problem in record_problems(con, record, trust):
                broken.append(ledger.Broken("request", record.approval_id, problem))
        broken += _sessions(con, entries, trust)
        broken += _completions(con, entries, trust)
    finally:
        con.execute("ROLLBACK")
    return broken


def _sessions(
    con: sqlite3.Connection, entries: Sequence[ledger.Entry], trust: TrustRoot
) -> list[ledger.Broken]:
    broken: list[ledger.Broken] = []
    controls: dict[str, list[Mapping[str, Any]]] = {}
    for e in entries:
        if e.kind == "control":
            try:
                controls.setdefault(e.ref, []).append(e.payload())
            except (ValueError, TamperedError):
                broken.append(ledger.Broken("session", e.ref, f"ledger entry {e.seq} edited"))
            problem = ledger.verify_signed(e, trust)
            if problem is not None:
                broken.append(ledger.Broken("session", e.ref, f"entry {e.seq}: {problem}"))
    stored = {
        str(r[0]): str(r[1]) for r in con.execute("SELECT session_id, state FROM session_controls")
    }
    events: dict[str, list[tuple[Any, ...]]] = {}
    for r in con.execute(
        "SELECT session_id, action, actor, at, reason FROM control_events ORDER BY event_id"
    ):
        events.setdefault(str(r[0]), []).append(tuple(r[1:]))
    adopted = {s for e in entries if e.ref == ADOPTED_REF for s in e.payload().get("adopted", {})}
    for session_id in sorted(set(stored) | set(controls) | set(events)):
        signed = [
            (d.get("action"), d.get("decider"), d.get("at"), d.get("reason"))
            for d in controls.get(session_id, [])
        ]
        if session_id not in adopted and events.get(session_id, []) != signed:
            broken.append(
                ledger.Broken(
                    "session",
                    session_id,
                    "its control events differ from its signed record"
                    " (an event was edited, added or deleted)",
                )
            )
        try:
            derived = _derived_state(con, session_id, trust)
        except TamperedError as e:
            broken.append(ledger.Broken("session", session_id, str(e)))
            continue
        if stored.get(session_id, "running") != derived:
            broken.append(
                ledger.Broken(
                    "session",
                    session_id,
                    f"it is {stored.get(session_id, 'running')} in control.sqlite but its"
                    f" signed record says {derived}",
                )
            )
    return broken


def _completions(
    con: sqlite3.Connection, entries: Sequence[ledger.Entry], trust: TrustRoot
) -> list[ledger.Broken]:
    """Operators' completions: each ``completion`` entry verifies (signed by an operator's
    key when access control is on), and the ``session_completions`` rows of each session
    equal its entries (who, when, why), none added, edited or deleted by hand."""
    broken: list[ledger.Broken] = []
    signed: dict[str, list[tuple[Any, ...]]] = {}
    flagged: set[tuple[Any, ...]] = set()  # rows of entries already reported as broken
    for e in entries:
        if e.kind != "completion":
            continue
        problem = completion_problem(e, trust)
        if problem is not None:
            broken.append(ledger.Broken("session", e.ref, f"completion entry {e.seq}: {problem}"))
            with contextlib.suppress(ValueError, TamperedError):
                flagged.add((e.ref, *completion_key(e.payload())))
            continue
        signed.setdefault(e.ref, []).append(completion_key(e.payload()))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for r in con.execute(
        "SELECT session_id, actor, at, reason FROM session_completions ORDER BY completion_id"
    ):
        if (str(r[0]), r[1], r[2], r[3]) not in flagged:
            rows.setdefault(str(r[0]), []).append((r[1], r[2], r[3]))
    for session_id in sorted(set(signed) | set(rows)):
        have, want = rows.get(session_id, []), signed.get(session_id, [])
        unsigned = [r for r in have if r not in want]
        lost = [w for w in want if w not in have]
        if unsigned and lost:
            broken.append(
                ledger.Broken(
                    "session",
                    session_id,
                    "a completion differs from its signed record (who, when or why was"
                    " edited in session_completions): not believed",
                )
            )
        elif unsigned:
            who = ", ".join(f"{r[0]!r}" for r in unsigned)
            broken.append(
                ledger.Broken(
                    "session",
                    session_id,
                    f"a completion by {who} has no signed record (written by hand, or"
                    " recorded before completions were chained): not believed, the session"
                    " reads what its spans say",
                )
            )
        elif lost:
            broken.append(
                ledger.Broken(
                    "session",
                    session_id,
                    "its signed completion has no row in session_completions (deleted)",
                )
            )
    return broken


__all__ = ["annotate", "approval_problem", "record_problems", "release_refusal", "verify_control"]
