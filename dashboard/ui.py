"""Shared look of the dashboard: colours, number / time formatting, chips, charts, empty
states, the operator's name and one-shot messages.

Colours are Streamlit theme colour names, so table chips (``MultiselectColumn``), inline
badges (``:red-badge[...]``) and ``st.badge`` agree; charts use the matching hex values.

One file past 600 lines on purpose: every page imports its look from here, and splitting
colours, formatting and charts apart would only spread one vocabulary over several modules.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import altair as alt
import polars as pl
import streamlit as st

from tooltrail import analytics
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
    "abandoned": "orange",
}
OUTCOME_COLORS: Final = {
    "pending": "violet",
    "approved": "green",
    "denied": "red",
    "expired": "gray",
    "abandoned": "orange",
    "not_requested": "gray",
}
# Who governed a session's calls (the `governed_by` column): the MCP gateway's sessions
# stand out (solid), the common in-process case stays quiet.
GOVERNED_HEX: Final = {"gateway": "#7048e8", "instrumentation": "#e9ecef"}
# A call to a tool whose definition changed since it was pinned (tool_definition_changed):
# crimson, a red of its own (a DENY's red sits in the same table).
CHANGED_TOOL: Final = "changed"
CHANGED_TOOL_HEX: Final = {CHANGED_TOOL: "#c2255c"}
PIN_STATUS_HEX: Final = {"changed": "#c2255c", "accepted": "#2f9e44", "superseded": "#adb5bd"}
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

MISSING: Final = "–"
"""What a table cell, a metric or a caption shows for a missing value (never "None")."""
# Group keys another instrumentation may leave out (tool spans without an agent name, a
# repository or a model): charts and tables name such a group instead of showing null.
UNKNOWN: Final[Mapping[str, str]] = {
    "agent": "(unknown agent)",
    "agent_name": "(unknown agent)",
    "tool": "(unknown tool)",
    "tool_name": "(unknown tool)",
    "repo": "(no repository)",
    "target_repo": "(no repository)",
    "model": "(unknown model)",
    "session_id": "(no session)",
    "rule": "(none)",
    "approver": "(undecided)",
}

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
    return MISSING if value is None else f"{int(value):,}"


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


def governed_by_text(row: Mapping[str, Any]) -> str | None:
    """How a session's calls were governed, in words: "through the gateway (client NAME
    VERSION)", "instrumented in process", or None (neither: third-party spans only)."""
    governed = row.get("governed_by")
    if governed == "gateway":
        client = " ".join(
            str(v) for v in (row.get("mcp_client_name"), row.get("mcp_client_version")) if v
        )
        return f"through the gateway (client {client or 'unknown'})"
    if governed == "instrumentation":
        return "instrumented in process"
    return None


def changed_tool_marks(frame: pl.DataFrame) -> pl.Series:
    """``tool_changed``: :data:`CHANGED_TOOL` for calls to a tool whose definition had
    changed since it was pinned, null otherwise (a chip column shows it)."""
    return frame.select(
        pl.when(pl.col("tool_definition_changed"))
        .then(pl.lit(CHANGED_TOOL))
        .otherwise(pl.lit(None, dtype=pl.String))
        .alias("tool_changed")
    ).to_series()


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


def table(data: Any, **kwargs: Any) -> Any:
    """``st.dataframe`` as every page shows tables: a missing value reads as
    :data:`MISSING`, not Streamlit's default "None" (which looks like a landed value)."""
    kwargs.setdefault("placeholder", MISSING)
    return st.dataframe(data, **kwargs)


def label_of(key: str, value: Any) -> str:
    """A group key as people read it: null becomes "(unknown agent)" and the like."""
    if value is None:
        return UNKNOWN.get(key, "(none)")
    return str(value)


def labelled(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """``frame`` with null group keys in ``columns`` named (see :data:`UNKNOWN`)."""
    return frame.with_columns(
        pl.col(c).cast(pl.String).fill_null(UNKNOWN.get(c, "(none)")) for c in columns if c in frame
    )


def short_paths(paths: Sequence[str], width: int = 32) -> dict[str, str]:
    """Each path shortened from the left to its last components ("…/org/repo"): the end
    of a path tells repositories apart, their common prefix does not. Components are
    added back until no two labels are the same; a last component longer than ``width``
    keeps its end."""
    parts = {p: [c for c in p.rstrip("/").split("/") if c] or [p] for p in paths}
    keep = {p: min(2, len(c)) for p, c in parts.items()}
    while True:
        labels = {p: _tail(p, parts[p], keep[p], width) for p in parts}
        seen: dict[str, list[str]] = {}
        for p, label in labels.items():
            seen.setdefault(label, []).append(p)
        clashes = [p for group in seen.values() if len(group) > 1 for p in group]
        grow = [p for p in clashes if keep[p] < len(parts[p])]
        if not grow:
            return labels
        for p in grow:
            keep[p] += 1


def _tail(path: str, components: list[str], keep: int, width: int) -> str:
    text = path if keep >= len(components) else "…/" + "/".join(components[-keep:])
    if len(text) > width and keep <= 2:  # one long name: its end tells it apart
        return "…" + text[-(width - 1) :]
    return text


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


def range_bounds(
    since: str | None, now: dt.datetime | None = None
) -> tuple[dt.datetime | None, dt.datetime]:
    """The start (None = all time) and end of a time range, for a chart's axis."""
    end = now or dt.datetime.now(dt.UTC)
    return (analytics.parse_since(since, now=end) if since else None), end


def bucket_for(since: str | None) -> dt.timedelta:
    return _BUCKETS.get(since, dt.timedelta(days=1))


# --- the operator and messages -------------------------------------------------------------


NEED_OPERATOR: Final = "Enter your name in the sidebar first: every decision records who made it."
# Below a decision surface when nobody is signed in because there are no users at all.
SINGLE_USER: Final = (
    "**Single-user mode**: this data directory has no users, so the name you type is not"
    " checked. `tooltrail users add NAME --role admin` turns access control on; then"
    " everyone signs in and decides as themselves."
)


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


# Time axis ticks, finest first: (unit, step, seconds, label format). An axis takes the
# finest step that gives at most a handful of ticks and labels them in that step's unit:
# no ".995" millisecond ticks on a span of minutes, no "Dec 07" five times on one day.
# The tick values are computed here: Vega-Lite's tickCount intervals below a day
# ("minute") are not the names Vega resolves ("minutes"), and the chart stays blank.
_TIME_TICKS: Final = (
    *(("millisecond", n, n / 1000, "%H:%M:%S.%L") for n in (1, 2, 5, 10, 20, 50, 100, 200, 500)),
    *(("second", n, float(n), "%H:%M:%S") for n in (1, 2, 5, 10, 15, 30)),
    *(("minute", n, 60.0 * n, "%H:%M") for n in (1, 2, 5, 10, 15, 30)),
    *(("hour", n, 3600.0 * n, "%H:%M") for n in (1, 2, 3, 6, 12)),
    *(("day", n, 86400.0 * n, "%b %d") for n in (1, 2)),
    ("week", 1, 7 * 86400.0, "%b %d"),
    ("month", 1, 30 * 86400.0, "%b %Y"),
    ("month", 3, 91 * 86400.0, "%b %Y"),
    *(("year", n, 365.25 * 86400.0 * n, "%Y") for n in (1, 2, 5, 10, 50, 100)),
)
MAX_TIME_TICKS: Final = 8
_MONDAY: Final = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # weeks start on Monday


def time_ticks(start: dt.datetime, end: dt.datetime) -> tuple[str, int, str]:
    """The tick unit, step and label format for a UTC time axis from ``start`` to ``end``."""
    extent = max((end - start).total_seconds(), 0.001)
    unit, step, _, fmt = next(
        (t for t in _TIME_TICKS if extent / t[2] <= MAX_TIME_TICKS), _TIME_TICKS[-1]
    )
    if unit == "hour" and extent > 43200:
        fmt = "%b %d %H:%M"  # half a day or more may cross midnight: name the day
    return unit, step, fmt


def tick_times(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The ticks of :func:`time_ticks` between ``start`` and ``end``: whole multiples of
    the step in UTC (minutes :00, :10; midnights; Mondays; first days of months)."""
    unit, step, _ = time_ticks(start, end)
    start, end = _utc(start), _utc(end)
    if unit in ("month", "year"):
        months = step * (12 if unit == "year" else 1)
        first = start.year * 12 + start.month - 1
        first += -first % months
        ticks: list[dt.datetime] = []
        while True:
            t = dt.datetime(first // 12, first % 12 + 1, 1, tzinfo=dt.UTC)
            if t > end:
                return ticks
            if t >= start:
                ticks.append(t)
            first += months
    size = dt.timedelta(seconds=next(t[2] for t in _TIME_TICKS if t[:2] == (unit, step)))
    origin = _MONDAY if unit == "week" else dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    t = origin + size * -((origin - start) // size)  # the first multiple at or after start
    ticks = []
    while t <= end:
        ticks.append(t)
        t += size
    return ticks


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


def time_x(
    field: str,
    start: dt.datetime,
    end: dt.datetime,
    *,
    title: str | None = "Time (UTC)",
    fixed: bool = True,
) -> alt.X:
    """A UTC time x axis with ticks on whole units for ``start``..``end``; ``fixed``: the
    axis spans exactly that range (else the data's extent, as a layered chart needs: two
    layers each fixing a domain make Vega-Lite merge them, and it fails to draw). The
    range is domainMin / domainMax: a ``domain`` conflicts with the x2 channel's."""
    _, _, fmt = time_ticks(start, end)
    # As DateTime objects: Vega-Lite draws no label for plain timestamps here.
    values = [_datetime(t) for t in tick_times(start, end)]
    # A utc scale formats its labels in UTC (a formatType "utc" would be dropped as custom).
    scale = alt.Scale(type="utc")
    if fixed:
        scale = alt.Scale(type="utc", domainMin=_datetime(start), domainMax=_datetime(end))
    return alt.X(
        field,
        type="temporal",
        title=title,
        scale=scale,
        axis=alt.Axis(format=fmt, values=values, labelOverlap=True),
    )


def _datetime(t: dt.datetime) -> alt.DateTime:
    t = _utc(t)
    return alt.DateTime(
        year=t.year,
        month=t.month,
        date=t.day,
        hours=t.hour,
        minutes=t.minute,
        seconds=t.second,
        milliseconds=t.microsecond // 1000,
        utc=True,
    )


def decisions_chart(
    frame: pl.DataFrame,
    bucket: dt.timedelta,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> alt.Chart:
    """Stacked bars of actions per time bucket, by decision, over the selected range
    ``start``..``end`` (default: the data's own extent). Each bar spans its whole bucket
    (x to x2), so the stack is computed here (y0..y1) rather than by Vega-Lite."""
    order = {d: i for i, d in enumerate([*DECISIONS, UNDECIDED])}
    data = (
        frame.with_columns(
            pl.col("decision").fill_null(UNDECIDED),
        )
        .with_columns(
            pl.col("decision").replace_strict(order, default=len(order)).alias("rank"),
            (pl.col("bucket") + bucket * 0.92).alias("bucket_end"),
            # Tooltips show UTC whatever the browser's zone: formatted here.
            pl.col("bucket")
            .dt.convert_time_zone("UTC")
            .dt.strftime("%Y-%m-%d %H:%M")
            .alias("from"),
        )
        .sort("bucket", "rank")
        .with_columns(pl.col("actions").cum_sum().over("bucket").alias("y1"))
        .with_columns((pl.col("y1") - pl.col("actions")).alias("y0"))
    )
    first, last = data.get_column("bucket").min(), data.get_column("bucket").max()
    low = min(t for t in (start, first) if isinstance(t, dt.datetime))
    high = max(
        t
        for t in (end, last + bucket if isinstance(last, dt.datetime) else None, low)
        if isinstance(t, dt.datetime)
    )
    return _typed(
        alt.Chart(data.to_pandas())
        .mark_rect()
        .encode(
            x=time_x("bucket", low, high),
            x2="bucket_end:T",
            y=alt.Y("y0:Q", title="Actions"),
            y2="y1:Q",
            color=alt.Color(
                "decision:N", scale=_decision_scale(), title="Decision", sort=list(order)
            ),
            tooltip=[
                alt.Tooltip("from:N", title="From (UTC)"),
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


_COUNTS: Final = ("actions", "low", "medium", "high", "critical", "unrated")


def top_groups(frame: pl.DataFrame, key: str, limit: int) -> pl.DataFrame:
    """The ``limit`` busiest groups of a ``blast_radius_stats`` frame (nulls named), the
    rest summed into one "others (N groups)" row, so that a chart can label every bar."""
    named = labelled(frame, key)
    if named.height <= limit:
        return named
    top, rest = named.head(limit - 1), named.slice(limit - 1)
    counts = [c for c in _COUNTS if c in frame.columns]
    others = rest.select(
        pl.lit(f"others ({rest.height} {_PLURAL.get(key, key + 's')})").alias(key),
        *(pl.col(c).sum() for c in counts),
    )
    return pl.concat([top.select(key, *counts), others], how="vertical_relaxed")


_PLURAL: Final = {"repo": "repositories", "day": "days"}
BAR_PX: Final = 28
"""Height of one bar of a horizontal bar chart: room for its label at any count."""


def radius_chart(frame: pl.DataFrame, key: str, *, horizontal: bool) -> alt.Chart:
    """Stacked bars of actions per blast radius, per group (``key``); every group keeps
    its label (no overlap culling; repositories shortened from the left, in full in the
    tooltip)."""
    frame = labelled(frame, key)
    groups = frame.get_column(key).to_list()
    names = short_paths(groups) if key == "repo" else {g: g for g in groups}
    long = radius_long(frame, key).with_columns(
        pl.col(key).replace_strict(names, return_dtype=pl.String).alias("label")
    )
    order = [names[g] for g in groups]
    ranks = {r: i for i, r in enumerate([*BLAST_RADII, "unrated"])}
    data = long.with_columns(
        pl.col("radius").replace_strict(ranks, return_dtype=pl.Int32).alias("rank")
    )
    title = {"agent": "Agent", "tool": "Tool", "repo": "Repository", "day": "Day"}.get(key, key)
    encoding: dict[str, Any] = {
        "color": alt.Color(
            "radius:N", scale=_radius_scale(), title="Blast radius", sort=[*BLAST_RADII]
        ),
        "order": alt.Order("rank:Q"),
        "tooltip": [
            alt.Tooltip(f"{key}:N", title=title),
            alt.Tooltip("radius:N", title="Blast radius"),
            alt.Tooltip("actions:Q", title="Actions", format=","),
        ],
    }
    group_axis = alt.Axis(labelOverlap=False, labelLimit=320, title=None)
    if horizontal:
        encoding["y"] = alt.Y("label:N", sort=order, axis=group_axis)
        encoding["x"] = alt.X("actions:Q", title="Actions", stack="zero")
        height: Any = alt.Step(BAR_PX)
    else:
        encoding["x"] = alt.X("label:O", sort=order, axis=group_axis)
        encoding["y"] = alt.Y("actions:Q", title="Actions", stack="zero")
        height = 260
    return _typed(
        alt.Chart(data.to_pandas()).mark_bar().encode(**encoding).properties(height=height)
    )


def radius_trend_chart(
    frame: pl.DataFrame, start: dt.datetime | None, end: dt.datetime
) -> alt.Chart:
    """Stacked bars of actions per blast radius per UTC day (``day`` = ``YYYY-MM-DD``) on a
    time axis over the selected range: days without actions show as gaps, not as bars
    side by side. Drawn as the decisions chart is (x..x2 per day, the stack computed
    here): a timeUnit on an axis with fixed domain and tick values draws nothing."""
    ranks = {r: i for i, r in enumerate([*BLAST_RADII, "unrated"])}
    day = dt.timedelta(days=1)
    data = (
        radius_long(frame, "day")
        .with_columns(
            pl.col("radius").replace_strict(ranks, return_dtype=pl.Int32).alias("rank"),
            pl.col("day").str.to_datetime("%Y-%m-%d", time_zone="UTC").alias("day_start"),
        )
        .with_columns((pl.col("day_start") + day * 0.92).alias("day_end"))
        .sort("day_start", "rank")
        .with_columns(pl.col("actions").cum_sum().over("day_start").alias("y1"))
        .with_columns((pl.col("y1") - pl.col("actions")).alias("y0"))
    )
    first, last = data.get_column("day_start").min(), data.get_column("day_start").max()
    assert isinstance(first, dt.datetime) and isinstance(last, dt.datetime)
    low = first if start is None else min(start, first)
    high = max(end, last + day)
    return _typed(
        alt.Chart(data.to_pandas())
        .mark_rect()
        .encode(
            x=time_x("day_start", low, high, title="Day (UTC)"),
            x2="day_end:T",
            y=alt.Y("y0:Q", title="Actions"),
            y2="y1:Q",
            color=alt.Color(
                "radius:N", scale=_radius_scale(), title="Blast radius", sort=[*BLAST_RADII]
            ),
            tooltip=[
                alt.Tooltip("day:N", title="Day (UTC)"),
                alt.Tooltip("radius:N", title="Blast radius"),
                alt.Tooltip("actions:Q", title="Actions", format=","),
            ],
        )
        .properties(height=260)
    )


def timeline_chart(actions: pl.DataFrame) -> alt.Chart:
    """One mark per action at its start time, on the row of its tool, coloured by decision,
    on a UTC time axis over the session's own span."""
    frame = labelled(
        actions.select(
            "sequence",
            "start_time",
            pl.coalesce("end_time", "start_time").alias("end_time"),
            "tool_name",
            pl.col("action_summary").fill_null(MISSING),
            pl.col("decision").fill_null(UNDECIDED),
            pl.col("blast_radius").fill_null(MISSING),
            "duration_ms",
            pl.col("start_time")
            .dt.convert_time_zone("UTC")
            .dt.strftime("%Y-%m-%d %H:%M:%S%.3f")
            .alias("started"),
        ),
        "tool_name",
    )
    tools = sorted(set(frame.get_column("tool_name").to_list()))
    start = frame.get_column("start_time").min()
    end = frame.get_column("end_time").max()
    assert isinstance(start, dt.datetime) and isinstance(end, dt.datetime)
    x = time_x("start_time", start, max(end, start + dt.timedelta(milliseconds=1)), fixed=False)
    base = alt.Chart(frame.to_pandas()).encode(
        y=alt.Y(
            "tool_name:N", sort=tools, axis=alt.Axis(labelOverlap=False, labelLimit=320, title=None)
        ),
        color=alt.Color("decision:N", scale=_decision_scale(), title="Decision"),
        tooltip=[
            alt.Tooltip("sequence:Q", title="#"),
            alt.Tooltip("tool_name:N", title="Tool"),
            alt.Tooltip("action_summary:N", title="Summary"),
            alt.Tooltip("decision:N", title="Decision"),
            alt.Tooltip("blast_radius:N", title="Blast radius"),
            alt.Tooltip("started:N", title="Started (UTC)"),
            alt.Tooltip("duration_ms:Q", title="Duration (ms)", format=",.0f"),
        ],
    )
    span = base.mark_rule(strokeWidth=6, opacity=0.6).encode(x=x, x2="end_time:T")
    dots = base.mark_circle(size=90, opacity=0.95).encode(x=x)
    return _typed((span + dots).properties(height=alt.Step(34)))


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
    "BAR_PX",
    "CHANGED_TOOL",
    "CHANGED_TOOL_HEX",
    "DECISION_COLORS",
    "DECISION_HEX",
    "GOVERNED_HEX",
    "HEX",
    "MISSING",
    "NEED_OPERATOR",
    "OPERATOR_KEY",
    "OUTCOME_COLORS",
    "PIN_STATUS_HEX",
    "RADIUS_COLORS",
    "RADIUS_HEX",
    "SINGLE_USER",
    "STATUS_COLORS",
    "TIME_RANGES",
    "UNKNOWN",
    "as_chips",
    "bucket_for",
    "changed_tool_marks",
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
    "governed_by_text",
    "header",
    "label_of",
    "labelled",
    "md",
    "no_data_hint",
    "pretty_json",
    "radius_chart",
    "radius_column",
    "radius_mix_chart",
    "radius_trend_chart",
    "selected_rows",
    "short_paths",
    "show_flash",
    "table",
    "table_height",
    "tick_times",
    "time_column",
    "time_range",
    "time_ticks",
    "time_x",
    "timeline_chart",
    "top_groups",
    "wait_chart",
]
