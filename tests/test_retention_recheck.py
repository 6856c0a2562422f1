"""Deletion re-checks what it deletes (docs/SECURITY.md §8, "Deletion"): a session that
landed a row after its terminal check is not deleted (retention leaves it for the next
pass and deletes the others); a file no chain record covers is never rewritten into a
signed record; a planted file that is not a span file fails verify and retention with a
break or an error naming it, not a traceback."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from chain_support import land
from click.testing import CliRunner

from tooltrail.cli import cli
from tooltrail.collector import chain, retention
from tooltrail.collector.retention import RetentionLoop, delete_sessions, retention_cutoff
from tooltrail.collector.verify import verify
from tooltrail.collector.writer import iter_span_files, write_sorted_parquet
from tooltrail.errors import BadInputError, StoreError

# A day long past: every session landed then is terminal (idle beyond the window).
DAY = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This test's signing key and trust store, never the user's.
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "data"
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _land(data: Path, session: str, calls: int, start: dt.datetime) -> Path:
    """Land ``calls`` tool spans of ``session`` through the real exporter; the file."""
    (new,) = land(data, session, ["ALLOW"] * calls, start)
    return new


def _rows(data: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in iter_span_files(data):
        for s in pq.read_table(p, columns=["session_id"])["session_id"].to_pylist():
            out[s] = out.get(s, 0) + 1
    return out


def _kinds(data: Path) -> list[str]:
    return [str(ln.record.get("kind")) for ln in chain.read_ledger(data) if ln.record]


# -- F3: a session that changed after its check ----------------------------------------


def test_a_row_landed_after_the_check_stops_the_deletion_naming_the_session(
    data: Path,
) -> None:
    _land(data, "old", 2, DAY)
    _land(data, "other", 1, DAY)
    check = retention.check_deletable(data, ["old"])
    # The session's agent comes back between the check and the deletion.
    _land(data, "old", 1, dt.datetime.now(dt.UTC))
    kinds = _kinds(data)
    with pytest.raises(BadInputError) as e:
        delete_sessions(data, ["old"], by="alice", checked=check)
    assert "session 'old' changed since it was checked: 1 new rows" in str(e.value)
    assert "nothing deleted" in str(e.value)
    assert _rows(data) == {"old": 3, "other": 1}
    assert _kinds(data) == kinds  # no tombstone, no retain record
    assert verify(data).ok
    # Checked again, it is active now: refused as such.
    with pytest.raises(BadInputError, match=r"'old' .* is active"):
        delete_sessions(data, ["old"], by="alice")


def test_a_row_landed_after_the_plan_stops_the_swap(data: Path) -> None:
    """The last window, driven by calling the deletion's steps in order: a file landed
    between the plan and the swap is read under the exclusive spans lock, and holding a
    row of the session it stops the swap (nothing swapped, nothing signed)."""
    _land(data, "old", 2, DAY)
    _land(data, "other", 1, DAY)
    marks = retention.check_deletable(data, ["old"]).marks
    plan = retention._plan(data, marks)
    _land(data, "old", 1, DAY + dt.timedelta(days=1))  # a partition the plan leaves alone
    files = sorted(iter_span_files(data))
    kinds = _kinds(data)
    with pytest.raises(BadInputError, match="session 'old' changed since it was checked: 1 new"):
        retention._swap_all(data / "spans", plan, set(marks))
    assert sorted(iter_span_files(data)) == files
    assert _rows(data) == {"old": 3, "other": 1}
    assert _kinds(data) == kinds and verify(data).ok


def test_retention_leaves_a_changed_session_for_the_next_pass_and_deletes_the_others(
    data: Path,
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=100)
    _land(data, "a", 2, old)
    _land(data, "b", 3, old)
    check = retention.check_deletable(data, before=retention_cutoff("90d"))
    assert check.sessions == ["a", "b"]
    _land(data, "a", 1, dt.datetime.now(dt.UTC))  # `a` is active again
    report = retention.apply_retention(data, "90d", by="ops", checked=check)
    assert report.sessions == ["b"] and report.rows == 3
    assert list(report.skipped) == ["a"]
    assert "session 'a' changed since it was checked: 1 new rows" in report.skipped["a"]
    assert _rows(data) == {"a": 3}
    tomb = next(
        ln.record
        for ln in chain.read_ledger(data)
        if ln.record and ln.record["kind"] == "tombstone"
    )
    assert (tomb["sessions"], tomb["rows"]) == (["b"], 3)
    assert verify(data).ok


# -- F4: an unrecorded file is never signed by a deletion --------------------------------


def _plant_beside(data: Path, session: str) -> Path:
    """A file no record covers, in the session's partition: one real row of ``session``
    and two forged DENY rows of another session made to read as ALLOW."""
    real = next(p for p in iter_span_files(data) if session in _rows_of(p))
    table = pq.read_table(real, partitioning=None)
    one = table.filter(pc.equal(table["session_id"], session)).slice(0, 1)
    forged = pa.concat_tables([one, one]).set_column(
        table.schema.get_field_index("session_id"), "session_id", pa.array(["forged"] * 2)
    )
    planted = real.parent / "planted.parquet"
    write_sorted_parquet(pa.concat_tables([one, forged]), planted)
    return planted


def _rows_of(path: Path) -> list[str]:
    return [str(s) for s in pq.read_table(path, columns=["session_id"])["session_id"].to_pylist()]


def test_a_deletion_refuses_an_unrecorded_file_holding_the_sessions_rows(data: Path) -> None:
    _land(data, "old", 2, DAY)
    planted = _plant_beside(data, "old")
    planted_bytes = planted.read_bytes()
    kinds = _kinds(data)
    rel = planted.relative_to(data).as_posix()

    with pytest.raises(StoreError) as e:
        delete_sessions(data, ["old"], by="alice")
    assert rel in str(e.value) and "unrecorded" in str(e.value)
    assert "run tooltrail verify" in str(e.value) and "nothing deleted" in str(e.value)
    assert planted.read_bytes() == planted_bytes
    assert _kinds(data) == kinds  # nothing signed
    assert _rows(data) == {"old": 3, "forged": 2}
    assert [b.kind for b in verify(data).breaks] == ["unrecorded"]

    result = CliRunner().invoke(cli, ["delete", "--data", str(data), "old", "--by", "a"])
    assert result.exit_code == 2 and rel in result.output, result.output

    # The collector's retention: a failed pass, counted; still nothing signed.
    counted: dict[str, float] = {}
    loop = RetentionLoop(
        data, "90d", 3600.0, count=lambda k, v: counted.__setitem__(k, counted.get(k, 0) + v)
    )
    assert loop.run_once() is None
    assert counted == {"failures": 1}
    assert _kinds(data) == kinds


# -- F5: a planted file that is not a span file ----------------------------------------


def _plant_junk(data: Path) -> tuple[str, str]:
    part = iter_span_files(data)[0].parent
    pq.write_table(pa.table({"x": [1, 2]}), part / "not-spans.parquet")
    (part / "garbage.parquet").write_bytes(b"this is not parquet\n" * 10)
    return (
        (part / "not-spans.parquet").relative_to(data).as_posix(),
        (part / "garbage.parquet").relative_to(data).as_posix(),
    )


def test_verify_names_each_unreadable_file_and_still_reports_the_others(data: Path) -> None:
    _land(data, "old", 2, DAY)
    edited = _land(data, "other", 3, DAY + dt.timedelta(hours=1))
    table = pq.read_table(edited, partitioning=None)
    i = table.schema.get_field_index("decision")
    write_sorted_parquet(table.set_column(i, "decision", pa.array(["DENY"] * 3)), edited)
    junk = _plant_junk(data)

    runner = CliRunner()
    for extra in ([], ["--since", "2000-01-01"], ["--session", "other"]):
        result = runner.invoke(cli, ["verify", "--data", str(data), "--format", "json", *extra])
        assert result.exit_code == 1, result.output
        out = json.loads(result.stdout)
        by_file: dict[str, list[dict[str, Any]]] = {}
        for b in out["breaks"]:
            by_file.setdefault(b["file"], []).append(b)
        for rel in junk:
            (b,) = by_file[rel]
            assert b["kind"] == "unreadable", b
            assert b["what"].startswith("unreadable, or not a span file: ")
        edited_rel = edited.relative_to(data).as_posix()
        assert by_file[edited_rel][0]["kind"] == "edited"
    text = runner.invoke(cli, ["verify", "--data", str(data)])
    assert text.exit_code == 1 and all(rel in text.output for rel in junk)


@pytest.mark.parametrize("parquet", [True, False], ids=["no-session_id", "not-parquet"])
def test_retention_and_delete_name_a_file_that_is_not_a_span_file(
    data: Path, parquet: bool
) -> None:
    _land(data, "old", 2, DAY)
    part = iter_span_files(data)[0].parent
    if parquet:
        pq.write_table(pa.table({"x": [1, 2]}), part / "not-spans.parquet")
    else:
        (part / "not-spans.parquet").write_bytes(b"this is not parquet\n" * 10)
    kinds = _kinds(data)
    delete = CliRunner().invoke(cli, ["delete", "--data", str(data), "old", "--by", "a"])
    assert delete.exit_code == 2 and "not-spans.parquet" in delete.output, delete.output
    runner = CliRunner()
    result = runner.invoke(
        cli, ["retention", "--data", str(data), "--older-than", "90d", "--by", "ops"]
    )
    assert result.exit_code == 2, result.output
    assert "not-spans.parquet" in result.output
    assert "Traceback" not in result.output
    assert _kinds(data) == kinds
    assert _rows_of(next(p for p in iter_span_files(data) if p.name != "not-spans.parquet"))
