"""The write-ahead spool in-process: framing, torn tails, exactly-once landing."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from collect_support import CollectorProcess, landed_rows, metric
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_collect_http import _flip, _valid, make_request

from tooltrail.collector.landing import RequestPipeline
from tooltrail.collector.receiver import Limits, RequestRejected, decompress, read_request
from tooltrail.collector.spool import Landed, Spool, land_segment, landed_name, read_segment

DAY = 86_400 * 1_000_000_000


def _payloads(n: int, spans: int = 5) -> list[tuple[bytes, list[str]]]:
    out = []
    for _ in range(n):
        req = make_request(spans)
        out.append(
            (
                req.SerializeToString(),
                [s.span_id.hex() for s in req.resource_spans[0].scope_spans[0].spans],
            )
        )
    return out


def test_torn_tail_is_cut_and_acknowledged_records_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = _payloads(3)
    for payload, _ in records:
        spool.append(payload)
    spool.close()
    (segment,) = spool.sealed()
    with open(segment, "ab") as fh:  # a record cut short by kill -9 mid-write
        fh.write(b"\x40\x00\x00\x00\x01\x02\x03\x04partial")
    again = Spool(tmp_path)
    assert again.recover() == [segment]
    read = read_segment(segment)
    assert not read.torn
    assert read.payloads == [p for p, _ in records]
    land_segment(segment, tmp_path, RequestPipeline(None, redact=True).result)
    assert [r["span_id"] for r in landed_rows(tmp_path)] == sorted(
        i for _, ids in records for i in ids
    )


def test_corrupt_record_stops_reading_there(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for payload, _ in _payloads(2):
        spool.append(payload)
    spool.close()
    (segment,) = spool.sealed()
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # flip a byte of the last payload: its CRC no longer matches
    segment.write_bytes(bytes(data))
    read = read_segment(segment)
    assert read.torn and len(read.payloads) == 1


def test_crash_between_landing_and_deleting_lands_once(tmp_path: Path) -> None:
    """Landing a segment again (it survived a crash after its Parquet was linked) adds
    nothing, also when the segment spans two date partitions."""
    spool = Spool(tmp_path)
    a, b = make_request(4), make_request(3)
    for span in b.resource_spans[0].scope_spans[0].spans:
        span.start_time_unix_nano += DAY  # the next day's partition
    spool.append(a.SerializeToString())
    spool.append(b.SerializeToString())
    spool.close()
    (segment,) = spool.sealed()
    saved = tmp_path / "saved.wal"
    shutil.copy(segment, saved)
    rows_of = RequestPipeline(None, redact=True).result
    assert land_segment(segment, tmp_path, rows_of) == Landed(7, 0)
    shutil.copy(saved, segment)  # as if killed before the unlink
    assert land_segment(segment, tmp_path, rows_of) == Landed(0, 7)
    assert len(landed_rows(tmp_path)) == 7
    names = {p.name for p in (tmp_path / "spans").glob("date=*/*.parquet")}
    assert names == {landed_name(segment)}
    assert not segment.exists()


def test_segments_rotate_by_size_and_seal_by_age(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    payload = make_request(20).SerializeToString()
    assert len(payload) > 1000
    for _ in range(6):
        spool.append(payload)
    assert len(spool.sealed()) >= 1
    spool.seal(older_than_s=0)
    assert spool.backlog_bytes == sum(p.stat().st_size for p in spool.sealed())


def test_gzip_bomb_is_413_before_inflating_it_all() -> None:
    import zlib

    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = bomb.compress(b"\0" * (64 * 1024 * 1024)) + bomb.flush()
    with pytest.raises(RequestRejected) as e:
        decompress(data, "gzip", 1024 * 1024)
    assert e.value.status == 413


def test_read_request_validates_each_span() -> None:
    req = make_request(3)
    req.resource_spans[0].scope_spans[0].spans[1].start_time_unix_nano = 0
    got = read_request("application/x-protobuf", None, req.SerializeToString(), Limits())
    assert (got.spans, got.rejected) == (2, 1)
    assert "spans[1]: startTimeUnixNano is missing" in got.error_message


def test_failed_append_never_strands_later_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write cut short (disk full) is cut off and the segment sealed: records appended
    afterwards go to a new segment, where a reader finds them."""
    import os

    from tooltrail.collector import spool as spool_mod

    spool = Spool(tmp_path)
    (first, first_ids), (second, _), (third, third_ids) = _payloads(3)
    spool.append(first)
    real_write = os.write

    def torn_write(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[:10])  # part of the record reaches the file...
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(spool_mod.os, "write", torn_write)
    with pytest.raises(OSError):
        spool.append(second)
    monkeypatch.setattr(spool_mod.os, "write", real_write)
    spool.append(third)
    spool.close()
    segments = spool.sealed()
    assert len(segments) == 2
    assert [read_segment(s).payloads for s in segments] == [[first], [third]]
    for segment in segments:
        land_segment(segment, tmp_path, RequestPipeline(None, redact=True).result)
    assert [r["span_id"] for r in landed_rows(tmp_path)] == sorted(first_ids + third_ids)


def test_worker_warm_up_runs_the_landing_path_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm-up job normalizes and encodes a span but lands nothing."""
    from tooltrail.collector import landing

    monkeypatch.setattr(landing, "_pipeline", RequestPipeline(None, redact=True))
    monkeypatch.chdir(tmp_path)
    assert landing._ready_job() == os.getpid()
    assert list(tmp_path.iterdir()) == []


# --- the quarantine: ids and reasons, never raw values, and a retention ------------------

SECRET = "ghp_" + "Zk4" * 12


def _raw_quarantine_bytes(data: Path) -> bytes:
    qdir = data / "spool" / "quarantine"
    return b"".join(p.read_bytes() for p in qdir.iterdir()) if qdir.is_dir() else b""


def test_an_undecodable_record_costs_itself_and_no_raw_bytes_are_kept(tmp_path: Path) -> None:
    """A segment left by a crash holds an acknowledged request (with a secret in it), a
    record that cannot be decoded and one whose request cannot be read: recovery lands the
    good request, notes the bad record (its place, size and digest) and the unreadable
    request's span ids, deletes the segment, and keeps no raw byte of any."""
    data = tmp_path / "data"
    good = make_request(4, attrs={"custom.secret": f"token {SECRET}"})
    junk = b"\xff\xff\xff\xff" + SECRET.encode()  # a truncated varint: DecodeError
    # Decodes, but a span has no start time (the receiver refuses those; an older
    # release's spool or a flipped bit is how one gets here): the request cannot be read.
    unreadable = make_request(2, attrs={"custom.secret": f"token {SECRET}"})
    unreadable.resource_spans[0].scope_spans[0].spans[1].start_time_unix_nano = 0
    spool = Spool(data)
    spool.append(good.SerializeToString())
    spool.append(junk)
    spool.append(unreadable.SerializeToString())
    spool.close()
    with CollectorProcess(data, "--flush-interval", "0.05") as col:
        assert metric(col.url, "spans_set_aside_total") == 3
        assert metric(col.url, "segments_quarantined_total") == 0
    ids = {s.span_id.hex() for s in good.resource_spans[0].scope_spans[0].spans}
    assert {r["span_id"] for r in landed_rows(data)} == ids
    assert not list(data.glob("spool/**/*.wal"))
    notes = [p for p in (data / "spool" / "quarantine").iterdir()]
    assert [p.suffix for p in notes] == [".jsonl"]
    first, *rest = [json.loads(line) for line in notes[0].read_text().splitlines()]
    assert first["reason"].startswith("record 1 (") and "cannot be decoded" in first["reason"]
    unread = {s.span_id.hex() for s in unreadable.resource_spans[0].scope_spans[0].spans}
    assert {n["span_id"] for n in rest} == unread
    assert {n["reason"] for n in rest} == {"the request failed: IngestError"}
    assert SECRET.encode() not in _raw_quarantine_bytes(data)


def test_quarantine_files_past_retention_are_deleted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    qdir = data / "spool" / "quarantine"
    qdir.mkdir(parents=True)
    old_raw = qdir / "seg-00000000000000000001-abcd.wal"  # as an older release kept them
    old_raw.write_bytes(b"TTSPOOL1 raw " + SECRET.encode())
    old_note = qdir / "seg-00000000000000000002-abcd.jsonl"
    old_note.write_text('{"span_id": "1"}\n')
    fresh = qdir / "seg-00000000000000000003-abcd.jsonl"
    fresh.write_text('{"span_id": "2"}\n')
    ten_days_ago = time.time() - 10 * 86_400
    for path in (old_raw, old_note):
        os.utime(path, (ten_days_ago, ten_days_ago))
    with CollectorProcess(data, "--quarantine-retention", "7"):
        pass
    assert sorted(p.name for p in qdir.iterdir()) == [fresh.name]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_an_accepted_payload_always_decodes_again(positions: list[int]) -> None:
    """What is spooled is what was accepted: a body salvaged from bad UTF-8 is spooled
    re-encoded, never as the body that did not decode (its spans would land as an
    undecodable record, acknowledged yet not landed)."""
    body = _flip(_valid, positions)
    try:
        accepted = read_request("application/x-protobuf", None, body, Limits())
    except RequestRejected:
        return
    again = ExportTraceServiceRequest.FromString(accepted.payload)
    assert sum(len(ss.spans) for rs in again.resource_spans for ss in rs.scope_spans) == (
        accepted.spans
    )
