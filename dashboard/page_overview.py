"""Overview: KPIs for a time range, decisions over time, the blast-radius mix, the tools
whose definition changed since the gateway pinned them (when any were called) and the
five oldest pending approvals with Approve / Deny."""

from __future__ import annotations

from typing import Final

import polars as pl
import streamlit as st

from tooltrail.dashboard import components, nav, ui
from tooltrail.schema import BLAST_RADII

PENDING_SHOWN: Final = 5
CHANGE_COLUMNS: Final = (
    "server",
    "tool",
    "first_call_at",
    "calls",
    "got",
    "last_call_at",
    "clients",
    "pin_status",
    "definition_hash",
)


def render() -> None:
    ctx = nav.context()
    ui.header("Overview", "What agents did, what the policy decided, and what waits for a human.")
    pending = ctx.data.pending()
    if not ctx.data.has_spans() and pending.is_empty():
        ui.empty_state("No agent activity yet", ui.no_data_hint(str(ctx.root)))
        return
    with st.columns([1, 3])[0]:
        since = ui.time_range("overview_range", default="Last 24 hours")
    kpis = ctx.data.kpis(since)
    columns = st.columns(5)
    columns[0].metric(
        "Active sessions",
        ui.fmt_int(ctx.data.active_sessions()),
        help="Sessions with activity within the idle window (now, whatever the range).",
        border=True,
    )
    columns[1].metric("Actions", ui.fmt_int(kpis["actions"]), border=True)
    columns[2].metric("Denied", ui.fmt_int(kpis["denies"]), border=True)
    columns[3].metric("Rewritten", ui.fmt_int(kpis["rewrites"]), border=True)
    columns[4].metric(
        "Pending approvals",
        ui.fmt_int(pending.height),
        help="Requests waiting for a decision (now, whatever the range).",
        border=True,
    )
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Decisions over time", anchor=False)
        bucket = ui.bucket_for(since)
        frame = ctx.data.decisions_over_time(since, bucket)
        if frame.is_empty():
            st.caption("No actions in this time range.")
        else:
            start, end = ui.range_bounds(since)
            st.altair_chart(ui.decisions_chart(frame, bucket, start, end), width="stretch")
    with right:
        st.subheader("Blast-radius mix", anchor=False)
        _blast_mix(ctx, since)
    _tool_changes(ctx, since)
    _pending_panel(ctx, pending)


def _tool_changes(ctx: nav.Context, since: str | None) -> None:
    """Rug pulls and poisoned descriptions: calls the gateway flagged, per changed tool."""
    changes = ctx.data.tool_changes(since)
    if changes.is_empty():
        return  # nothing to say (and nothing at all without the gateway)
    st.subheader("Tool definitions changed", anchor=False)
    st.caption(
        "Tools whose definition differs from the one the gateway pinned, with the calls"
        " they got since. Accept a change with `tooltrail tools accept SERVER TOOL`."
    )
    shown = ui.as_chips(ui.labelled(changes.select(CHANGE_COLUMNS), "tool", "server"), "pin_status")
    ui.table(
        shown,
        key="overview_tool_changes",
        hide_index=True,
        width="stretch",
        column_config={
            "server": st.column_config.TextColumn("Server"),
            "tool": st.column_config.TextColumn("Tool"),
            "first_call_at": ui.time_column("Changed, first call (UTC)"),
            "last_call_at": ui.time_column("Last call (UTC)"),
            "calls": ui.count_column("Calls since", width="small"),
            "got": st.column_config.TextColumn("What they got", width="medium"),
            "clients": st.column_config.ListColumn("MCP clients"),
            "pin_status": ui.chip_column("Pin", ui.PIN_STATUS_HEX),
            "definition_hash": st.column_config.TextColumn("Definition"),
        },
    )


def _blast_mix(ctx: nav.Context, since: str | None) -> None:
    by_day = ctx.data.blast_stats("day", since)
    if by_day.is_empty():
        st.caption("No actions in this time range.")
        return
    names = {r.lower(): r for r in BLAST_RADII} | {"unrated": "unrated"}
    totals = by_day.select(pl.col(c).sum() for c in names).row(0, named=True)
    counts = {label: int(totals[c] or 0) for c, label in names.items()}
    st.altair_chart(ui.radius_mix_chart(counts), width="stretch")
    st.markdown(
        " &nbsp; ".join(
            f"{ui.chip(r, ui.RADIUS_COLORS)} **{ui.fmt_int(counts[r])}**" for r in BLAST_RADII
        )
    )


def _pending_panel(ctx: nav.Context, pending: pl.DataFrame) -> None:
    st.subheader("Pending approvals", anchor=False)
    if pending.is_empty():
        st.caption("Nothing is waiting for a decision.")
        return
    shown = pending.head(PENDING_SHOWN)
    more = pending.height - shown.height
    st.caption(
        f"The {shown.height} oldest of {pending.height} request"
        f"{'s' if pending.height != 1 else ''}, oldest first."
        + (" See Approvals for the rest." if more else "")
    )
    components.operator_hint()
    for row in shown.iter_rows(named=True):
        components.approval_card(row, ctx.root, key="overview")
    if more:
        st.page_link(nav.page("approvals"), label=f"{more} more pending", icon=":material/east:")


if __name__ == "__main__":
    render()
