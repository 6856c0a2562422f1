"""Approvals: pending requests (approve / deny with a reason, one at a time or in bulk),
the history of every request, and time-to-decision statistics per rule and approver."""

from __future__ import annotations

from typing import Any, Final

import polars as pl
import streamlit as st

from tooltrail import analytics
from tooltrail.dashboard import components, nav, ui

CARDS_SHOWN: Final = 20
GONE_WITHIN: Final = "24h"  # requests whose agent stopped waiting, shown under Pending
HISTORY_LIMIT: Final = 1_000
OUTCOMES: Final = analytics.APPROVAL_STATUSES  # all, pending, approved, denied, ...


def render() -> None:
    ctx = nav.context()
    ui.header("Approvals", "Tool calls held for a human decision, and every decision made.")
    pending = ctx.data.pending()
    if not ctx.data.has_spans() and pending.is_empty() and ctx.data.approvals().is_empty():
        ui.empty_state(
            "No approval requests yet",
            "A tool call waits here when a policy rule says `REQUIRE_APPROVAL`, e.g. a commit "
            "to a release repository. " + ui.no_data_hint(str(ctx.root)),
        )
        return
    pending_tab, history_tab, stats_tab = st.tabs(
        [f"Pending ({pending.height})", "History", "Time to decision"], key="approvals_tabs"
    )
    with pending_tab:
        _pending(ctx, pending)
        _gone(ctx)
    with history_tab:
        _history(ctx)
    with stats_tab:
        _stats(ctx)


def _pending(ctx: nav.Context, pending: pl.DataFrame) -> None:
    if pending.is_empty():
        st.caption("Nothing is waiting for a decision.")
        return
    table = pending.with_columns(
        pl.Series("summary", [components.summary_of(r) for r in pending.iter_rows(named=True)])
    )
    table = ui.labelled(table, "agent_name", "tool_name").select(
        "requested_at",
        "agent_name",
        "tool_name",
        "summary",
        "blast_radius",
        "policy_rule",
        "session_id",
        "expires_at",
        "approvers",
        "approval_id",
    )
    components.operator_hint()
    key = "pending_table"
    ui.table(
        ui.as_chips(table, "blast_radius"),
        key=key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        width="stretch",
        column_config={
            "requested_at": ui.time_column("Requested (UTC)"),
            "agent_name": "Agent",
            "tool_name": "Tool",
            "summary": st.column_config.TextColumn("Summary", width="large"),
            "blast_radius": ui.radius_column(),
            "policy_rule": "Rule",
            "session_id": "Session",
            "expires_at": ui.time_column("Expires (UTC)"),
            "approvers": st.column_config.ListColumn("Approvers"),
            "approval_id": "Request",
        },
    )
    selected = [pending.row(i, named=True) for i in ui.selected_rows(key) if i < pending.height]
    components.approvals_bulk_bar(selected, ctx.root, key="approvals")
    st.markdown("##### Decide one by one")
    for row in pending.head(CARDS_SHOWN).iter_rows(named=True):
        components.approval_card(row, ctx.root, key="approvals")
    if pending.height > CARDS_SHOWN:
        st.caption(
            f"{pending.height - CARDS_SHOWN} more: select them in the table to decide in bulk."
        )


def _gone(ctx: nav.Context) -> None:
    """Requests of the last day whose agent stopped waiting before anyone decided: shown
    as such (no Approve / Deny), so nobody looks for a card that silently vanished."""
    gone = ctx.data.approvals("abandoned", since=GONE_WITHIN, limit=CARDS_SHOWN)
    if gone.is_empty():
        return
    st.markdown("##### Agent stopped waiting")
    st.caption(
        "These requests were not decided before their agent gave up, was cancelled or "
        "died. Their calls never ran; approving them could not take effect."
    )
    for row in gone.iter_rows(named=True):
        components.approval_card(row, ctx.root, key="approvals-gone")


def _history(ctx: nav.Context) -> None:
    left, right = st.columns([1, 3])
    with left:
        since = ui.time_range("approvals_range", default="Last 30 days", label="Requested within")
    outcome = right.segmented_control(
        "Outcome",
        OUTCOMES,
        default="all",
        required=True,
        format_func=lambda o: o.replace("_", " "),
        key="approvals_out",
    )
    # One page of history: a million actions can hold tens of thousands of requests.
    frame = ctx.data.approvals(str(outcome or "all"), since=since, limit=HISTORY_LIMIT + 1)
    if frame.is_empty():
        st.caption("No request in this range.")
        return
    more = frame.height > HISTORY_LIMIT
    frame = frame.head(HISTORY_LIMIT)
    table = ui.labelled(frame, "agent_name", "tool_name").select(
        "requested_at",
        "decided_at",
        "decided_by",  # null like the other undecided cells: one placeholder per table
        (pl.col("wait_ms") / 1000).alias("wait_s"),
        "outcome",
        (pl.col("outcome") == "expired").alias("expired"),
        "policy_rule",
        "agent_name",
        "tool_name",
        "session_id",
        "reason",
        "approval_id",
    )
    st.markdown(
        f"**{ui.fmt_int(table.height)}** request{'s' if table.height != 1 else ''}"
        + (f", the newest {ui.fmt_int(HISTORY_LIMIT)} (the SQL page has them all)" if more else "")
    )
    ui.table(
        ui.as_chips(table, "outcome"),
        key="approvals_history",
        hide_index=True,
        width="stretch",
        column_config={
            "requested_at": ui.time_column("Requested (UTC)"),
            "decided_at": ui.time_column("Decided (UTC)"),
            "decided_by": "Decided by",
            "wait_s": st.column_config.NumberColumn("Wait", format="%.1f s"),
            "outcome": ui.chip_column("Outcome", ui.OUTCOME_COLORS),
            "expired": st.column_config.CheckboxColumn("Expired"),
            "policy_rule": "Rule",
            "agent_name": "Agent",
            "tool_name": "Tool",
            "session_id": "Session",
            "reason": "Reason",
            "approval_id": "Request",
        },
    )


def _stats(ctx: nav.Context) -> None:
    with st.columns([1, 3])[0]:
        since = ui.time_range("approvals_stats_range", default="Last 30 days")
    st.caption(
        "Time to decision counts requests a person approved or denied; expired ones are "
        "in the expired share."
    )
    for by, title in (("rule", "Per rule"), ("approver", "Per approver")):
        st.subheader(title, anchor=False)
        frame = ctx.data.approval_stats(by, since)
        if frame.is_empty():
            st.caption("No request in this range.")
            continue
        table = frame.with_columns(
            pl.col(by).fill_null("(undecided)" if by == "approver" else "(none)"),
            (pl.col("median_wait_ms") / 1000).alias("median_wait_ms"),
            (pl.col("p95_wait_ms") / 1000).alias("p95_wait_ms"),
        )
        ui.table(
            table,
            key=f"approval_stats_{by}",
            hide_index=True,
            width="stretch",
            column_config=_stats_config(by),
        )
        waits = frame.filter(pl.col("median_wait_ms").is_not_null())
        if not waits.is_empty():
            st.altair_chart(ui.wait_chart(waits, by), width="stretch")


def _stats_config(by: str) -> dict[str, Any]:
    return {
        by: by.capitalize(),
        "requests": ui.count_column("Requests"),
        "approved": ui.count_column("Approved"),
        "denied": ui.count_column("Denied"),
        "expired": ui.count_column("Expired"),
        "pending": ui.count_column("Pending"),
        "not_requested": ui.count_column("Not requested"),
        "abandoned": ui.count_column("Agent gone"),
        "share_expired": st.column_config.NumberColumn("Expired share", format="percent"),
        # shown in seconds (divided above); the column names stay those of approval_stats
        "median_wait_ms": st.column_config.NumberColumn("Median wait", format="%.1f s"),
        "p95_wait_ms": st.column_config.NumberColumn("p95 wait", format="%.1f s"),
    }


if __name__ == "__main__":
    render()
