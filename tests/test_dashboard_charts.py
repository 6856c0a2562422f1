"""Dashboard charts, checked through the Vega-Lite specs AppTest exposes (behaviour, not
pixels): every group bar keeps its label (top N plus "others"), repository paths are
shortened from the left, time axes tick on whole units with a matching format and span
the selected range, and share tiles carry no trend arrow."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from dashboard_support import (
    RELEASE,
    Seeded,
    app_test,
    chart_data,
    chart_spec,
    goto,
    seed_with_foreign,
    table_with,
)

from tooltrail.dashboard import ui
from tooltrail.dashboard.page_blast_radius import CHART_GROUPS


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seeded, str]:
    return seed_with_foreign(tmp_path_factory.mktemp("dash-charts") / "data")


def _blast(seeded: Seeded, monkeypatch: pytest.MonkeyPatch, by: str) -> Any:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "blast_radius")
    at.selectbox(key="blast_range").set_value("All time").run()
    at.segmented_control(key="blast_by").set_value(by).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _group_axis(spec: dict[str, Any]) -> dict[str, Any]:
    y = spec["encoding"]["y"]
    assert y["field"] == "label"
    return dict(y["axis"])


@pytest.mark.parametrize("by", ["agent", "repo"])
def test_every_group_bar_is_labelled(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch, by: str
) -> None:
    seeded, _ = foreign
    at = _blast(seeded, monkeypatch, by)
    groups = list(table_with(at, by, "critical")[by])
    assert len(groups) <= CHART_GROUPS
    spec = chart_spec(at, 0)
    axis = _group_axis(spec)
    assert axis["labelOverlap"] is False  # Vega-Lite would drop labels it finds crowded
    assert axis["labelLimit"] >= 240
    assert spec["height"] == {"step": ui.BAR_PX}  # one bar's height whatever the count
    data = chart_data(at, 0)
    assert set(data[by]) == set(groups)  # every group has a bar ...
    labels = data.groupby(by)["label"].unique()
    assert all(len(v) == 1 for v in labels)  # ... and its own label
    assert data["label"].nunique() == len(groups)
    assert spec["encoding"]["y"]["sort"] == [labels[g][0] for g in groups]  # busiest first


def test_repository_labels_are_shortened_from_the_left(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = foreign
    at = _blast(seeded, monkeypatch, "repo")
    data = chart_data(at, 0).drop_duplicates("repo").set_index("repo")["label"]
    assert data["/srv/release/payments"] == "…/release/payments"
    assert data["/srv/repos/payments"] == "…/repos/payments"
    assert data["(no repository)"] == "(no repository)"
    tooltip = chart_spec(at, 0)["encoding"]["tooltip"]
    assert tooltip[0]["field"] == "repo"  # the full path on hover


def test_many_groups_show_the_top_and_one_others_bar(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = foreign
    at = _blast(seeded, monkeypatch, "tool")
    table = table_with(at, "tool", "critical")
    assert len(table) > CHART_GROUPS  # 7 git tools, web_search, 20 more, an unnamed one
    data = chart_data(at, 0)
    per_bar = data.groupby("label", sort=False)["actions"].sum()
    assert len(per_bar) == CHART_GROUPS
    rest = table.iloc[CHART_GROUPS - 1 :]
    others = f"others ({len(rest)} tools)"
    assert per_bar[others] == rest["actions"].sum()
    top = table.iloc[: CHART_GROUPS - 1]
    assert {k: per_bar[k] for k in top["tool"]} == dict(
        zip(top["tool"], top["actions"], strict=False)
    )
    assert per_bar.sum() == table["actions"].sum()
    assert chart_spec(at, 0)["encoding"]["y"]["sort"][-1] == others


def test_share_tiles_have_no_trend_arrow(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.proto.Metric_pb2 import Metric

    seeded, _ = foreign
    at = _blast(seeded, monkeypatch, "agent")
    shares = [m for m in at.metric if m.proto.body.endswith("of actions") or m.delta]
    assert len(shares) == 4
    assert all(m.proto.direction == Metric.MetricDirection.NONE for m in shares)


def _x_scale(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    x = spec["encoding"]["x"] if "encoding" in spec else spec["layer"][0]["encoding"]["x"]
    return dict(x["scale"]), dict(x["axis"])


def _when(v: dict[str, Any]) -> dt.datetime:
    """A Vega-Lite DateTime object (UTC) as a datetime."""
    assert v["utc"] is True
    return dt.datetime(
        v["year"],
        v["month"],
        v["date"],
        v["hours"],
        v["minutes"],
        v["seconds"],
        v["milliseconds"] * 1000,
        tzinfo=dt.UTC,
    )


def _ticks(axis: dict[str, Any]) -> list[dt.datetime]:
    """The axis' explicit tick values."""
    return [_when(v) for v in axis["values"]]


@pytest.mark.parametrize(
    ("choice", "span", "step", "fmt"),
    [
        ("Last hour", dt.timedelta(hours=1), dt.timedelta(minutes=10), "%H:%M"),
        ("Last 24 hours", dt.timedelta(hours=24), dt.timedelta(hours=6), "%b %d %H:%M"),
        ("Last 7 days", dt.timedelta(days=7), dt.timedelta(days=1), "%b %d"),
        ("Last 30 days", dt.timedelta(days=30), dt.timedelta(days=7), "%b %d"),
    ],
)
def test_decisions_over_time_spans_the_selected_range(
    foreign: tuple[Seeded, str],
    monkeypatch: pytest.MonkeyPatch,
    choice: str,
    span: dt.timedelta,
    step: dt.timedelta,
    fmt: str,
) -> None:
    seeded, _ = foreign
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    at.selectbox(key="overview_range").set_value(choice).run()
    assert not at.exception
    before = dt.datetime.now(dt.UTC)
    scale, axis = _x_scale(chart_spec(at, 0))
    assert scale["type"] == "utc"
    start, end = _when(scale["domainMin"]), _when(scale["domainMax"])
    bucket = ui.bucket_for(ui.TIME_RANGES[choice])
    # From the range's start up to now (or the end of the current bucket) ...
    assert before - dt.timedelta(minutes=2) <= end <= before + bucket
    # ... over the whole range, not just where there is data.
    assert abs((before - start) - span) < dt.timedelta(minutes=2)
    # Ticks on whole units, one label format for all of them.
    assert axis["format"] == fmt
    ticks = _ticks(axis)
    assert 3 <= len(ticks) <= ui.MAX_TIME_TICKS
    assert all(b - a == step for a, b in itertools.pairwise(ticks))
    assert all(start <= t <= end for t in ticks)
    assert all(t.second == 0 and t.microsecond == 0 for t in ticks)
    data = chart_data(at, 0)
    assert (data["bucket"] >= start - bucket).all()


def test_session_timeline_ticks_are_times(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = foreign
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "session", session=RELEASE)
    assert not at.exception
    spec = chart_spec(at, 0)
    scale, axis = _x_scale(spec)
    assert scale["type"] == "utc"
    # The release session's actions span 11 minutes: a tick every 2 minutes, clock times.
    assert axis["format"] == "%H:%M"
    ticks = _ticks(axis)
    assert all(b - a == dt.timedelta(minutes=2) for a, b in itertools.pairwise(ticks))
    assert all(t.minute % 2 == 0 and t.second == 0 for t in ticks)
    data = chart_data(at, 0)
    assert data["start_time"].min() <= ticks[0] and ticks[-1] <= data["end_time"].max()
    # Both layers (dots and duration bars) share the x axis: they spread over the data.
    assert all(
        layer["encoding"]["x"] == spec["layer"][0]["encoding"]["x"] for layer in spec["layer"]
    )
    assert "domainMin" not in scale and "domain" not in scale


@pytest.mark.parametrize(
    ("extent", "unit", "step", "fmt"),
    [
        (dt.timedelta(milliseconds=84), "millisecond", 20, "%H:%M:%S.%L"),
        (dt.timedelta(seconds=23), "second", 5, "%H:%M:%S"),
        (dt.timedelta(minutes=13), "minute", 2, "%H:%M"),
        (dt.timedelta(hours=6), "hour", 1, "%H:%M"),
        (dt.timedelta(hours=30), "hour", 6, "%b %d %H:%M"),
        (dt.timedelta(days=5), "day", 1, "%b %d"),
        (dt.timedelta(days=200), "month", 1, "%b %Y"),
        (dt.timedelta(days=1000), "year", 1, "%Y"),
        (dt.timedelta(days=4000), "year", 2, "%Y"),
    ],
)
def test_time_ticks_take_whole_units(extent: dt.timedelta, unit: str, step: int, fmt: str) -> None:
    start = dt.datetime(2026, 3, 1, 12, 0, 0, 7000, tzinfo=dt.UTC)
    end = start + extent
    assert ui.time_ticks(start, end) == (unit, step, fmt)
    ticks = ui.tick_times(start, end)
    assert 1 <= len(ticks) <= ui.MAX_TIME_TICKS + 1
    assert all(start <= t <= end for t in ticks)
    first = ticks[0]
    if unit == "millisecond":
        assert first.microsecond % (step * 1000) == 0
    elif unit in ("month", "year"):
        assert first.day == 1 and first.hour == 0 and (unit == "month" or first.month == 1)
    else:
        assert first.microsecond == 0 and (first - start) < dt.timedelta(
            seconds={"second": 1, "minute": 60, "hour": 3600, "day": 86400}[unit] * step
        )


def test_short_paths_keep_the_end_and_stay_distinct() -> None:
    paths = [
        "/tmp/dash-demo/sandbox/repos/web-frontend",
        "/srv/a/shared/repo",
        "/srv/b/shared/repo",
        "https://github.com/org/tooltrail.git",
        "/srv/x",
        "repo",
        "/srv/" + "a" * 60,
    ]
    short = ui.short_paths(paths, width=32)
    assert short[paths[0]] == "…/repos/web-frontend"
    assert short[paths[1]] == "…/a/shared/repo" and short[paths[2]] == "…/b/shared/repo"
    assert short[paths[3]] == "…/org/tooltrail.git"
    assert short[paths[4]] == "/srv/x" and short[paths[5]] == "repo"
    assert short[paths[6]] == "…" + "a" * 31
    assert len(set(short.values())) == len(paths)


def test_the_blast_radius_trend_is_a_time_axis_over_the_range(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = foreign
    at = _blast(seeded, monkeypatch, "day")
    at.selectbox(key="blast_range").set_value("Last 7 days").run()
    before = dt.datetime.now(dt.UTC)
    spec = chart_spec(at, 0)
    x = spec["encoding"]["x"]
    assert x["type"] == "temporal" and spec["encoding"]["x2"]["field"] == "day_end"
    scale, axis = _x_scale(spec)
    start, end = _when(scale["domainMin"]), _when(scale["domainMax"])
    assert abs((before - start) - dt.timedelta(days=7)) < dt.timedelta(minutes=2)
    assert before - dt.timedelta(minutes=2) <= end <= before + dt.timedelta(days=1)
    ticks = _ticks(axis)
    assert axis["format"] == "%b %d"
    assert all(t.hour == 0 and t.minute == 0 for t in ticks)  # midnights, UTC
    days = set(chart_data(at, 0)["day"])
    assert days == set(table_with(at, "day", "critical")["day"])
