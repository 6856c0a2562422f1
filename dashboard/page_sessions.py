"""Sessions: every session, most recent activity first, with filters, paging and bulk
pause / cancel. Select one row to open it. The "Governed by" badge tells sessions through
the MCP gateway apart from instrumented ones (and a filter lists only those).

Paging asks ``analytics.sessions`` for one page (``limit`` / ``offset``) and
``count_sessions`` for the total, both served by the session index: a page costs the
same on a million actions as on a hundred.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Final

import streamlit as st

from tooltrail import analytics
from tooltrail.dashboard import components, nav, ui
from tooltrail.schema import BLAST_RADII, DECISIONS

PAGE_SIZES: Final = (10, 25, 50, 100)
PAGE_KEY: Final = "sessions_page"
_ANY: Final = "Any"
# What an operator scans first on the left; the wide repository list last.
COLUMNS: Final = (
    "session_id",
    "agent_name",
    "status",
    "governed_by",
    "max_blast_radius",
    "action_count",
    "allows",
    "denies",
    "rewrites",
    "approvals",
    "claimed_calls",
    "last_action_at",
    "started_at",
    "mcp_client_name",
    "tags",
    "repos",
)


def _pick(column: Any, label: str, options: list[str], key: str) -> str | None:
    choice = column.selectbox(label, [_ANY, *options], key=key)
    return None if choice in (None, _ANY) else str(choice)


def filters(ctx: nav.Context) -> dict[str, Any]:
    agents, repos = ctx.data.filter_options()
    top = st.columns([3, 1])
    search = top[0].text_input(
        "Search by session id",
        key="sessions_search",
        placeholder="Part of a session id, e.g. 7f3a",
        icon=":material/search:",
    )
    with top[1]:
        since = ui.time_range("sessions_range", default="All time", label="Active within")
    cols = st.columns(6)
    return {
        "since": since,
        "agent": _pick(cols[0], "Agent", agents, "sessions_agent"),
        "status": _pick(cols[1], "Status", list(analytics.SESSION_STATUSES), "sessions_status"),
        "decision": _pick(cols[2], "Has a decision", list(DECISIONS), "sessions_decision"),
        "repo": _pick(cols[3], "Repository", repos, "sessions_repo"),
        "blast_radius": _pick(cols[4], "Has blast radius", list(BLAST_RADII), "sessions_radius"),
        "governed_by": _pick(
            cols[5], "Governed by", list(analytics.GOVERNED_BY), "sessions_governed"
        ),
        "search": search.strip() or None,
        "tags": _tags(ctx),
    }


def _tags(ctx: nav.Context) -> tuple[str, ...] | None:
    """The tag filter: sessions carrying every chosen tag (shown only when any exists)."""
    options = ctx.data.tag_options()
    if not options:
        return None
    chosen = st.multiselect("Tags (all of)", options, key="sessions_tags")
    return tuple(chosen) or None


def _column_config() -> dict[str, Any]:
    return {
        "session_id": st.column_config.TextColumn("Session"),
        "agent_name": st.column_config.TextColumn("Agent"),
        "status": ui.chip_column("Status", ui.STATUS_COLORS),
        "action_count": ui.count_column("Actions", width="small"),
        "started_at": ui.time_column("Started (UTC)", seconds=False),
        "last_action_at": ui.time_column("Last action (UTC)", seconds=False),
        "repos": st.column_config.ListColumn("Repositories", width="medium"),
        "allows": ui.count_column("Allowed", width="small"),
        "denies": ui.count_column("Denied", width="small"),
        "rewrites": ui.count_column("Rewritten", width="small"),
        "approvals": ui.count_column("Approvals", width="small"),
        "max_blast_radius": ui.radius_column("Max blast"),
        "claimed_calls": ui.count_column(
            "Claimed",
            width="small",
            help="Decisions only claimed by an unauthenticated sender: never enforced",
        ),
        "governed_by": ui.chip_column(
            "Governed by",
            ui.GOVERNED_HEX,
            help="gateway: through the MCP gateway (tooltrail proxy); instrumentation:"
            " tooltrail in the agent's process; empty: third-party spans only",
        ),
        "mcp_client_name": st.column_config.TextColumn("MCP client"),
        "tags": st.column_config.ListColumn("Tags", width="small"),
    }


def render() -> None:
    ctx = nav.context()
    ui.header("Sessions", "Every agent session, most recent activity first.")
    if not ctx.data.has_spans():
        ui.empty_state("No sessions yet", ui.no_data_hint(str(ctx.root)))
        return
    chosen = filters(ctx)
    signature = repr(sorted(chosen.items()))
    total = ctx.data.count_sessions(chosen)
    if total == 0:
        st.info("No session matches these filters.", icon=":material/filter_alt_off:")
        return
    size_col, info_col, pager_col = st.columns([1, 3, 4], vertical_alignment="bottom")
    size = int(size_col.selectbox("Rows per page", PAGE_SIZES, index=2, key="sessions_size") or 50)
    pages = max(1, math.ceil(total / size))
    # Keyed by the filters and page size: other filters start again on the first page.
    tag = f"{zlib.crc32(signature.encode()):08x}_{size}"
    with pager_col:
        page = min(pages, int(st.pagination(pages, key=f"{PAGE_KEY}_{tag}") or 1))
    first = (page - 1) * size
    frame = ctx.data.sessions(chosen, limit=size, offset=first)
    info_col.markdown(
        f"**{ui.fmt_int(total)}** session{'s' if total != 1 else ''} · showing "
        f"{ui.fmt_int(first + 1)}–{ui.fmt_int(first + frame.height)}"
    )
    # A new key per filter set and page: a selection never points at rows of another page.
    table_key = f"sessions_table_{tag}_{page}"
    shown = ui.as_chips(
        ui.labelled(frame.select(COLUMNS), "agent_name"),
        "status",
        "governed_by",
        "max_blast_radius",
    )
    ui.table(
        shown,
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=_column_config(),
        width="stretch",
        height=ui.table_height(frame.height),
    )
    rows = [r for r in ui.selected_rows(table_key) if r < frame.height]
    _selection_bar(ctx, [frame.row(r, named=True) for r in rows])


def _selection_bar(ctx: nav.Context, rows: list[dict[str, Any]]) -> None:
    if not rows:
        st.caption("Select a row to open the session; select several to pause or cancel them.")
        return
    ids = [str(r["session_id"]) for r in rows]
    with st.container(border=True):
        label = ids[0] if len(ids) == 1 else f"{len(ids)} sessions"
        st.markdown(f"**Selected:** {ui.md(label)}")
        if len(ids) == 1 and st.button(
            "Open session", key="sessions_open", type="primary", icon=":material/open_in_new:"
        ):
            nav.open_session(ids[0])
        components.session_control_bar(
            ids, [r.get("control_state") for r in rows], ctx.root, key="sessions"
        )


if __name__ == "__main__":
    render()
