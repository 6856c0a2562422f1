"""Durations and ``--since`` windows: the forms accepted, and every bad value a
BadInputError naming the option, the value and (when too long) the maximum."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tooltrail.errors import BadInputError
from tooltrail.policy import loads_policy
from tooltrail.policy.durations import (
    MAX_SINCE_S,
    format_duration,
    parse_duration,
    parse_since_seconds,
)
from tooltrail.policy.replay import replay


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2h", 7_200.0),
        ("1h30m", 5_400.0),
        ("90", 90.0),  # a bare number is seconds
        ("90m", 5_400.0),
        ("1.5H", 5_400.0),
        (" 7d ", 604_800.0),
        ("1w", 604_800.0),
        ("all", None),
        (" ALL ", None),
        ("36500d", MAX_SINCE_S),  # the maximum itself is accepted
    ],
)
def test_since_values(value: str, seconds: float | None) -> None:
    assert parse_since_seconds(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "--since: 'soon' is not a duration (use e.g. 30s, 10m, 1h30m, 2d or seconds)"),
        ("", "--since: '' is not a duration"),
        ("-1h", "--since: '-1h' is not a duration"),
        ("1h 30m", "--since: '1h 30m' is not a duration"),
        ("0", "--since: '0' is not a positive duration"),
        ("0s", "--since: '0s' is not a positive duration"),
        ("36500d1s", "--since: '36500d1s' is longer than the maximum 36500d"),
        ("999999999d", "--since: '999999999d' is longer than the maximum 36500d"),
        ("9" * 400, "is longer than the maximum 36500d (use 'all' for no limit)"),  # inf
    ],
)
def test_bad_since_values_name_option_value_and_maximum(value: str, message: str) -> None:
    with pytest.raises(BadInputError) as info:
        parse_since_seconds(value)
    assert message in str(info.value)


def test_since_errors_name_the_option_they_are_given() -> None:
    with pytest.raises(BadInputError, match=r"^sessions --since: 'x' is not a duration"):
        parse_since_seconds("x", option="sessions --since")


def test_durations_are_positive_and_finite() -> None:
    assert parse_duration("10m") == parse_duration(600) == 600.0
    assert format_duration(MAX_SINCE_S) == "36500d"
    for bad in ("9" * 400, "0", True, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize("since_s", [MAX_SINCE_S * 2, 1e300, 0.0, -5.0, float("nan")])
def test_replay_rejects_windows_it_cannot_count_back(tmp_path: Path, since_s: float) -> None:
    """The library entry point too: no OverflowError from the datetime arithmetic."""
    policy = loads_policy("version: 1\n")
    with pytest.raises(BadInputError, match="since_s="):
        replay(policy, tmp_path, since_s=since_s, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert replay(policy, tmp_path, since_s=MAX_SINCE_S).actions == 0
