"""Shared look of the dashboard: colours, number / time formatting, chips, charts, empty
states, the operator's name and one-shot messages.

Colours are Streamlit theme colour names, so table chips (``MultiselectColumn``), inline
badges (``:red-badge[...]``) and ``st.badge`` agree; charts use the matching hex values.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

import altair as alt
import polars as pl
import streamlit as st

from tooltrail.schema import BLAST_RADII, DECISIONS

DECISION_COLORS: Final = {
    "ALLOW": "green",
    "DENY": "red",
    "REWRITE": "orange",
    "REQUIRE_APPROVAL": "violet",
}
RADIUS_COLORS: Final = {"Low": "gray", "Medium": "yellow", "High": "orange", "Critical": "red"}
STATUS_COLORS: Final = {
    "active": "blue",
    "waiting_approval": "violet",
    "paused": "orange",
    "canceled": "gray",
    "failed": "red",
    "completed": "green",
}
OUTCOME_COLORS: Final = {
    "pending": "violet",
    "approved": "green",
    "denied": "red",
    "expired": "gray",
    "abandoned": "orange",
    "not_requested": "gray",
}
HEX: Final = {
    "green": "#2f9e44",
    "red": "#e03131",
    "orange": "#f08c00",
    "violet": "#7048e8",
    "yellow": "#fab005",
    "gray": "#adb5bd",
    "blue": "#1c7ed6",
}
# Table chips for decisions and blast radii are solid (they are what an auditor scans for);
# statuses and outcomes keep the theme's light tints.
DECISION_HEX: Final = {
    "ALLOW": "#2f9e44",
    "DENY": "#e03131",
    "REWRITE": "#f08c00",
    "REQUIRE_APPROVAL": "#7048e8",
}
RADIUS_HEX: Final = {
    "Low": "#868e96",
    "Medium": "#e8a400",
    "High": "#f76707",
    "Critical": "#c92a2a",
}
UNDECIDED: Final = "undecided"
UNDECIDED_HEX: Final = "#ced4da"

TIME_RANGES: Final[Mapping[str, str | None]] = {
    "Last hour": "1h",
    "Last 24 hours": "24h",
    "Last 7 days": "7d",
    "Last 30 days": "30d",
    "All time": None,
}
# Chart buckets per time range: a few dozen bars whatever the range.
_BUCKETS: Final[Mapping[str | None, dt.timedelta]] = {
    "1h": dt.timedelta(minutes=2),
    "24h": dt.timedelta(hours=1),
    "7d": dt.timedelta(hours=6),
    "30d": dt.timedelta(days=1),
    None: dt.timedelta(days=1),
}

OPERATOR_KEY: Final = "operator"
_FLASH_KEY: Final = "_flash"


# --- formatting ---------------------------------------------------------------------------


def fmt_int(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def fmt_ms(ms: Any) -> str:
    """A duration for people: 850 ms, 4.2 s, 3 min 20 s, 2 h 05 min, 3 d 4 h."""
    if ms is None:
        return "–"
    ms = float(ms)
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def fmt_ts(ts: dt.datetime | None) -> str:
    if ts is None:
        return "–"
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_ago(ts: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if ts is None:
        return "–"
    seconds = ((now or dt.datetime.now(dt.UTC)) - ts).total_seconds()
    if seconds < 0:
        return "in " + fmt_ms(-seconds * 1000)
    if seconds < 60:
        return "just now"
    return fmt_ms(seconds * 1000).split(" ", 2)[0] + " " + _unit(seconds) + " ago"


def _unit(seconds: float) -> str:
    if seconds < 3600:
        return "min"
    if seconds < 86400:
        return "h"
    return "d"


_MD_SPECIAL: Final = str.maketrans({c: "\\" + c for c in "\\`*_{}[]<>()#+-.!|~:$"})


def md(text: object) -> str:
    """``text`` shown literally inside Streamlit markdown. Landed values come from agents:
    unescaped, a session id could carry a link, an image that calls out, or a directive."""
    return str(text).translate(_MD_SPECIAL)


def code(text: object) -> str:
    """``text`` as inline code (a backtick inside cannot end the code span)."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def chip(value: str | None, palette: Mapping[str, str]) -> str:
    """Markdown for one coloured badge (gray for values outside the palette)."""
    if value is None:
        return ":gray[–]"
    return f":{palette.get(value, 'gray')}-badge[{md(value)}]"


def pretty_json(text: str | None) -> str:
    """A JSON string indented for reading (returned as is when it is not JSON)."""
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return text


# --- tables --------------------------------------------------------------------------------


def as_chips(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """Turn string columns into one-element lists, which chip columns render coloured."""
    return frame.with_columns(
        pl.concat_list(pl.col(c)).list.drop_nulls().alias(c) for c in columns if c in frame
    )


def chip_column(label: str, palette: Mapping[str, str], **kwargs: Any) -> Any:
    """A read-only column of coloured chips (values: see :func:`as_chips`); underscores
    are shown as spaces (``waiting_approval`` -> ``waiting approval``)."""
    return st.column_config.MultiselectColumn(
        label,
        options=list(palette),
        color=list(palette.values()),
        format_func=lambda v: str(v).replace("_", " "),
        **kwargs,
    )


def time_column(label: str, *, seconds: bool = True, **kwargs: Any) -> Any:
    fmt = "YYYY-MM-DD HH:mm:ss" if seconds else "YYYY-MM-DD HH:mm"
    return st.column_config.DatetimeColumn(label, format=fmt, **kwargs)


def count_column(label: str, **kwargs: Any) -> Any:
    return st.column_config.NumberColumn(label, format="localized", **kwargs)


def decision_column(label: str = "Decision") -> Any:
    return chip_column(label, DECISION_HEX)


def radius_column(label: str = "Blast radius") -> Any:
    return chip_column(label, RADIUS_HEX)


def table_height(rows: int, max_rows: int = 20) -> int:
    """Pixel height showing ``rows`` rows (up to ``max_rows``) without an inner scroll."""
    return 38 + 35 * max(1, min(rows, max_rows))


def selected_rows(key: str) -> list[int]:
    """Row positions selected in the ``st.dataframe`` with this key (none before a run)."""
    state = st.session_state.get(key)
    if state is None:
        return []
    selection = state.get("selection", {}) if isinstance(state, Mapping) else state.selection
    rows = selection.get("rows", []) if isinstance(selection, Mapping) else selection.rows
    return [int(r) for r in rows]


# --- page furniture ------------------------------------------------------------------------


def header(title: str, caption: str | None = None) -> None:
    st.title(title, anchor=False)
    if caption:
        st.caption(caption)


def empty_state(title: str, body: str) -> None:
    """A friendly explanation instead of an empty table or chart."""
    with st.container(border=True):
        st.markdown(f"#### {title}")
        st.markdown(body)


def no_data_hint(root: str) -> str:
    return (
        f"Nothing has landed in {code(root)} yet. Run `tooltrail demo` for a tour, or point an "
        "instrumented agent at this directory ("
        f"{code('TOOLTRAIL_DATA=' + root)}) and its tool calls appear here as they happen."
    )


def time_range(key: str, default: str = "Last 7 days", label: str = "Time range") -> str | None:
    """A time-range picker; returns the ``since`` value (e.g. ``"24h"``, None = all)."""
    names = list(TIME_RANGES)
    choice = st.selectbox(label, names, index=names.index(default), key=key)
    return TIME_RANGES[choice or default]


def bucket_for(since: str | None) -> dt.timedelta:
    return _BUCKETS.get(since, dt.timedelta(days=1))


# --- the operator and messages -------------------------------------------------------------


def auth_user() -> str | None:
    """The signed-in user's e-mail or name when Streamlit authentication is configured."""
    try:
        if st.user.get("is_logged_in") is True:
            name = st.user.get("email") or st.user.get("name")
            return str(name) if name else None
    except Exception:  # st.user is unavailable outside a configured deployment
        return None
    return None


def operator() -> str | None:
    """Who is deciding: the signed-in user, else the sidebar field; None until given."""
    user = auth_user()
    if user:
        return user
    value = st.session_state.get(OPERATOR_KEY)
    return value.strip() if isinstance(value, str) and value.strip() else None


NEED_OPERATOR: Final = "Enter your name in the sidebar first: every decision records who made it."


def flash(message: str, kind: str = "success") -> None:
    """A message shown once at the top of the next run (survives the rerun of a click)."""
    st.session_state.setdefault(_FLASH_KEY, []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop(_FLASH_KEY, []):
        icon = ":material/check_circle:" if kind == "success" else ":material/error:"
        st.toast(md(message), icon=icon)
        if kind != "success":
            st.error(md(message))


# --- charts --------------------------------------------------------------------------------


def _typed(chart: Any) -> alt.Chart:
    """Altair's fluent calls are untyped; charts leave this module as ``alt.Chart``."""
    result: alt.Chart = chart
    return result


def _decision_scale() -> alt.Scale:
    domain = [*DECISIONS, UNDECIDED]
    colours = [DECISION_HEX[d] for d in DECISIONS] + [UNDECIDED_HEX]
    return alt.Scale(domain=domain, range=colours)


def _radius_scale() -> alt.Scale:
    domain = [*BLAST_RADII, "unrated"]
    return alt.Scale(domain=domain, range=[*(RADIUS_HEX[r] for r in BLAST_RADII), "#dee2e6"])


def decisions_chart(frame: pl.DataFrame, bucket: dt.timedelta) -> alt.Chart:
    """Stacked bars of actions per time bucket, by decision. Each bar spans its whole
    bucket (x to x2), so the stack is computed here (y0..y1) rather than by Vega-Lite."""
    order = {d: i for i, d in enumerate([*DECISIONS, UNDECIDED])}
    data = (
        frame.with_columns(
            pl.col("decision").replace_strict(order, default=len(order)).alias("rank"),
            (pl.col("bucket") + bucket * 0.92).alias("bucket_end"),
        )
        .sort("bucket", "rank")
        .with_columns(pl.col("actions").cum_sum().over("bucket").alias("y1"))
        .with_columns((pl.col("y1") - pl.col("actions")).alias("y0"))
    )
    axis = alt.Axis(format="%H:%M" if bucket <= dt.timedelta(hours=1) else "%b %d")
    return _typed(
        alt.Chart(data.to_pandas())
        .mark_rect()
        .encode(
            x=alt.X("bucket:T", title=None, axis=axis),
            x2="bucket_end:T",
            y=alt.Y("y0:Q", title="Actions"),
            y2="y1:Q",
            color=alt.Color(
                "decision:N", scale=_decision_scale(), title="Decision", sort=list(order)
            ),
            tooltip=[
                alt.Tooltip("bucket:T", title="From (UTC)", format="%Y-%m-%d %H:%M"),
                alt.Tooltip("decision:N", title="Decision"),
                alt.Tooltip("actions:Q", title="Actions", format=","),
            ],
        )
        .properties(height=260)
    )


def radius_mix_chart(counts: Mapping[str, int]) -> alt.Chart:
    """A donut of actions per blast radius."""
    data = pl.DataFrame(
        {"radius": list(counts), "actions": [int(v) for v in counts.values()]},
        schema={"radius": pl.String, "actions": pl.Int64},
    ).filter(pl.col("actions") > 0)
    ranks = {r: i for i, r in enumerate([*BLAST_RADII, "unrated"])}
    data = data.with_columns(
        pl.col("radius").replace_strict(ranks, default=len(ranks)).alias("rank")
    )
    return _typed(
        alt.Chart(data.to_pandas())
        .mark_arc(innerRadius=62, outerRadius=100, padAngle=0.01)
        .encode(
            theta=alt.Theta("actions:Q", stack=True),
            color=alt.Color(
                "radius:N", scale=_radius_scale(), title="Blast radius", sort=list(ranks)
            ),
            order=alt.Order("rank:Q"),
            tooltip=[
                alt.Tooltip("radius:N", title="Blast radius"),
                alt.Tooltip("actions:Q", title="Actions", format=","),
            ],
        )
        .properties(height=230)
    )


def radius_long(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    """blast_radius_stats columns (low..critical, unrated) as long rows for a stacked chart."""
    columns = {r.lower(): r for r in BLAST_RADII} | {"unrated": "unrated"}
    present = [c for c in columns if c in frame.columns]
    return (
        frame.select(pl.col(key).cast(pl.String), *present)
        .unpivot(index=key, on=present, variable_name="radius", value_name="actions")
        .with_columns(pl.col("radius").replace_strict(columns, return_dtype=pl.String))
        .filter(pl.col("actions") > 0)
    )


def radius_chart(frame: pl.DataFrame, key: str, *, horizontal: bool) -> alt.Chart:
    """Stacked bars of actions per blast radius, per group (``key``)."""
    long = radius_long(frame, key)
    order = frame.get_column(key).cast(pl.String).to_list()
    group = alt.X(f"{key}:O", sort=order, title=None) if not horizontal else None
    value = alt.X("actions:Q", title="Actions", stack="zero")
    encoding: dict[str, Any] = {
        "color": alt.Color(
            "radius:N", scale=_radius_scale(), title="Blast radius", sort=[*BLAST_RADII]
        ),
        "order": alt.Order("rank:Q"),
        "tooltip": [
            alt.Tooltip(f"{key}:N", title=key.capitalize()),
            alt.Tooltip("radius:N", title="Blast radius"),
            alt.Tooltip("actions:Q", title="Actions", format=","),
        ],
    }
    if horizontal:
        encoding["y"] = alt.Y(f"{key}:N", sort=order, title=None)
        encoding["x"] = value
    else:
        encoding["x"] = group
        encoding["y"] = alt.Y("actions:Q", title="Actions", stack="zero")
    ranks = {r: i for i, r in enumerate([*BLAST_RADII, "unrated"])}
    data = long.with_columns(
        pl.col("radius").replace_strict(ranks, return_dtype=pl.Int32).alias("rank")
    )
    height = max(160, 26 * len(order)) if horizontal else 260
    return _typed(
        alt.Chart(data.to_pandas()).mark_bar().encode(**encoding).properties(height=height)
    )


def timeline_chart(actions: pl.DataFrame) -> alt.Chart:
    """One mark per action at its start time, on the row of its tool, coloured by decision."""
    frame = actions.select(
        "sequence",
        "start_time",
        "end_time",
        "tool_name",
        "action_summary",
        pl.col("decision").fill_null(UNDECIDED),
        "blast_radius",
        "duration_ms",
    ).to_pandas()
    tools = sorted({str(t) for t in frame["tool_name"].dropna()})
    base = alt.Chart(frame).encode(
        y=alt.Y("tool_name:N", title=None, sort=tools),
        color=alt.Color("decision:N", scale=_decision_scale(), title="Decision"),
        tooltip=[
            alt.Tooltip("sequence:Q", title="#"),
            alt.Tooltip("tool_name:N", title="Tool"),
            alt.Tooltip("action_summary:N", title="Summary"),
            alt.Tooltip("decision:N", title="Decision"),
            alt.Tooltip("blast_radius:N", title="Blast radius"),
            alt.Tooltip("start_time:T", title="Started", format="%H:%M:%S"),
            alt.Tooltip("duration_ms:Q", title="Duration (ms)", format=",.0f"),
        ],
    )
    span = base.mark_rule(strokeWidth=6, opacity=0.6).encode(
        x=alt.X("start_time:T", title=None), x2="end_time:T"
    )
    dots = base.mark_circle(size=90, opacity=0.95).encode(x="start_time:T")
    return _typed((span + dots).properties(height=max(140, 34 * len(tools))))


def wait_chart(frame: pl.DataFrame, key: str) -> alt.Chart:
    """Median and p95 time to decision per group, in seconds."""
    data = frame.select(
        pl.col(key).cast(pl.String).fill_null("(none)"),
        (pl.col("median_wait_ms") / 1000).alias("median"),
        (pl.col("p95_wait_ms") / 1000).alias("p95"),
    ).unpivot(index=key, variable_name="statistic", value_name="seconds")
    return _typed(
        alt.Chart(data.drop_nulls().to_pandas())
        .mark_bar()
        .encode(
            y=alt.Y(f"{key}:N", title=None),
            x=alt.X("seconds:Q", title="Time to decision (s)"),
            yOffset="statistic:N",
            color=alt.Color(
                "statistic:N",
                scale=alt.Scale(domain=["median", "p95"], range=[HEX["blue"], "#a5d8ff"]),
                title=None,
            ),
            tooltip=[
                alt.Tooltip(f"{key}:N"),
                alt.Tooltip("statistic:N"),
                alt.Tooltip("seconds:Q", format=",.1f"),
            ],
        )
        .properties(height=max(120, 44 * data.get_column(key).n_unique()))
    )


__all__ = [
    "DECISION_COLORS",
    "DECISION_HEX",
    "HEX",
    "NEED_OPERATOR",
    "OPERATOR_KEY",
    "OUTCOME_COLORS",
    "RADIUS_COLORS",
    "RADIUS_HEX",
    "STATUS_COLORS",
    "TIME_RANGES",
    "as_chips",
    "auth_user",
    "bucket_for",
    "chip",
    "chip_column",
    "code",
    "count_column",
    "decision_column",
    "decisions_chart",
    "empty_state",
    "flash",
    "fmt_ago",
    "fmt_int",
    "fmt_ms",
    "fmt_ts",
    "header",
    "md",
    "no_data_hint",
    "operator",
    "pretty_json",
    "radius_chart",
    "radius_column",
    "radius_mix_chart",
    "selected_rows",
    "show_flash",
    "table_height",
    "time_column",
    "time_range",
    "timeline_chart",
    "wait_chart",
]
