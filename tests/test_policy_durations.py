"""Durations and ``--since`` windows: the forms accepted, and every bad value a
BadInputError naming the option, the value and (when too long) the maximum."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from tooltrail.cli import cli
from tooltrail.errors import BadInputError
from tooltrail.policy import loads_policy
from tooltrail.policy.durations import (
    MAX_SINCE_S,
    format_duration,
    parse_duration,
    parse_since_seconds,
)
from tooltrail.policy.replay import replay

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2h", 7_200.0),
        ("1h30m", 5_400.0),
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
        ("0", "--since: '0' has no unit: write it with one, e.g. 0d (days)"),
        # A bare number read as seconds replayed an empty window and called every rule dead.
        ("2", "--since: '2' has no unit: write it with one, e.g. 2d (days), 2h (hours), "),
        (" 1.5 ", "--since: ' 1.5 ' has no unit: write it with one, e.g. 1.5d (days)"),
        ("0s", "--since: '0s' is not a positive duration"),
        ("36500d1s", "--since: '36500d1s' is longer than the maximum 36500d"),
        ("999999999d", "--since: '999999999d' is longer than the maximum 36500d"),
        ("9" * 400 + "s", "is longer than the maximum 36500d (use 'all' for no limit)"),  # inf
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


@pytest.mark.parametrize(
    "args",
    [
        ["policy", "replay", str(EXAMPLES / "policy-git.yaml"), "--since", "2"],
        ["sessions", "--since", "2"],
    ],
)
def test_every_since_option_refuses_a_bare_number(args: list[str], tmp_path: Path) -> None:
    """`--since 2` replayed 0 actions as 2 seconds and then called every rule dead: every
    command taking a window goes through the one parser and exits 2 naming the unit."""
    result = CliRunner().invoke(cli, [*args, "--data", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "--since: '2' has no unit: write it with one, e.g. 2d (days)" in result.output
    assert "Traceback" not in result.output
