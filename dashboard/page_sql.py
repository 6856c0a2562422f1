"""SQL: one read-only query over the views (``analytics.run_query``: writes and file
access are refused), the result as a table, downloadable as CSV and Parquet."""

from __future__ import annotations

import io
import json
from typing import Any, Final

import polars as pl
import streamlit as st

from tooltrail.dashboard import nav, queries, ui
from tooltrail.errors import QueryError

TEXT_KEY: Final = "sql_text"
RAN_KEY: Final = "sql_ran"
DEFAULT_LIMIT: Final = 10_000
EXAMPLES: Final = {
    "Latest sessions": (
        "SELECT session_id, agent_name, status, action_count, denies, max_blast_radius\n"
        "FROM sessions\nORDER BY last_activity_at DESC\nLIMIT 20"
    ),
    "Denied actions per tool": (
        "SELECT tool_name, count(*) AS denied\nFROM actions\nWHERE decision = 'DENY'\n"
        "GROUP BY tool_name\nORDER BY denied DESC"
    ),
    "Critical actions per agent": (
        "SELECT agent_name, count(*) AS critical\nFROM actions\n"
        "WHERE blast_radius = 'Critical'\nGROUP BY agent_name\nORDER BY critical DESC"
    ),
    "Approval wait per rule": (
        "SELECT policy_rule, count(*) AS requests,\n"
        "       median(wait_ms) FILTER (WHERE outcome IN ('approved', 'denied'))\n"
        "           AS median_wait_ms\n"
        "FROM approvals\nGROUP BY policy_rule\nORDER BY requests DESC"
    ),
    "Repositories by sessions": (
        "SELECT unnest(repos) AS repo, count(*) AS sessions\nFROM sessions\n"
        "GROUP BY repo\nORDER BY sessions DESC"
    ),
}
_FIRST_EXAMPLE: Final = next(iter(EXAMPLES.values()))


def _use_example() -> None:
    choice = st.session_state.get("sql_example")
    if choice in EXAMPLES:
        st.session_state[TEXT_KEY] = EXAMPLES[choice]


def render() -> None:
    ctx = nav.context()
    ui.header(
        "SQL",
        "One read-only query over the views `sessions`, `actions`, `approvals` and `spans` "
        "(DuckDB SQL). Writes and file access are refused.",
    )
    if not ctx.data.has_spans():
        ui.empty_state(
            "The views are empty",
            "Queries run, but return no rows until something lands. "
            + ui.no_data_hint(str(ctx.root)),
        )
    st.session_state.setdefault(TEXT_KEY, _FIRST_EXAMPLE)
    st.columns([2, 3])[0].selectbox(
        "Start from an example",
        list(EXAMPLES),
        index=None,
        placeholder="Choose an example query",
        key="sql_example",
        on_change=_use_example,
    )
    st.text_area("Query", key=TEXT_KEY, height=180)
    left, right = st.columns([1, 4], vertical_alignment="bottom")
    limit = int(
        left.number_input(
            "Row limit", min_value=1, max_value=1_000_000, value=DEFAULT_LIMIT, key="sql_limit"
        )
    )
    if right.button("Run query", type="primary", icon=":material/play_arrow:", key="sql_run"):
        st.session_state[RAN_KEY] = (str(st.session_state[TEXT_KEY]), limit)
    ran = st.session_state.get(RAN_KEY)
    if ran is not None:
        _result(ctx, *ran)
    with st.expander("Views and columns (see docs/DATA.md for their meaning)"):
        columns = ctx.data.view_columns()
        for view in queries.VIEWS:
            names = columns.filter(pl.col("view") == view)
            st.markdown(
                f"**{view}**: "
                + ", ".join(f"`{c}` {t.lower()}" for c, t in names.select("column", "type").rows())
            )


def _result(ctx: nav.Context, sql: str, limit: int) -> None:
    try:
        frame = ctx.data.run_query(sql, limit)
    except QueryError as e:
        st.error(str(e), icon=":material/error:")
        return
    st.markdown(
        f"**{ui.fmt_int(frame.height)}** row{'s' if frame.height != 1 else ''}"
        + (f" (limit {ui.fmt_int(limit)} reached)" if frame.height == limit else "")
    )
    # Query results are the views' own values: a null reads as SQL says it.
    ui.table(frame, hide_index=True, width="stretch", placeholder="NULL")
    buttons = st.container(horizontal=True)
    buttons.download_button(
        "Download CSV",
        data=to_csv(frame),
        file_name="tooltrail-query.csv",
        mime="text/csv",
        icon=":material/download:",
        key="sql_csv",
        on_click="ignore",
    )
    buttons.download_button(
        "Download Parquet",
        data=to_parquet(frame),
        file_name="tooltrail-query.parquet",
        mime="application/vnd.apache.parquet",
        icon=":material/download:",
        key="sql_parquet",
        on_click="ignore",
    )


def to_csv(frame: pl.DataFrame) -> bytes:
    """CSV of ``frame``; nested values (lists, structs) become JSON text, which CSV lacks."""
    flat = frame.with_columns(
        pl.Series(name, [_json(v) for v in frame.get_column(name).to_list()], pl.String)
        for name, dtype in frame.schema.items()
        if dtype.is_nested()
    )
    return flat.write_csv().encode()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, ensure_ascii=False)


def to_parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


if __name__ == "__main__":
    render()
