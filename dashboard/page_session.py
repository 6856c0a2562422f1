"""Session detail (``/session?session=<id>``): the header aggregates and session control,
every action in sequence order (select one to inspect its arguments, rewrite diff,
matched rules and approval record), a timeline, the parent / sub-agent tree, token
usage and the activity trace (trace_view.py)."""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Mapping
from typing import Any, Final

import polars as pl
import streamlit as st

from tooltrail.dashboard import components, data, nav, trace_view, ui
from tooltrail.errors import PolicyError
from tooltrail.policy import Policy

TREE_LIMIT: Final = 200
RECENT: Final = 50
# What was decided first; the long summary last, where it takes the remaining width.
ACTION_COLUMNS: Final = (
    "sequence",
    "start_time",
    "tool_name",
    "decision",
    "blast_radius",
    "policy_rule",
    "approval_status",
    "outcome",
    "tool_changed",
    "duration_ms",
    "action_summary",
)
OUTCOME_LABELS: Final = {"ok": "green", "refused": "orange", "error": "red"}


def render() -> None:
    ctx = nav.context()
    session_id = st.query_params.get(nav.SESSION_PARAM)
    if not session_id:
        ui.header("Session detail")
        _picker(ctx)
        return
    head = ctx.data.session(session_id)
    if head is None:
        ui.header("Session detail")
        if not components.deleted_notice(session_id):
            st.warning(f"No session {ui.code(session_id)} has landed in {ui.code(ctx.root)}.")
        _picker(ctx)
        return
    _header(ctx, head)
    actions = ctx.data.session_actions(session_id)
    tabs = st.tabs(
        [
            f"Actions ({actions.height})",
            "Timeline",
            "Related sessions",
            "Token usage",
            "Activity trace",
        ],
        key=f"session_tabs_{session_id}",
    )
    with tabs[0]:
        _actions(ctx, session_id, actions)
    with tabs[1]:
        if actions.is_empty():
            st.caption("This session has no tool calls yet.")
        else:
            st.caption(
                "Each dot is an action when it started, on its tool's row; the bar behind it "
                "is how long it ran (held calls include the wait for approval)."
            )
            st.altair_chart(ui.timeline_chart(actions), width="stretch")
    with tabs[2]:
        _tree(ctx, head)
    with tabs[3]:
        _tokens(ctx, head)
    with tabs[4]:
        trace_view.render(ctx, session_id)


# --- choosing a session --------------------------------------------------------------------


def _picker(ctx: nav.Context) -> None:
    if not ctx.data.has_spans():
        ui.empty_state("No sessions yet", ui.no_data_hint(str(ctx.root)))
        return
    recent = ctx.data.sessions({}, limit=RECENT, offset=0)
    labels = {
        r["session_id"]: f"{r['session_id']} · {r['agent_name'] or 'unknown agent'} · {r['status']}"
        for r in recent.iter_rows(named=True)
    }
    left, right = st.columns(2)
    choice = left.selectbox(
        "Recent sessions",
        list(labels),
        index=None,
        format_func=lambda s: labels.get(s, s),
        placeholder="Choose a session",
        key="session_pick",
    )
    typed = right.text_input("Or a session id", key="session_typed").strip()
    target = typed or choice
    if target:
        st.query_params[nav.SESSION_PARAM] = target
        st.rerun()


# --- header and control --------------------------------------------------------------------


def _header(ctx: nav.Context, head: Mapping[str, Any]) -> None:
    session_id = str(head["session_id"])
    st.title(f"Session {ui.md(session_id)}", anchor=False)
    agent = head.get("agent_name") or "unknown agent"
    facts = [
        ui.chip(head.get("status"), ui.STATUS_COLORS),
        f"**{ui.md(str(agent))}**",
    ]
    if head.get("trigger"):
        facts.append(f"triggered by {ui.md(head['trigger'])}")
    if head.get("parent_session_id"):
        facts.append(f"sub-agent of {ui.code(head['parent_session_id'])}")
    governed = ui.governed_by_text(head)
    if governed:  # the gateway's sessions say so in bold: governed from outside the agent
        gateway = head.get("governed_by") == "gateway"
        facts.append(f"**{ui.md(governed)}**" if gateway else ui.md(governed))
    if head.get("tags"):
        facts.append("tags " + ", ".join(ui.code(t) for t in head["tags"]))
    st.markdown(" · ".join(facts))
    ended = trace_view.end_line(head)
    if ended:
        st.caption(ended)
    claimed = int(head.get("claimed_calls") or 0)
    if claimed:  # issue 17: decisions tooltrail did not make are shown as claimed
        st.warning(
            f"{claimed} decision{'s' if claimed != 1 else ''} only claimed: sent without an"
            " agent's credential, or by an agent's credential for another agent or into a"
            " session another agent holds (not tooltrail's; never counted as enforced).",
            icon=":material/gpp_maybe:",
        )
    foreign = int(head.get("foreign_spans") or 0)
    if foreign:  # SECURITY §8: listed, marked claimed, but not the session's status or totals
        st.warning(
            f"{foreign} span{'s' if foreign != 1 else ''} sent into this session by another"
            " agent: listed (marked claimed), but not counted in its status, end, times or"
            " tokens.",
            icon=":material/gpp_maybe:",
        )
    changed = int(head.get("changed_tool_calls") or 0)
    if changed:
        st.warning(
            f"{changed} call{'s' if changed != 1 else ''} to a tool whose definition changed"
            " since it was pinned (marked below).",
            icon=":material/report:",
        )
    main, control = st.columns([3, 1], gap="large")
    with main:
        cols = st.columns(6)
        cols[0].metric("Actions", ui.fmt_int(head.get("total_actions")), border=True)
        cols[1].metric("Allowed", ui.fmt_int(head.get("allows")), border=True)
        cols[2].metric("Denied", ui.fmt_int(head.get("denies")), border=True)
        cols[3].metric("Rewritten", ui.fmt_int(head.get("rewrites")), border=True)
        cols[4].metric("Approvals", ui.fmt_int(head.get("approvals")), border=True)
        cols[5].metric("Errors", ui.fmt_int(head.get("errors")), border=True)
        started, last = head.get("started_at"), head.get("last_activity_at")
        duration = (last - started).total_seconds() * 1000 if started and last else None
        repos = ", ".join(ui.code(r) for r in head.get("repos") or []) or "–"
        st.markdown(
            f"Max blast radius {ui.chip(head.get('max_blast_radius'), ui.RADIUS_COLORS)} · "
            f"started {ui.fmt_ts(started)} · last action {ui.fmt_ago(head.get('last_action_at'))}"
            f" · duration {ui.fmt_ms(duration)} · repositories {repos}"
        )
    with control:
        _control(ctx, head)
        components.delete_session_panel(head, ctx.root, key=f"session-{session_id}")


def _control(ctx: nav.Context, head: Mapping[str, Any]) -> None:
    session_id = str(head["session_id"])
    state = head.get("control_state")
    if state is None:  # a session nobody paused or canceled: not "running" once it ended
        st.markdown("**Session control** never paused or canceled")
    else:
        st.markdown(f"**Session control** {ui.chip(state, _CONTROL_COLORS)}")
    components.session_control_bar(
        [session_id], [head.get("control_state")], ctx.root, key=f"session-{session_id}"
    )
    history = ctx.data.control_history(session_id)
    with st.expander(f"Control history ({len(history)})", expanded=bool(history)):
        if not history:
            st.caption("Never paused, resumed or canceled.")
        for event in reversed(history):
            reason = f" — {ui.md(event.reason)}" if event.reason else ""
            # An OpenID sign-in's change names the relay that signed it (SECURITY.md §7.6).
            vouched = (
                f" ({event.role}, via OpenID, vouched by {event.relay})" if event.relay else ""
            )
            st.markdown(
                f"**{event.action}** by {ui.md(event.actor + vouched)}"
                f" · {ui.fmt_ts(_utc(event.at))}{reason}"
            )


_CONTROL_COLORS: Final = {"running": "blue", "paused": "orange", "canceled": "gray"}


def _utc(epoch_s: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC)


# --- actions -------------------------------------------------------------------------------


def _actions(ctx: nav.Context, session_id: str, actions: pl.DataFrame) -> None:
    if actions.is_empty():
        st.caption("This session has no tool calls yet.")
        return
    table_key = f"actions_table_{session_id}"
    pick_key = f"inspect_action_{session_id}"
    outcomes = actions.select(_outcome()).to_series()
    marks = ui.changed_tool_marks(actions)
    shown = ui.as_chips(
        ui.labelled(actions.with_columns(outcomes, marks).select(ACTION_COLUMNS), "tool_name"),
        "decision",
        "blast_radius",
        "approval_status",
        "outcome",
        "tool_changed",
    )
    ui.table(
        shown,
        key=table_key,
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "sequence": st.column_config.NumberColumn("#", width="small"),
            "start_time": ui.time_column("Time (UTC)"),
            "tool_name": st.column_config.TextColumn("Tool"),
            "action_summary": st.column_config.TextColumn("Summary", width="large"),
            "decision": ui.decision_column(),
            "blast_radius": ui.radius_column(),
            "policy_rule": st.column_config.TextColumn("Verdict"),
            "approval_status": ui.chip_column("Approval", ui.OUTCOME_COLORS),
            "duration_ms": st.column_config.NumberColumn("Duration", format="%.0f ms"),
            "outcome": ui.chip_column(
                "Outcome", OUTCOME_LABELS, help="ok; refused by tooltrail; or the tool failed"
            ),
            "tool_changed": ui.chip_column(
                "Tool definition",
                ui.CHANGED_TOOL_HEX,
                help="changed: the tool's definition differed from the one pinned for it",
            ),
        },
    )
    rows = list(actions.iter_rows(named=True))
    _sync_pick(table_key, pick_key, len(rows))
    position = st.selectbox(
        "Inspect action",
        list(range(len(rows))),
        index=None,
        format_func=lambda i: _action_label(rows[i]),
        placeholder="Select a row above, or choose an action",
        key=pick_key,
    )
    if position is not None:
        approvals = ctx.data.approvals(session_id=session_id)
        _action_detail(rows[int(position)], outcomes[int(position)], approvals, _policy(ctx))


def _outcome() -> pl.Expr:
    """How the call ended: refused by tooltrail (denied / not approved), failed, or ok."""
    return (
        pl.when(pl.col("error_type") == "tool_call_denied")
        .then(pl.lit("refused"))
        .when(pl.col("status_code") == "ERROR")
        .then(pl.lit("error"))
        .otherwise(pl.lit("ok"))
        .alias("outcome")
    )


def _sync_pick(table_key: str, pick_key: str, count: int) -> None:
    """A newly selected table row becomes the inspected action (the selectbox stays free
    to choose another one until the table selection changes again)."""
    rows = [r for r in ui.selected_rows(table_key) if r < count]
    seen_key = f"_{table_key}_seen"
    if rows != st.session_state.get(seen_key):
        st.session_state[seen_key] = rows
        if rows:
            st.session_state[pick_key] = rows[0]


def _action_label(row: Mapping[str, Any]) -> str:
    seq = row.get("sequence")
    tool = ui.label_of("tool", row.get("tool_name"))
    label = f"#{seq if seq is not None else '?'} · {tool} · {row.get('decision') or ui.UNDECIDED}"
    return label + (" · tool definition changed" if row.get("tool_definition_changed") else "")


def _policy(ctx: nav.Context) -> Policy | None:
    try:
        return data.active_policy(ctx.config.policy_path)
    except PolicyError:
        return None  # the Policy page reports why; rule details are optional here


def _action_detail(
    row: Mapping[str, Any], outcome: str, approvals: pl.DataFrame, policy: Policy | None
) -> None:
    with st.container(border=True):
        st.markdown(f"#### {ui.md(_action_label(row))}")
        st.markdown(ui.md(str(row.get("action_summary") or "")))
        cols = st.columns(5)
        cols[0].markdown("Decision\n\n" + ui.chip(row.get("decision"), ui.DECISION_COLORS))
        cols[1].markdown("Blast radius\n\n" + ui.chip(row.get("blast_radius"), ui.RADIUS_COLORS))
        cols[2].markdown(f"Verdict\n\n{ui.code(row.get('policy_rule') or '–')}")
        enforced = row.get("enforced")
        cols[3].markdown(
            "Enforced\n\n"
            + (
                trace_view.claimed_note(row)
                if row.get("verified") is False
                else "at call time"
                if enforced
                else "after the fact"
                if enforced is False
                else "–"
            )
        )
        cols[4].markdown(f"Execution\n\n{ui.fmt_ms(row.get('duration_ms'))} · {outcome}")
        if row.get("status_message"):
            st.caption(f"Status: {ui.md(str(row['status_message']))}")
        if row.get("tool_definition_changed"):
            st.warning(
                f"{ui.md(str(row.get('tool_name') or 'This tool'))}'s definition had changed"
                " since it was pinned: the server now serves definition"
                f" {ui.code(row.get('tool_definition_hash') or '–')}.",
                icon=":material/report:",
            )
        left, right = st.columns(2)
        with left:
            st.markdown("**Arguments**")
            st.code(ui.pretty_json(row.get("arguments")) or "{}", language="json")
            if row.get("result_preview"):
                st.markdown("**Result (preview)**")
                st.code(str(row["result_preview"]), language=None, wrap_lines=True)
        with right:
            if row.get("arguments_rewritten"):
                _rewrite(row)
            _matched_rules(row, policy)
            _approval_record(row, approvals)
        with st.expander("All span attributes"):
            st.json(_span_details(row), expanded=False)


def _rewrite(row: Mapping[str, Any]) -> None:
    before = _as_object(row.get("arguments"))
    after = _as_object(row.get("arguments_rewritten"))
    st.markdown("**Rewrite**")
    changed = [
        {"argument": k, "before": _show(before.get(k)), "after": _show(after.get(k))}
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    ]
    ui.table(pl.DataFrame(changed, schema=["argument", "before", "after"]), hide_index=True)
    diff = difflib.unified_diff(
        _pretty(before).splitlines(),
        _pretty(after).splitlines(),
        "arguments",
        "rewritten",
        lineterm="",
    )
    st.code("\n".join(diff), language="diff")


def _as_object(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, ensure_ascii=False)


def _matched_rules(row: Mapping[str, Any], policy: Policy | None) -> None:
    matched = list(row.get("policy_matched") or [])
    verdict = row.get("policy_rule")
    st.markdown("**Matched rules**")
    if not matched:
        st.caption(f"No rule matched (verdict {ui.code(verdict or '–')}).")
        return
    rules = {r.id: r for r in policy.rules} if policy is not None else {}
    for rule_id in matched:
        rule = rules.get(rule_id)
        mark = " — **verdict**" if rule_id == verdict else ""
        what = ""
        if rule is not None:
            what = f" {ui.chip(rule.decision, ui.DECISION_COLORS)}"
            if rule.reason:
                what += f" {ui.md(rule.reason)}"
        st.markdown(f"- {ui.code(rule_id)}{what}{mark}")


def _approval_record(row: Mapping[str, Any], approvals: pl.DataFrame) -> None:
    if row.get("decision") != "REQUIRE_APPROVAL" and not row.get("approval_id"):
        return
    st.markdown("**Approval**")
    same_span = pl.col("span_id") == row["span_id"]
    if row.get("approval_id"):
        same_span = same_span | (pl.col("approval_id") == row["approval_id"])
    match = approvals.filter(same_span)
    if match.is_empty():
        st.caption(f"Span status: {row.get('approval_status') or 'none recorded'}.")
        return
    rec = match.row(0, named=True)
    lines = [
        f"{ui.chip(rec['outcome'], ui.OUTCOME_COLORS)} {ui.code(rec['approval_id'] or '–')}",
        f"requested {ui.fmt_ts(rec['requested_at'])}",
        f"decided {ui.fmt_ts(rec['decided_at'])}"
        + (f" by **{ui.md(str(rec['decided_by']))}**" if rec["decided_by"] else ""),
        f"waited {ui.fmt_ms(rec['wait_ms'])}",
    ]
    if rec.get("reason"):
        lines.append(f"reason: {ui.md(str(rec['reason']))}")
    st.markdown("  \n".join(lines))


def _span_details(row: Mapping[str, Any]) -> dict[str, Any]:
    details: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("attributes", "resource"):
            try:
                details[key] = json.loads(value) if value else None
            except ValueError:
                details[key] = value
        elif hasattr(value, "isoformat"):
            details[key] = value.isoformat()
        else:
            details[key] = value
    return details


# --- related sessions and tokens -----------------------------------------------------------


def _tree(ctx: nav.Context, head: Mapping[str, Any]) -> None:
    links = ctx.data.session_links()
    parent_of = dict(
        zip(
            links.get_column("session_id").to_list(),
            links.get_column("parent_session_id").to_list(),
            strict=True,
        )
    )
    children: dict[str, list[dict[str, Any]]] = {}
    for child in links.iter_rows(named=True):
        children.setdefault(str(child["parent_session_id"]), []).append(child)
    current = str(head["session_id"])
    root, seen = current, {current}
    while parent_of.get(root) is not None and parent_of[root] not in seen:
        root = str(parent_of[root])
        seen.add(root)
    if root == current and head.get("parent_session_id"):
        root = str(head["parent_session_id"])  # the parent has not landed any span yet
    if root == current and current not in children:
        st.caption("No parent and no sub-agent sessions.")
        return
    st.caption("The session tree this session belongs to (parent first, sub-agents below).")
    budget = [TREE_LIMIT]
    # Every other node is a row of `links`; only the root may need its own look-up.
    root_head = head if root == current else ctx.data.session(root)
    _node(root, root_head, 0, current, children, budget, visited=set())
    if budget[0] <= 0:
        st.caption(f"Showing the first {TREE_LIMIT} sessions of the tree.")


def _node(
    session_id: str,
    head: Mapping[str, Any] | None,
    depth: int,
    current: str,
    children: Mapping[str, list[dict[str, Any]]],
    budget: list[int],
    visited: set[str],
) -> None:
    if budget[0] <= 0 or session_id in visited:
        return
    budget[0] -= 1
    visited.add(session_id)
    if head is None:
        about = "not landed"
    else:
        about = (
            f"{head.get('agent_name') or 'unknown agent'} · {head.get('status')} · "
            f"{ui.fmt_int(head.get('total_actions'))} actions"
        )
    indent = "\u2003\u2003" * depth + ("↳ " if depth else "")
    name, about = ui.md(session_id), ui.md(about)
    if session_id == current:
        st.markdown(f"{indent}**{name}** · {about} (this session)")
    elif head is None:
        st.markdown(f"{indent}{name} · {about}")
    else:
        nav.session_link(session_id, label=f"{indent}{name} · {about}")
    for child in children.get(session_id, []):
        _node(str(child["session_id"]), child, depth + 1, current, children, budget, visited)


def _tokens(ctx: nav.Context, head: Mapping[str, Any]) -> None:
    cols = st.columns(3)
    cols[0].metric("Input tokens", ui.fmt_int(head.get("input_tokens") or 0), border=True)
    cols[1].metric("Output tokens", ui.fmt_int(head.get("output_tokens") or 0), border=True)
    usage = ctx.data.llm_usage(str(head["session_id"]))
    cols[2].metric("LLM calls", ui.fmt_int(usage.get_column("calls").sum()), border=True)
    if usage.is_empty():
        st.caption("No LLM spans landed for this session.")
        return
    ui.table(
        usage,
        hide_index=True,
        column_config={
            "model": "Model",
            "calls": ui.count_column("Calls"),
            "input_tokens": ui.count_column("Input tokens"),
            "output_tokens": ui.count_column("Output tokens"),
        },
    )


if __name__ == "__main__":
    render()
