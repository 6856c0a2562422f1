"""`tooltrail collect --retention AGE` (issue 17, "kept as long as it should be"): a real
collector subprocess deletes old terminal sessions on start and again every
``--retention-every``, with signed tombstones naming it, counted on /metrics; fresh and
non-terminal sessions stay and `tooltrail verify` stays clean; a failed pass is counted
and the collector keeps serving; a bad age stops start-up (exit 2, naming the flag)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from chain_support import land
from collect_support import CollectorProcess, collect_argv, metric, request, wait_until

from tooltrail.collector import chain
from tooltrail.collector.writer import iter_span_files, write_sorted_parquet
from tooltrail.control import ControlStore

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


def _land(data: Path, session: str, calls: int, start: dt.datetime) -> None:
    """Land ``calls`` tool spans of ``session`` starting at ``start`` (backdated)."""
    land(data, session, ["ALLOW"] * calls, start)


def _sessions(data: Path) -> set[str]:
    return {s for p in iter_span_files(data) for s in pq.read_table(p)["session_id"].to_pylist()}


def _tombstones(data: Path) -> list[dict[str, Any]]:
    return [
        ln.record
        for ln in chain.read_ledger(data)
        if ln.record and ln.record.get("kind") == "tombstone"
    ]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # One chain key for the test's landings and the collector, never the user's.
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("TOOLTRAIL_RETENTION", raising=False)
    return {"TOOLTRAIL_CONFIG_DIR": str(tmp_path / "config")}


def test_the_collector_applies_retention_on_start_and_periodically(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    _land(data, "old-a", 3, NOW - 100 * DAY)
    _land(data, "old-b", 2, NOW - 120 * DAY)
    _land(data, "old-paused", 2, NOW - 100 * DAY)  # old, but paused: not terminal
    _land(data, "fresh", 2, NOW - 3 * DAY)  # terminal, but younger than 90 days
    _land(data, "live", 1, NOW)  # active
    with ControlStore(data) as store:
        store.set_session_state("old-paused", "pause", "ops")

    args = ("--workers", "0", "--retention", "90d", "--retention-every", "1s")
    with CollectorProcess(data, *args, env=env) as proc:
        # On start: the two old terminal sessions go.
        wait_until(
            lambda: metric(proc.url, "retention_sessions_deleted_total") >= 2,
            what="retention on start",
        )
        assert _sessions(data) == {"old-paused", "fresh", "live"}
        # Periodically: an old session landed while it runs goes at a later pass.
        _land(data, "old-c", 4, NOW - 95 * DAY)
        wait_until(
            lambda: metric(proc.url, "retention_sessions_deleted_total") >= 3,
            what="a later retention pass",
        )
        assert _sessions(data) == {"old-paused", "fresh", "live"}
        assert metric(proc.url, "retention_rows_deleted_total") == 3 + 2 + 4
        assert metric(proc.url, "retention_failures_total") == 0
        assert metric(proc.url, "retention_runs_total") >= 2

        tombs = _tombstones(data)
        assert {tuple(t["sessions"]) for t in tombs} == {("old-a", "old-b"), ("old-c",)}
        assert {t["by"] for t in tombs} == {"retention (collector)"}
        assert all("older than 90d" in str(t["reason"]) for t in tombs)
        verified = subprocess.run(
            [str(Path(sys.executable).with_name("tooltrail")), "verify", "--data", str(data)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "2 tombstone(s)" in verified.stdout

        # A pass that fails (an old session's file no longer matches its chain record:
        # nothing is deleted) is counted and logged; the collector keeps serving.
        _land(data, "old-d", 2, NOW - 100 * DAY)
        (path,) = [
            p
            for p in iter_span_files(data)
            if "old-d" in pq.read_table(p)["session_id"].to_pylist()
        ]
        table = pq.read_table(path, partitioning=None)
        edited = table.set_column(
            table.schema.get_field_index("tool_name"),
            "tool_name",
            pc.replace_substring(table["tool_name"], "git_status", "git_statux"),
        )
        # Edited beside it and renamed over it: a pass never reads a half-written file.
        write_sorted_parquet(edited, path.with_name(".edit"))
        path.with_name(".edit").replace(path)
        wait_until(lambda: metric(proc.url, "retention_failures_total") >= 1, what="a failed pass")
        assert "old-d" in _sessions(data)
        assert request(proc.url, "GET", "/healthz")[0] == 200
    assert "retention pass failed" in proc.stderr()
    assert "does not match its record in the chain" in proc.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--retention", "90"), "--retention: '90' has no unit"),
        (("--retention", "soon"), "--retention: 'soon' is not a duration"),
        (("--retention", "all"), "--retention all would delete every session"),
        (("--retention", "90d", "--retention-every", "0s"), "--retention-every: '0s' is not a"),
        (("--retention-every", "1h"), "--retention-every needs --retention"),
        # Neither flag takes 'all', so the message does not suggest it.
        (
            ("--retention", "90d", "--retention-every", "99999999999999d"),
            "--retention-every: '99999999999999d' is longer than the maximum 36500d\n",
        ),
        (
            ("--retention", "99999999999999d"),
            "--retention: '99999999999999d' is longer than the maximum 36500d\n",
        ),
    ],
)
def test_a_bad_retention_value_stops_start_up_naming_the_flag(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    result = subprocess.run(
        [*collect_argv(), "--data", str(tmp_path / "data"), "--port", "0", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "listening" not in result.stdout
    assert "for no limit" not in result.stderr
    assert not (tmp_path / "data" / "spans").exists()  # nothing started, nothing written
