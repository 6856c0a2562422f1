"""A planted or edited spool record never lands as an agent's verified record (red-team F1).

The collector's spool records carry an HMAC-SHA256 under a key derived from its chain
signing key (in its config directory, out of the data directory's reach), over the
segment's name, the record's place and the payload with its sender stamp. Someone who can
write the data directory but not read that key plants a segment, or edits the stamp of a
record a real collector spooled: on the next start those records are set aside (noted in
spool/quarantine, counted at /metrics) while every honest record lands verified, and
`tooltrail verify` stays clean. A ``TTSPOOL1`` segment (no MAC: the format before this,
and the red team's reproduction) lands, its decisions claimed. On the code before this
change the planted ``TTSPOOL1`` segment landed ``verified=True, source=agent:bot-b``.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from access_support import add
from collect_support import CollectorProcess, landed_rows, metric, post_traces, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tooltrail import semconv as sc
from tooltrail.collector.landing import RequestPipeline
from tooltrail.collector.receiver import stamp_sender, validate
from tooltrail.collector.spool import (
    MAC_BYTES,
    MAGIC,
    MAGIC_V1,
    Landed,
    Spool,
    encode_record,
    land_segment,
    read_segment,
)

PROTOBUF = "application/x-protobuf"
_ids = iter(range(0x5A00, 0x5AFFFF))
_HEADER_V2 = struct.Struct(f"<II{MAC_BYTES}s")  # the documented TTSPOOL2 record header


def _request(session: str, n: int = 2) -> ExportTraceServiceRequest:
    """``n`` tool calls in ``session`` that carry an enforced ALLOW decision."""
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(n):
        k = next(_ids)
        span = scope.spans.add()
        span.trace_id, span.span_id = k.to_bytes(16, "big"), k.to_bytes(8, "big")
        span.name = "execute_tool git_push"
        span.start_time_unix_nano, span.end_time_unix_nano = now + i, now + i + 1000
        values: dict[str, AnyValue] = {
            sc.GEN_AI_OPERATION_NAME: AnyValue(string_value=sc.OP_EXECUTE_TOOL),
            sc.GEN_AI_TOOL_NAME: AnyValue(string_value="git_push"),
            sc.TT_SESSION_ID: AnyValue(string_value=session),
            sc.TT_DECISION: AnyValue(string_value="ALLOW"),
            sc.TT_POLICY_RULE: AnyValue(string_value="pass"),
            sc.TT_ENFORCED: AnyValue(bool_value=True),
            sc.TT_SEQUENCE: AnyValue(int_value=i + 1),
        }
        for key, value in values.items():
            span.attributes.add(key=key, value=value)
    return req


def _stamped(session: str, sender: str, n: int = 2) -> bytes:
    """A request as the collector spools it: stamped with ``sender`` (receiver.py)."""
    req = _request(session, n)
    return stamp_sender(validate(req, None, 1 << 20), sender).payload


def _segment_name() -> str:
    return f"seg-{time.time_ns():020d}-{secrets.token_hex(4)}.wal"


def _v1_segment(spool_dir: Path, *payloads: bytes) -> Path:
    """A segment in the format before records carried a MAC (as the red team wrote it)."""
    path = spool_dir / _segment_name()
    body = b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads)
    path.write_bytes(MAGIC_V1 + body)
    return path


def _records(path: Path) -> list[bytes]:
    """The framed records of a TTSPOOL2 segment, as bytes."""
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    out, pos = [], len(MAGIC)
    while pos < len(data):
        length = _HEADER_V2.unpack_from(data, pos)[0]
        out.append(data[pos : pos + _HEADER_V2.size + length])
        pos += _HEADER_V2.size + length
    return out


def _edit_stamp(path: Path, index: int, sender: str) -> ExportTraceServiceRequest:
    """Rewrite record ``index``'s sender stamp in place, as someone without the key can:
    new payload, a CRC that matches it, the record's old MAC. Returns the edited request."""
    records = _records(path)
    _, _, mac = _HEADER_V2.unpack_from(records[index])
    req = ExportTraceServiceRequest.FromString(records[index][_HEADER_V2.size :])
    for kv in req.resource_spans[0].resource.attributes:
        if kv.key == sc.TT_COLLECTOR_SENDER:
            kv.value.string_value = sender
    payload = req.SerializeToString()
    crc = zlib.crc32(mac, zlib.crc32(payload))
    records[index] = _HEADER_V2.pack(len(payload), crc, mac) + payload
    path.write_bytes(MAGIC + b"".join(records))
    return req


def _span_ids(req: ExportTraceServiceRequest) -> set[str]:
    return {s.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}


def _notes(data: Path) -> dict[str, list[dict[str, Any]]]:
    qdir = data / "spool" / "quarantine"
    if not qdir.is_dir():
        return {}
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(qdir.glob("*.jsonl"))
    }


@dataclass
class Site:
    data: Path
    env: dict[str, str]
    creds: dict[str, str]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """A data directory with access control (an admin, agents bot-a and bot-b) and the
    collector's own config directory (its chain key), also for this process."""
    data, config = tmp_path / "data", tmp_path / "config"
    data.mkdir()
    monkeypatch.setenv("TOOLTRAIL_CONFIG_DIR", str(config))
    admin = add(data, "user", "admin", "admin", None)
    creds = {name: add(data, "agent", name, None, admin) for name in ("bot-a", "bot-b")}
    yield Site(data, {"TOOLTRAIL_CONFIG_DIR": str(config)}, creds)


def _spool_and_crash(site: Site, *requests: ExportTraceServiceRequest) -> Path:
    """Send ``requests`` with bot-a's credential to a real collector, then kill -9 it
    before it lands them: the segment it wrote (with its key) is left in the spool."""
    args = ("--flush-interval", "600", "--workers", "0")  # no workers to outlive it
    col = CollectorProcess(site.data, *args, env=site.env).start()
    try:
        for req in requests:
            auth = {"Authorization": f"Bearer {site.creds['bot-a']}"}
            status, _, _ = post_traces(col.url, req.SerializeToString(), PROTOBUF, auth)
            assert status == 200
    finally:
        col.kill9()
    (segment,) = (site.data / "spool").glob("seg-*.wal")
    return segment


def _verify(site: Site) -> subprocess.CompletedProcess[str]:
    tooltrail = str(Path(sys.executable).with_name("tooltrail"))
    argv = [tooltrail, "verify", "--data", str(site.data), "--format", "json"]
    env = {**os.environ, **site.env}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def _tool_rows(data: Path) -> dict[str, list[dict[str, Any]]]:
    by_session: dict[str, list[dict[str, Any]]] = {}
    for row in landed_rows(data):
        if row["span_type"] == "tool":
            by_session.setdefault(row["session_id"], []).append(row)
    return by_session


def test_a_planted_ttspool1_segment_lands_claimed_not_as_the_agent_it_names(site: Site) -> None:
    """The red team's reproduction: a valid TTSPOOL1 segment whose stamp says
    ``agent:bot-b``, written into spool/ while the collector is stopped. It lands (an
    upgrade must not lose a segment an older collector left), but claimed, its ``source``
    saying why; the segment a real collector spooled lands verified."""
    honest = _request("s-honest")
    _spool_and_crash(site, honest)
    _v1_segment(site.data / "spool", _stamped("s-planted-v1", "agent:bot-b"))
    with CollectorProcess(site.data, "--flush-interval", "0.05", env=site.env) as col:
        wait_until(lambda: len(_tool_rows(site.data).get("s-planted-v1", [])) == 2)
        wait_until(lambda: len(_tool_rows(site.data).get("s-honest", [])) == 2)
        rows = _tool_rows(site.data)
        assert {(r["verified"], r["source"]) for r in rows["s-planted-v1"]} == {
            (False, "spool-unauthenticated:agent:bot-b")
        }
        assert {(r["verified"], r["source"]) for r in rows["s-honest"]} == {(True, "agent:bot-a")}
        assert metric(col.url, "spool_records_unauthenticated_total") == 1
        assert metric(col.url, "spool_records_forged_total") == 0
    assert _verify(site).returncode == 0


def test_forged_and_edited_records_are_set_aside_and_honest_ones_land(site: Site) -> None:
    """A real collector spools two of bot-a's requests and is killed; then, with the
    collector stopped, the second record's stamp is edited to ``agent:bot-b`` (its MAC
    kept: the key is out of reach), and a TTSPOOL2 segment is planted, framed with the
    module's own function under a key that is not the collector's. On restart neither
    lands; both are noted (naming their segment and the reason) and counted; the first
    record and an honest segment after them land verified; verify is clean."""
    first, second = _request("s-kept"), _request("s-edited", 3)
    segment = _spool_and_crash(site, first, second)
    edited = _edit_stamp(segment, 1, "agent:bot-b")
    planted_req = ExportTraceServiceRequest.FromString(_stamped("s-forged", "agent:bot-b"))
    planted = site.data / "spool" / _segment_name()
    wrong_key = secrets.token_bytes(32)
    planted.write_bytes(
        MAGIC + encode_record(wrong_key, planted.name, 0, planted_req.SerializeToString())
    )
    # An honest segment after them, spooled with the collector's key (as it would be).
    spool = Spool(site.data)
    spool.append(_stamped("s-after", "agent:bot-a"))
    spool.close()
    with CollectorProcess(site.data, "--flush-interval", "0.05", env=site.env) as col:
        wait_until(lambda: not list((site.data / "spool").glob("seg-*.wal")), what="landing")
        assert metric(col.url, "spool_records_forged_total") == 2
        assert metric(col.url, "spans_set_aside_total") == 3 + 2
        assert metric(col.url, "spool_records_unauthenticated_total") == 0
    rows = _tool_rows(site.data)
    assert set(rows) == {"s-kept", "s-after"}
    for session in ("s-kept", "s-after"):
        assert {(r["verified"], r["source"]) for r in rows[session]} == {(True, "agent:bot-a")}
    notes = _notes(site.data)
    by_segment = {segment.stem: _span_ids(edited), planted.stem: _span_ids(planted_req)}
    assert {stem: {n["span_id"] for n in notes[stem]} for stem in by_segment} == by_segment
    for stem in by_segment:
        assert {n["source"] for n in notes[stem]} == {f"{stem}.wal"}
        assert all("MAC does not verify" in n["reason"] for n in notes[stem])
    assert _verify(site).returncode == 0


# --- in process: what the MAC binds ----------------------------------------------------------


def _spooled(data: Path, *payloads: bytes, key: bytes) -> Path:
    spool = Spool(data, key=key)
    for payload in payloads:
        spool.append(payload)
    spool.close()
    (segment,) = spool.sealed()
    return segment


def _land(segment: Path, data: Path, key: bytes) -> Landed:
    return land_segment(segment, data, RequestPipeline(None, redact=True).result, key)


def test_records_bind_their_segment_and_place(tmp_path: Path) -> None:
    """A genuine record copied into another segment, or two records swapped, fail their
    MAC: only the records in their own place land. A wrong key lands nothing."""
    key = secrets.token_bytes(32)
    a = [_stamped(f"a{i}", "agent:bot-a") for i in range(3)]
    seg_a = _spooled(tmp_path / "one", *a, key=key)
    seg_b = _spooled(tmp_path / "two", _stamped("b0", "agent:bot-a"), key=key)
    moved = _records(seg_a)[1]
    seg_b.write_bytes(seg_b.read_bytes() + moved)  # a genuine record, at place 1 elsewhere
    records = _records(seg_a)
    seg_a.write_bytes(MAGIC + records[0] + records[2] + records[1])  # swapped
    assert read_segment(seg_a).payloads == [a[0], a[2], a[1]]  # the framing is intact
    assert _land(seg_a, tmp_path / "one", key) == Landed(2, 0, 4, 0, forged=2)
    assert _land(seg_b, tmp_path / "two", key) == Landed(2, 0, 2, 0, forged=1)
    assert {r["session_id"] for r in landed_rows(tmp_path / "one")} == {"a0"}
    assert {r["session_id"] for r in landed_rows(tmp_path / "two")} == {"b0"}
    other = _spooled(tmp_path / "three", *a, key=key)
    assert _land(other, tmp_path / "three", secrets.token_bytes(32)).forged == 3
    assert landed_rows(tmp_path / "three") == []


def test_an_unauthenticated_stamp_never_poses_as_another_source(tmp_path: Path) -> None:
    """A TTSPOOL1 stamp the collector could not have written (say one naming a session's
    holder) lands as ``spool-unauthenticated:unknown``; ``otlp`` is kept as said."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    segment = _v1_segment(
        spool_dir,
        _stamped("v1-odd", "agent:bot-b/session-of:bot-a"),
        _stamped("v1-otlp", sc.SOURCE_OTLP),
    )
    landed = _land(segment, tmp_path, secrets.token_bytes(32))
    assert (landed.landed, landed.unauthenticated, landed.forged) == (4, 2, 0)
    got = {(r["session_id"], r["source"], r["verified"]) for r in landed_rows(tmp_path)}
    assert got == {
        ("v1-odd", "spool-unauthenticated:unknown", False),
        ("v1-otlp", "spool-unauthenticated:otlp", False),
    }
