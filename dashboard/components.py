"""Widgets shared by several pages: pending-approval cards, bulk action bars, an admin's
session deletion, and the callbacks that write through the control store (and, for a
deletion, through the library call ``tooltrail delete`` makes).

Writes run in button callbacks: Streamlit runs a callback before the script, so the run
that follows the click already reads the new state (``data.decide`` clears the cache).
What happened is reported with :func:`ui.flash`. A button is only offered when its
action is valid for every selected row; the store still refuses anything invalid (a
request decided meanwhile by someone else, a resume of a canceled session) and that
refusal is shown, never swallowed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import streamlit as st

from tooltrail import access
from tooltrail.analytics.queries import TERMINAL_STATUSES
from tooltrail.collector.normalize import derive_summary
from tooltrail.dashboard import auth, data, nav, ui
from tooltrail.errors import TooltrailError

SESSION_ACTIONS: Final = ("pause", "resume", "cancel")
_ACTION_PAST: Final = {"pause": "Paused", "resume": "Resumed", "cancel": "Canceled"}
_ACTION_ICONS: Final = {
    "pause": ":material/pause:",
    "resume": ":material/play_arrow:",
    "cancel": ":material/cancel:",
}
# --- approvals -----------------------------------------------------------------------------


def summary_of(row: Mapping[str, Any]) -> str:
    """The action's plain-English summary, derived from tool and arguments when the held
    span has not landed yet (the store keeps the arguments, not a summary)."""
    if row.get("action_summary"):
        return str(row["action_summary"])
    try:
        args = json.loads(row.get("arguments") or "{}")
    except ValueError:
        args = {}
    return derive_summary(
        str(row.get("tool_name") or "unknown tool"),
        row.get("target_repo"),
        row.get("target_branch"),
        args=args,
    )


def why_not_decidable(row: Mapping[str, Any], who: auth.Identity | None) -> str | None:
    """Why this identity cannot decide this pending request now, or None if it can: the
    rule's approvers are matched as the store matches them (name, ``role:NAME``, ``*``)."""
    if who is None:
        return ui.NEED_OPERATOR
    approvers = list(row.get("approvers") or [])
    if not approvers:
        return "This request is not in the control store, so it cannot be decided here."
    if not access.approver_allowed(approvers, who.name, who.role):
        return f"Only {', '.join(approvers)} may decide this request."
    return None


def _identity(root: Path) -> auth.Identity | None:
    """Who acts in this run; None (shown as an error) when the access store is unreadable:
    a decision surface fails closed."""
    try:
        return auth.current(root)
    except TooltrailError as e:
        st.error(f"Cannot read who may act on {root}: {e}")
        return None


def _apply_each(
    root: str,
    ids: Sequence[str],
    reason_key: str,
    apply: Callable[[str, auth.Identity, str | None], object],
    past: str,
) -> None:
    """Apply one action to each selected id as whoever is acting now (found again here:
    a callback runs before the script, and a sign-out or disable since the page was drawn
    must count); report what was done and, per id, what was refused."""
    try:
        who = auth.current(Path(root))
    except TooltrailError as e:
        ui.flash(str(e), "error")
        return
    if who is None:
        ui.flash(ui.NEED_OPERATOR, "error")
        return
    reason = st.session_state.get(reason_key) or None
    done: list[str] = []
    for item in ids:
        try:
            apply(item, who, reason)
        except TooltrailError as e:
            ui.flash(f"{item}: {e}", "error")
        else:
            done.append(item)
    if done:
        ui.flash(f"{past} {', '.join(done)} as {data.acting_label(Path(root), who)}")


def decide_callback(root: str, ids: Sequence[str], outcome: data.Outcome, reason_key: str) -> None:
    """Approve or deny each request in ``ids`` as the current identity."""
    _apply_each(
        root,
        ids,
        reason_key,
        lambda approval_id, who, reason: data.decide(Path(root), approval_id, outcome, who, reason),
        "Approved" if outcome == "approved" else "Denied",
    )


def approval_card(row: Mapping[str, Any], root: Path, key: str) -> None:
    """One pending request: who, what, why it is held, and Approve / Deny. A request whose
    agent stopped waiting (outcome ``abandoned``) says so instead, without buttons: the
    call never ran, so no decision can take effect."""
    approval_id = str(row["approval_id"])
    gone = row.get("outcome") == "abandoned"
    who = _identity(root)
    blocked = why_not_decidable(row, who)
    # A request the store holds is one card per id; any other held call (its request never
    # reached the store, or its span cites an id the store filed for another span) is keyed
    # by its span, so that several of them can be listed.
    card = row.get("approval_id") if row.get("in_store") else f"span-{row.get('span_id')}"
    with st.container(border=True, key=f"{key}-card-{card}"):
        left, right = st.columns([7, 3], vertical_alignment="center")
        with left:
            agent = row.get("agent_name") or "unknown agent"
            st.markdown(
                f"**{ui.md(ui.label_of('tool', row.get('tool_name')))}** · {ui.md(str(agent))} · "
                f"{ui.chip(row.get('blast_radius'), ui.RADIUS_COLORS)}"
            )
            st.markdown(ui.md(summary_of(row)))
            why = row.get("policy_reason")
            rule = row.get("policy_rule") or "–"
            details = [f"rule {ui.code(rule)}" + (f" — {ui.md(why)}" if why else "")]
            details.append(f"requested {ui.fmt_ago(row.get('requested_at'))}")
            if gone:
                details.append(f"agent gone {ui.fmt_ago(row.get('decided_at'))}")
            elif row.get("expires_at") is not None:
                details.append(f"expires {ui.fmt_ago(row['expires_at'])}")
            details.append(ui.code(approval_id))
            st.caption(" · ".join(details))
            if row.get("session_id"):
                nav.session_link(
                    str(row["session_id"]),
                    label=f"Session {ui.md(row['session_id'])}",
                    icon=":material/open_in_new:",
                )
        with right:
            if gone:
                _gone_notice(row)
            elif who is not None and not who.may("decide"):
                # No button at all for a role that may not decide (a viewer).
                st.caption(f"Signed in as {ui.md(who.label)}: your role may not decide.")
            else:
                _decision_controls(row, root, key, str(card), blocked)
        with st.expander("Arguments shown for approval"):
            st.code(ui.pretty_json(row.get("arguments")), language="json")


def _gone_notice(row: Mapping[str, Any]) -> None:
    why = row.get("reason") or "the agent stopped waiting"
    st.warning(
        f"**Agent gone**: {ui.md(str(why))}. The call never ran; there is nothing to decide.",
        icon=":material/link_off:",
    )


def _decision_controls(
    row: Mapping[str, Any], root: Path, key: str, card: str, blocked: str | None
) -> None:
    """Reason, Approve and Deny for one pending request (disabled, saying why, when this
    operator may not decide it)."""
    approval_id = str(row["approval_id"])
    reason_key = f"{key}-reason-{card}"
    st.text_input(
        "Reason",
        key=reason_key,
        placeholder="Reason (optional)",
        label_visibility="collapsed",
        disabled=blocked is not None,
    )
    approve, deny = st.columns(2)
    approve.button(
        "Approve",
        key=f"{key}-approve-{card}",
        type="primary",
        icon=":material/check:",
        disabled=blocked is not None,
        help=blocked,
        on_click=decide_callback,
        args=(str(root), [approval_id], "approved", reason_key),
        width="stretch",
    )
    deny.button(
        "Deny",
        key=f"{key}-deny-{card}",
        icon=":material/block:",
        disabled=blocked is not None,
        help=blocked,
        on_click=decide_callback,
        args=(str(root), [approval_id], "denied", reason_key),
        width="stretch",
    )
    if blocked is not None and blocked != ui.NEED_OPERATOR:
        st.caption(ui.md(blocked))


def _trust_caption(root: Path) -> None:
    """How decisions are verified here, when the agents' account could forge them
    (issue 16: every decision surface says so)."""
    notice = data.trust_notice(root)
    if notice:
        st.caption(ui.md(notice[0].upper() + notice[1:] + "."))


def operator_hint() -> None:
    """One visible note above the decision cards (instead of a disabled-button tooltip
    per card): single-user mode, and the name it still needs; or a role that may not
    decide."""
    root = data.app_config().data_dir
    who = _identity(root)
    if who is not None and who.via != "single-user":
        if not who.may("decide"):
            st.info(
                f"Signed in as {ui.md(who.label)}: your role may read, not decide.",
                icon=":material/visibility:",
            )
        else:
            _trust_caption(root)
        return
    st.caption(ui.SINGLE_USER)
    _trust_caption(root)
    if who is None:
        st.info(
            "Enter your name in the sidebar to approve or deny: every decision records who "
            "made it.",
            icon=":material/badge:",
        )


def approvals_bulk_bar(rows: Sequence[Mapping[str, Any]], root: Path, key: str) -> None:
    """Approve or deny every selected request at once (offered only when the operator may
    decide each of them)."""
    who = _identity(root)
    if who is not None and not who.may("decide"):
        return
    if not rows:
        st.caption("Select requests in the table to approve or deny several at once.")
        return
    reasons = [why_not_decidable(r, who) for r in rows]
    blocked = next((r for r in reasons if r is not None), None)
    ids = [str(r["approval_id"]) for r in rows]
    with st.container(border=True):
        st.markdown(f"**{len(ids)} selected**")
        if blocked is not None:
            st.caption(ui.md(blocked))
            return
        reason_key = f"{key}-bulk-reason"
        st.text_input("Reason for all", key=reason_key, placeholder="Reason (optional)")
        approve, deny, _ = st.columns([1, 1, 3])
        approve.button(
            f"Approve {len(ids)}",
            key=f"{key}-bulk-approve",
            type="primary",
            icon=":material/check:",
            on_click=decide_callback,
            args=(str(root), ids, "approved", reason_key),
        )
        deny.button(
            f"Deny {len(ids)}",
            key=f"{key}-bulk-deny",
            icon=":material/block:",
            on_click=decide_callback,
            args=(str(root), ids, "denied", reason_key),
        )


# --- session control -----------------------------------------------------------------------


def valid_session_actions(control_state: str | None) -> list[str]:
    """Control actions the store accepts from a session's current control state."""
    state = control_state or "running"
    if state == "canceled":
        return []
    if state == "paused":
        return ["resume", "cancel"]
    return ["pause", "cancel"]


def common_session_actions(states: Sequence[str | None]) -> list[str]:
    """Actions valid for every one of several sessions, in the usual order."""
    if not states:
        return []
    valid = set(SESSION_ACTIONS)
    for state in states:
        valid &= set(valid_session_actions(state))
    return [a for a in SESSION_ACTIONS if a in valid]


def control_callback(
    root: str, session_ids: Sequence[str], action: data.SessionAction, reason_key: str
) -> None:
    """Pause, resume or cancel each session in ``session_ids`` as the current identity."""
    _apply_each(
        root,
        session_ids,
        reason_key,
        lambda sid, who, reason: data.control_session(Path(root), sid, action, who, reason),
        _ACTION_PAST[action],
    )


def session_control_bar(
    session_ids: Sequence[str], states: Sequence[str | None], root: Path, key: str
) -> None:
    """Pause / Resume / Cancel for one or several sessions (only common valid actions;
    none for a role that may not control sessions)."""
    actions = common_session_actions(states)
    who = _identity(root)
    if who is not None and not who.may("control"):
        st.caption(f"Signed in as {ui.md(who.label)}: your role may not pause, resume or cancel.")
        return
    if who is None or who.via == "single-user":
        st.caption(ui.SINGLE_USER)
    _trust_caption(root)
    if not actions:
        if len(session_ids) == 1:
            st.caption("No control action applies to this session: canceled is final.")
        else:
            st.caption("No control action applies to every selected session (canceled is final).")
        return
    reason_key = f"{key}-control-reason"
    st.text_input("Reason", key=reason_key, placeholder="Reason (optional)")
    if not who:
        st.caption(ui.NEED_OPERATOR)
    row = st.container(horizontal=True)
    for action in actions:
        label = action.capitalize() + (f" {len(session_ids)}" if len(session_ids) > 1 else "")
        row.button(
            label,
            key=f"{key}-{action}",
            icon=_ACTION_ICONS[action],
            disabled=who is None,
            help=ui.NEED_OPERATOR if who is None else None,
            on_click=control_callback,
            args=(str(root), list(session_ids), action, reason_key),
        )


# --- deleting a session (admins only) -------------------------------------------------------

# What the last deletion in this browser session removed (the page says so once the
# session is gone). Never a widget's key.
DELETED_KEY: Final = "_tooltrail_deleted"


def delete_session_panel(head: Mapping[str, Any], root: Path, key: str) -> None:
    """ "Delete session" for a signed-in admin: a terminal session only, with a reason and
    a confirmation. Nothing for any other role; in single-user mode only why not
    (``data.DELETE_NEEDS_ACCESS``)."""
    session_id = str(head["session_id"])
    status = str(head.get("status") or "unknown")
    who = _identity(root)
    if who is None:
        return
    if who.via == "single-user":
        if status in TERMINAL_STATUSES:
            st.caption(ui.md(data.DELETE_NEEDS_ACCESS))
        return
    if not who.may("admin"):
        return
    if status not in TERMINAL_STATUSES:
        why = (
            f"Only completed, failed, canceled or abandoned sessions can be deleted; this one"
            f" is {status}."
        )
        st.button(
            "Delete session",
            key=f"{key}-delete",
            icon=":material/delete:",
            disabled=True,
            help=why,
        )
        st.caption(why)
        return
    with st.expander("Delete session", icon=":material/delete:"):
        st.markdown(
            f"Removes every landed row of {ui.code(session_id)}"
            f" ({ui.fmt_int(head.get('span_count') or head.get('total_actions'))} spans) for"
            f" good, rewriting the files that hold them. A signed tombstone records you"
            f" ({ui.md(who.name)}), the time, the reason and the row count, so"
            " `tooltrail verify` tells this deletion from tampering."
        )
        reason_key, confirm_key = f"{key}-delete-reason", f"{key}-delete-confirm"
        reason = st.text_input("Reason (recorded in the tombstone)", key=reason_key)
        confirmed = st.checkbox(f"Yes, delete {ui.code(session_id)} for good", key=confirm_key)
        ready = confirmed and bool(reason.strip())
        st.button(
            "Delete session",
            key=f"{key}-delete",
            type="primary",
            icon=":material/delete_forever:",
            disabled=not ready,
            help=None if ready else "Give a reason and confirm first.",
            on_click=delete_callback,
            args=(str(root), session_id, reason_key, confirm_key),
        )


def delete_callback(root: str, session_id: str, reason_key: str, confirm_key: str) -> None:
    """Delete one session as whoever is signed in now (found again here, as every write
    is: a sign-out or a role change since the page was drawn must count)."""
    try:
        who = auth.current(Path(root))
    except TooltrailError as e:
        ui.flash(str(e), "error")
        return
    reason = str(st.session_state.get(reason_key) or "").strip()
    if who is None or not st.session_state.get(confirm_key) or not reason:
        ui.flash("Sign in as an admin, give a reason and confirm to delete.", "error")
        return
    try:
        report = data.delete_session(Path(root), session_id, who, reason)
    except TooltrailError as e:
        ui.flash(f"{session_id}: {e}", "error")
        return
    st.session_state[DELETED_KEY] = {"by": who.name, "reason": reason, **report.to_dict()}
    ui.flash(f"Deleted {session_id} as {who.name}")


def deleted_notice(session_id: str) -> bool:
    """Say what the deletion of ``session_id`` in this browser session removed; False when
    it was not deleted here."""
    done = st.session_state.get(DELETED_KEY)
    if not isinstance(done, dict) or session_id not in done.get("sessions", []):
        return False
    st.success(
        f"Deleted session {ui.code(session_id)} as {ui.md(str(done['by']))}:"
        f" {ui.fmt_int(done['rows'])} rows; files rewritten {done['files_rewritten']},"
        f" removed {done['files_removed']}; tombstone {ui.code(done['tombstone'] or '-')}"
        f" (reason: {ui.md(str(done['reason']))}). `tooltrail verify` reports it as a"
        " sanctioned deletion.",
        icon=":material/delete:",
    )
    return True


__all__ = [
    "DELETED_KEY",
    "SESSION_ACTIONS",
    "approval_card",
    "approvals_bulk_bar",
    "common_session_actions",
    "control_callback",
    "decide_callback",
    "delete_callback",
    "delete_session_panel",
    "deleted_notice",
    "operator_hint",
    "session_control_bar",
    "summary_of",
    "valid_session_actions",
    "why_not_decidable",
]
