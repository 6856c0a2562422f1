"""What issue 17's chain covers beyond the span files: an operator's completion (chained
and signed in the control ledger) and the session index (a signed record of its bytes).
Each test makes the edit an attacker with write access makes (plain ``sqlite3`` on
``control.sqlite``, pyarrow on ``session_index.parquet``) and checks what ``tooltrail
verify`` and the views say. (``verify --since`` and planted files: tests/test_chain.py.)
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from access_support import invoke, people

from tooltrail import analytics, ledger
from tooltrail.analytics.index import SESSION_INDEX_FILE, build_session_index, read_index
from tooltrail.collector import chain
from tooltrail.collector.verify import verify
from tooltrail.control import ControlStore, completion_payload, verify_control
from tooltrail.errors import NotAuthenticatedError
from tooltrail.event_stream import EventSource, head
from tooltrail.events import Cursor
from tooltrail.schema import Row
from tooltrail.signing import decider_signer

Land = Callable[[Iterable[Row]], Path]


@pytest.fixture(autouse=True)
def _own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This test's chain key and trust store, never the user's.
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(tmp_path / "config"))


def _failed_session(landed: Land, make_row: Any) -> Path:
    """Session ``s-1``, whose last action errored: it reads ``failed`` from its spans."""
    return landed(
        [
            make_row(session_id="s-1", sequence=1, decision="ALLOW"),
            make_row(session_id="s-1", sequence=2, decision="DENY", status_code="ERROR"),
        ]
    )


def _status(data: Path, session_id: str = "s-1") -> tuple[Any, Any, Any]:
    with analytics.connect(data) as con:
        header = analytics.session(con, session_id)
    assert header is not None
    row = header.row(0, named=True)
    return row["status"], row["completed_by"], row["completion_reason"]


def _sql(data: Path, statement: str, params: tuple[Any, ...] = ()) -> None:
    con = sqlite3.connect(data / "control.sqlite")
    with con:
        con.execute(statement, params)
    con.close()


def _problems(data: Path) -> list[str]:
    return [f"{b.ref}: {b.problem}" for b in verify_control(data)]


# -- 1. an operator's completion ----------------------------------------------------------


def test_a_completion_is_a_signed_ledger_entry(landed: Land, make_row: Any, tmp_path: Path) -> None:
    data = _failed_session(landed, make_row)
    creds = people(data)
    with ControlStore(data) as store, pytest.raises(NotAuthenticatedError):
        store.complete_session("s-1", by="olga", reason="no key")  # unsigned: refused
    code, _, err = invoke(data, "complete", "s-1", "--reason", "retried", token=creds["olga"])
    assert code == 0, err
    with ControlStore(data) as store:
        (entry,) = [e for e in ledger.entries_for(store._con, "s-1") if e.kind == "completion"]
    doc = entry.payload()
    assert entry.signed and (doc["action"], doc["decider"], doc["role"]) == (
        "complete",
        "olga",
        "operator",
    )
    assert _problems(data) == []
    assert _status(data) == ("completed", "olga", "retried")
    code, out, _ = invoke(data, "verify", "--format", "json")
    assert code == 0 and json.loads(out)["control_checked"] is True


def test_a_completion_written_by_hand_is_flagged_and_not_believed(
    landed: Land, make_row: Any
) -> None:
    data = _failed_session(landed, make_row)
    with ControlStore(data):
        pass  # the store exists, as it does once anyone paused or approved anything
    _sql(
        data,
        "INSERT INTO session_completions (session_id, actor, at, reason) VALUES (?,?,?,?)",
        ("s-1", "mallory", 1.0e9, "looks done"),
    )
    (problem,) = _problems(data)
    assert problem.startswith("s-1: a completion by 'mallory' has no signed record")
    assert _status(data) == ("failed", None, None)  # what its spans say
    code, out, _ = invoke(data, "verify")
    assert code == 1 and "'mallory' has no signed record" in out


def test_an_edited_or_deleted_completion_is_flagged(landed: Land, make_row: Any) -> None:
    data = _failed_session(landed, make_row)
    with ControlStore(data) as store:
        store.complete_session("s-1", by="ops", reason="done by hand")
    assert _problems(data) == [] and _status(data)[0] == "completed"

    _sql(data, "UPDATE session_completions SET actor = 'mallory', reason = 'whatever'")
    (problem,) = _problems(data)
    assert "differs from its signed record" in problem
    assert _status(data) == ("failed", None, None)

    _sql(data, "DELETE FROM session_completions")
    (problem,) = _problems(data)
    assert "its signed completion has no row in session_completions (deleted)" in problem


def test_an_unsigned_completion_entry_is_not_believed_under_access_control(
    landed: Land, make_row: Any
) -> None:
    """Someone who can write control.sqlite appends a well-chained but unsigned entry and
    its row (what the library would write without a key): the signature check refuses
    it."""
    data = _failed_session(landed, make_row)
    people(data)
    with ControlStore(data) as store:
        con = store._con
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO session_completions (session_id, actor, at, reason) VALUES (?,?,?,?)",
            ("s-1", "olga", 1.0e9, "forged"),
        )
        payload = completion_payload("s-1", "olga", "operator", 1.0e9, "forged")
        ledger.append(con, "completion", "s-1", payload)
        con.execute("COMMIT")
    problems = _problems(data)
    assert any("completion entry" in p and "signature does not verify" in p for p in problems)
    assert _status(data) == ("failed", None, None)


def test_a_completion_signed_by_an_approver_is_not_believed(landed: Land, make_row: Any) -> None:
    """The CLI refuses an approver (operator role needed); a completion an approver signs
    through the library anyway is flagged by verify and not believed by the views."""
    data = _failed_session(landed, make_row)
    creds = people(data)
    code, _, err = invoke(data, "complete", "s-1", "--reason", "x", token=creds["alice"])
    assert code != 0 and "may not" in err
    with ControlStore(data) as store:
        signer = decider_signer(data, creds["alice"])
        store.complete_session("s-1", by="alice", reason="mine now", signer=signer)
    (problem,) = _problems(data)
    assert "role 'approver' may not complete sessions" in problem
    assert _status(data) == ("failed", None, None)


# -- 2. the session index -----------------------------------------------------------------


def _two_sessions(landed: Land, make_row: Any) -> Path:
    data = landed([make_row(session_id="s-1", decision="DENY"), make_row(session_id="s-2")])
    assert build_session_index(data) is not None
    return data


def test_building_the_index_appends_a_signed_record(landed: Land, make_row: Any) -> None:
    data = _two_sessions(landed, make_row)
    record = chain.last_record(data, "index")
    assert record is not None and record["sha256"] == chain.file_sha256(data / SESSION_INDEX_FILE)
    assert record["sessions"] == 2 and verify(data).ok
    assert read_index(data) is not None  # the views use it


def test_an_edited_index_is_a_break_and_the_views_ignore_it(
    landed: Land, make_row: Any, caplog: pytest.LogCaptureFixture
) -> None:
    data = _two_sessions(landed, make_row)
    path = data / SESSION_INDEX_FILE
    table = pq.read_table(path)
    # The attacker hides session s-1 (and its DENY) from the session list, keeping the
    # index's metadata so that it still looks current.
    keep = pa.array([sid != "s-1" for sid in table["session_id"].to_pylist()])
    pq.write_table(table.filter(keep).replace_schema_metadata(table.schema.metadata), path)

    (b,) = verify(data).breaks
    assert (b.kind, b.file) == ("index", SESSION_INDEX_FILE)
    assert "derived session index" in b.what and "`tooltrail compact` rebuilds it" in b.what
    code, out, _ = invoke(data, "verify", "--session", "s-2")
    assert code == 1 and "session_index.parquet" in out  # whatever session is asked about

    with caplog.at_level(logging.WARNING):
        assert read_index(data) is None
    assert "differs from its record" in caplog.text
    with analytics.connect(data) as con:
        ids = sorted(analytics.sessions(con)["session_id"].to_list())
    assert ids == ["s-1", "s-2"]  # computed from the spans

    assert build_session_index(data) is not None  # what `tooltrail compact` runs
    assert verify(data).ok and read_index(data) is not None


def test_an_index_without_a_record_is_a_break(landed: Land, make_row: Any) -> None:
    data = _two_sessions(landed, make_row)
    lines = chain.ledger_path(data).read_bytes().splitlines(keepends=True)
    chain.ledger_path(data).write_bytes(b"".join(lines[:-1]))  # the index record cut off
    (b,) = verify(data).breaks
    assert b.kind == "index" and "no ledger record covers the session index" in b.what
    assert read_index(data) is None


# -- the live stream ----------------------------------------------------------------------


def test_the_stream_sends_believed_completions_only(landed: Land, make_row: Any) -> None:
    data = _failed_session(landed, make_row)
    with ControlStore(data):
        pass
    source = EventSource(data, head(data))
    _sql(
        data,
        "INSERT INTO session_completions (session_id, actor, at, reason) VALUES (?,?,?,?)",
        ("s-1", "mallory", 1.0e9, "looks done"),
    )
    with ControlStore(data) as store:
        store.complete_session("s-1", by="ops", reason="done by hand")
    events = [e for e in source.poll() if e.kind.startswith("session.")]
    assert [(e.kind, e.detail["actor"]) for e in events] == [("session.completed", "ops")]
    assert events[0].summary == "session completed by ops: done by hand"
    assert [e.kind for e in EventSource(data, Cursor.decode(events[0].id)).poll()] == []
    everything = EventSource(data, Cursor()).poll()
    assert [e.detail.get("actor") for e in everything if e.kind == "session.completed"] == ["ops"]


def test_an_event_id_from_before_completions_were_streamed_still_resumes(
    landed: Land, make_row: Any
) -> None:
    data = _failed_session(landed, make_row)
    with ControlStore(data) as store:
        store.complete_session("s-1", by="ops", reason="earlier")
        store.set_session_state("s-1", "pause", "olga")
    (paused,) = EventSource(data, Cursor()).poll()[-1:]
    # The same position as an id written by the previous version (six positions).
    raw = json.loads(base64.urlsafe_b64decode(paused.id.split(".", 1)[1] + "=="))
    old_id = "1." + base64.urlsafe_b64encode(json.dumps(raw[:6]).encode()).decode().rstrip("=")
    resumed = EventSource(data, Cursor.decode(old_id))
    with ControlStore(data) as store:
        store.complete_session("s-1", by="ops", reason="later")
    kinds = [(e.kind, e.detail.get("reason")) for e in resumed.poll()]
    assert kinds == [("session.completed", "later")]  # not the earlier one again
