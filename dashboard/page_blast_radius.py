"""Blast radius: the mix of Low / Medium / High / Critical actions by agent, tool,
repository or day (the trend), and the list of critical actions."""

from __future__ import annotations

from typing import Final

import polars as pl
import streamlit as st

from tooltrail import analytics
from tooltrail.dashboard import nav, ui
from tooltrail.schema import BLAST_RADII

CHART_GROUPS: Final = 25
CRITICAL_LIMIT: Final = 200
_LABELS: Final = {"agent": "Agent", "tool": "Tool", "repo": "Repository", "day": "Day"}


def render() -> None:
    ctx = nav.context()
    ui.header(
        "Blast radius",
        "How much harm the calls agents make could do: by agent, tool, repository and day.",
    )
    if not ctx.data.has_spans():
        ui.empty_state("No actions yet", ui.no_data_hint(str(ctx.root)))
        return
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    with left:
        since = ui.time_range("blast_range", default="Last 30 days")
    by = right.segmented_control(
        "Group by",
        analytics.BLAST_RADIUS_GROUPS,
        default="agent",
        format_func=_LABELS.__getitem__,
        key="blast_by",
        required=True,
    )
    by = str(by or "agent")
    # Tool spans from other instrumentations may carry no agent, tool or repository: their
    # group is named ("(unknown agent)"), never null (a chart cannot sort on null).
    frame = ui.labelled(ctx.data.blast_stats(by, since), by)
    if frame.is_empty():
        st.caption("No actions in this time range.")
        return
    _totals(frame)
    if by == "day":
        st.subheader("Trend", anchor=False)
        st.altair_chart(ui.radius_trend_chart(frame, *ui.range_bounds(since)), width="stretch")
    else:
        st.subheader(f"By {_LABELS[by].lower()}", anchor=False)
        if frame.height > CHART_GROUPS:
            st.caption(
                f"The {CHART_GROUPS - 1} busiest of {frame.height}, the rest as one bar; "
                "all are in the table."
            )
        top = ui.top_groups(frame, by, CHART_GROUPS)
        st.altair_chart(ui.radius_chart(top, by, horizontal=True), width="stretch")
    ui.table(
        ui.as_chips(frame, "max_blast_radius"),
        hide_index=True,
        width="stretch",
        column_config={
            by: _LABELS[by],
            "actions": ui.count_column("Actions"),
            "low": ui.count_column("Low"),
            "medium": ui.count_column("Medium"),
            "high": ui.count_column("High"),
            "critical": ui.count_column("Critical"),
            "unrated": ui.count_column("Unrated"),
            "max_blast_radius": ui.radius_column("Highest"),
        },
    )
    _critical(ctx, since)


def _totals(frame: pl.DataFrame) -> None:
    sums = frame.select(pl.col("actions", "low", "medium", "high", "critical").sum()).row(
        0, named=True
    )
    cols = st.columns(1 + len(BLAST_RADII))
    cols[0].metric("Actions", ui.fmt_int(sums["actions"]), border=True)
    for col, radius in zip(cols[1:], BLAST_RADII, strict=True):
        count = int(sums[radius.lower()] or 0)
        share = count / sums["actions"] if sums["actions"] else 0.0
        # A share, not a change: no trend arrow.
        col.metric(
            radius,
            ui.fmt_int(count),
            f"{share:.1%} of actions",
            delta_color="off",
            delta_arrow="off",
            border=True,
        )


def _critical(ctx: nav.Context, since: str | None) -> None:
    st.subheader("Critical actions", anchor=False)
    frame = ctx.data.critical_actions(since, CRITICAL_LIMIT)
    if frame.is_empty():
        st.caption("No critical action in this time range.")
        return
    st.caption(
        f"The newest {frame.height} critical actions"
        + (" (limit reached)" if frame.height == CRITICAL_LIMIT else "")
        + ". Select one to open its session."
    )
    key = "critical_table"
    ui.table(
        ui.as_chips(ui.labelled(frame.drop("status_code"), "agent_name", "tool_name"), "decision"),
        key=key,
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            "start_time": ui.time_column("Time (UTC)"),
            "session_id": "Session",
            "agent_name": "Agent",
            "tool_name": "Tool",
            "action_summary": st.column_config.TextColumn("Summary", width="large"),
            "decision": ui.decision_column(),
            "policy_rule": "Verdict",
            "target_repo": "Repository",
            "target_branch": "Branch",
        },
    )
    rows = [r for r in ui.selected_rows(key) if r < frame.height]
    if rows:
        session_id = str(frame.row(rows[0], named=True)["session_id"])
        nav.session_link(session_id, label=f"Open session {session_id}", icon=":material/east:")


if __name__ == "__main__":
    render()
