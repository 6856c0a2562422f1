"""The collector's write-ahead spool: acknowledged spans survive ``kill -9``.

(One file past 600 lines: the segment format, its writer, its reader and its lander share
one set of invariants (durable before the 200, torn tails, exactly-once landing, the
record MAC), and each half is only correct read against the other.)

Durable before acknowledge: the HTTP handler appends each accepted request (its protobuf
encoding, framed with length and CRC-32) to the active segment and ``fdatasync``s before
it answers 200. A lander thread turns whole segments into Parquet in the background and
deletes each segment once its rows are landed.

Exactly once, also across crashes:

* Segment names are unique forever (``seg-<start ns>-<random>.wal``), and the Parquet file
  a segment lands in each date partition is named after it
  (``spans/date=D/spool-<segment>.parquet``). Landing a segment again after a crash
  between "Parquet linked" and "segment deleted" finds that name taken and skips it, so
  no row lands twice; a segment is deleted only after all its files are linked and their
  directories fsynced, so no acknowledged row is lost.
* The lander holds the spans lock (shared) from its first link until the segment is
  deleted. Compaction swaps a partition only under the exclusive lock, so it cannot merge
  a spool file away (and with it the name that proves the segment landed) while the
  segment still exists, unless the collector dies inside that window of milliseconds; see
  docs/COLLECTOR.md.
* On start-up every segment left behind is landed first. A torn tail (a record whose
  write was cut by the crash) was never acknowledged, since the fsync precedes the
  answer; it is cut off.

Authenticated records (red-team finding F1): each record carries an HMAC-SHA256 over the
segment's name, the record's place in it and the payload (which holds the sender stamp
the receiver put on every resource), under a key derived from the collector's chain
signing key (:func:`spool_key`), which lives in its config directory, never in the data
directory. Whoever can write the data directory but not read that key can neither plant a
segment nor edit, move or reorder a record so that it lands as an agent's verified
decisions: a record whose MAC does not verify is set aside (noted in the quarantine,
counted), and the segment's other records land. A ``TTSPOOL1`` segment (written before
records carried a MAC, or planted in that format) still lands, but its stamps are not
believed: its rows land claimed, ``source`` ``spool-unauthenticated:<stamp>``. See
docs/SECURITY.md section 8.

One bad span never costs another: a record that cannot be decoded, or a span the
pipeline cannot normalize (:class:`~tooltrail.collector.pipeline.SetAside`), is set aside
alone and every other span of the segment lands. What is set aside is kept in
``spool/quarantine/`` as a note (JSON lines: ids, reason, where it came from), never as
raw bytes: a raw record holds the values the scrubber never saw. Notes are deleted after
the quarantine retention (:func:`sweep_quarantine`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import string
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from tooltrail import semconv as sc
from tooltrail.collector import chain
from tooltrail.collector.pipeline import SOURCE_UNAUTHENTICATED_SPOOL, BatchResult, SetAside
from tooltrail.collector.writer import fsync_path, spans_lock, split_by_date, write_table_atomic
from tooltrail.config import SPANS_DIR
from tooltrail.errors import StoreError

_log = logging.getLogger(__name__)

SPOOL_DIR: Final = "spool"
QUARANTINE_DIR: Final = "quarantine"
SEGMENT_PREFIX: Final = "seg-"
SEGMENT_SUFFIX: Final = ".wal"
LANDED_PREFIX: Final = "spool-"
MAGIC: Final = b"TTSPOOL2"
# Before records were authenticated: still landed, their sender stamps not believed.
MAGIC_V1: Final = b"TTSPOOL1"
MAC_BYTES: Final = 32
# payload length, CRC-32 (of the payload, then the MAC), HMAC-SHA256 (record_mac)
_HEADER: Final = struct.Struct(f"<II{MAC_BYTES}s")
_HEADER_V1: Final = struct.Struct("<II")  # payload length, CRC-32 of the payload
_INDEX: Final = struct.Struct("<Q")
# HKDF info: the spool key is the chain key's, for this one purpose (never a signature key).
_KEY_INFO: Final = b"tooltrail spool record MAC v1"
DEFAULT_SEGMENT_BYTES: Final = 16 * 1024 * 1024
NOTE_SUFFIX: Final = ".jsonl"
DEFAULT_QUARANTINE_RETENTION_S: Final = 7 * 24 * 3600.0

# One request's spans, normalized and decided, in the landed schema (and those set aside).
TableOf = Callable[[ExportTraceServiceRequest], BatchResult]


class Landed(NamedTuple):
    """What landing a batch did: rows landed now, rows found already landed, spans set
    aside (noted in the quarantine), rows an agent's credential sent into a session
    another agent holds (landed claimed), spool records whose MAC did not verify (set
    aside: their spans are among ``set_aside``), records of a ``TTSPOOL1`` segment (landed
    claimed)."""

    landed: int
    skipped: int
    set_aside: int = 0
    foreign: int = 0
    forged: int = 0
    unauthenticated: int = 0


def foreign_rows(table: pa.Table | None) -> int:
    """Rows of ``table`` sent into a session another agent holds (their ``source`` says
    so: ``agent:<sender>/session-of:<holder>``)."""
    if table is None or table.num_rows == 0:
        return 0
    marked = pc.match_substring(table.column("source"), sc.SOURCE_SESSION_OF)
    return int(pc.sum(marked).as_py() or 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --- the key and the MAC -----------------------------------------------------------------

_key_lock = threading.Lock()
_keys: dict[Path, bytes] = {}


def spool_key() -> bytes:
    """The key that authenticates spool records: HKDF-SHA256 of this account's chain
    signing key (``$TOOLTRAIL_CHAIN_KEY``, else ``<config dir>/chain-signing.key``, created
    on first use), with an info string of its own.

    Derived rather than kept as a file of its own: it must be out of the data directory's
    reach exactly as the chain key is, and whoever reads the chain key can re-sign the
    whole ledger anyway, so a second file would add a thing to keep, back up and rotate,
    not a protection. The landing workers (separate processes, the same account and
    environment) derive the same key. Raises StoreError when the chain key is unusable.
    """
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    path = chain.key_path()
    with _key_lock:
        cached = _keys.get(path)
    if cached is not None:
        return cached
    try:
        private = chain.signing_key().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the chain signing key {path}: {e}") from e
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(private)
    with _key_lock:
        _keys[path] = key
    return key


def _segment_mac(key: bytes, segment: str) -> hmac.HMAC:
    """The MAC state every record of ``segment`` starts from: the format and the
    segment's name, so a record moved to another segment (or file name) fails."""
    name = segment.encode()
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(MAGIC + struct.pack("<H", len(name)) + name)
    return mac


def _mac(base: hmac.HMAC, index: int, payload: bytes) -> bytes:
    mac = base.copy()
    mac.update(_INDEX.pack(index))  # its place: records cannot be reordered or repeated
    mac.update(payload)
    return mac.digest()


def record_mac(key: bytes, segment: str, index: int, payload: bytes) -> bytes:
    """HMAC-SHA256 of record ``index`` (0-based) of the segment named ``segment``."""
    return _mac(_segment_mac(key, segment), index, payload)


def _frame(mac: bytes, payload: bytes, payload_crc: int) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(mac, payload_crc), mac) + payload


def encode_record(key: bytes, segment: str, index: int, payload: bytes) -> bytes:
    """Record ``index`` of the segment named ``segment`` as it is written after
    :data:`MAGIC` (length, CRC-32, MAC, payload)."""
    return _frame(record_mac(key, segment, index, payload), payload, zlib.crc32(payload))


# --- reading -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentRead:
    """A segment's intact records. ``macs[k]`` is record k's MAC as written (none in a
    ``version`` 1 segment); :func:`authentic` checks them."""

    payloads: list[bytes]
    valid_end: int
    torn: bool
    version: int = 2
    macs: tuple[bytes, ...] = ()


def read_segment(path: Path) -> SegmentRead:
    """Every intact record of a segment; stops at the first torn or corrupt one (a CRC
    that does not match). Checks framing only: see :func:`authentic`."""
    data = path.read_bytes()
    if data.startswith(MAGIC):
        header, version = _HEADER, 2
    elif data.startswith(MAGIC_V1):
        header, version = _HEADER_V1, 1
    else:
        # A crash right after creating the file can leave it shorter than the magic.
        return SegmentRead([], 0, bool(data))
    payloads: list[bytes] = []
    macs: list[bytes] = []
    pos = len(MAGIC)
    size = len(data)
    while pos + header.size <= size:
        fields = header.unpack_from(data, pos)
        length, crc = fields[0], fields[1]
        start = pos + header.size
        end = start + length
        if end > size:
            break
        payload = data[start:end]
        mac = fields[2] if version == 2 else b""
        if zlib.crc32(mac, zlib.crc32(payload)) != crc:
            break
        payloads.append(payload)
        macs.append(mac)
        pos = end
    return SegmentRead(payloads, pos, pos != size, version, tuple(macs) if version == 2 else ())


def authentic(read: SegmentRead, segment: str, key: bytes) -> list[bool]:
    """Whether each record of a version 2 segment named ``segment`` carries the MAC
    ``key`` gives it (constant-time comparisons). A version 1 segment has none: all false."""
    if read.version != 2:
        return [False] * len(read.payloads)
    base = _segment_mac(key, segment)
    return [
        hmac.compare_digest(_mac(base, k, payload), mac)
        for k, (payload, mac) in enumerate(zip(read.payloads, read.macs, strict=True))
    ]


class Spool:
    """Append-only segments under ``<data>/spool``; one writer process (the collector).

    ``append`` is durable on return. Segments are sealed when they pass
    ``segment_bytes`` or when the lander asks (``seal``), and handed to the lander in
    order through ``sealed()``. Records are authenticated with ``key`` (default
    :func:`spool_key`, read here so an unusable chain key stops start-up).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        sync: bool = True,
        key: bytes | None = None,
    ) -> None:
        self.dir = data_dir / SPOOL_DIR
        self.segment_bytes = segment_bytes
        self._sync = sync
        self._key = key if key is not None else spool_key()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._active: Path | None = None
        self._active_mac: hmac.HMAC | None = None  # the active segment's MAC state
        self._active_records = 0
        self._active_size = 0
        self._active_opened = 0.0
        self._last_append = 0.0
        self._sealed: list[Path] = []
        self._sizes: dict[Path, int] = {}  # sealed segment -> bytes counted in the backlog
        self._backlog = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the spool {self.dir}: {e.strerror or e}") from e

    # -- start-up ----------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Segments left by a previous run, oldest first, torn tails cut off.

        Must run before the first ``append`` (the instance lock guarantees no other
        collector writes here).
        """
        found = sorted(self.dir.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))
        for path in found:
            read = read_segment(path)
            if read.torn:
                _log.warning(
                    "spool segment %s: cutting an unacknowledged torn tail at byte %d",
                    path.name,
                    read.valid_end,
                )
                with open(path, "r+b") as fh:
                    fh.truncate(read.valid_end)
                    fh.flush()
                    os.fsync(fh.fileno())
        for path in self.dir.glob(f".{SEGMENT_PREFIX}*"):
            path.unlink(missing_ok=True)
        with self._lock:
            for path in found:
                self._sizes[path] = path.stat().st_size
                self._backlog += self._sizes[path]
            self._sealed.extend(found)
        return found

    # -- writing -----------------------------------------------------------------------

    def _open_segment(self) -> None:
        name = f"{SEGMENT_PREFIX}{time.time_ns():020d}-{secrets.token_hex(4)}{SEGMENT_SUFFIX}"
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        _write_all(fd, MAGIC)
        if self._sync:
            os.fsync(fd)
            fsync_path(self.dir)  # the new name must survive a crash too
        self._fd = fd
        self._active = path
        self._active_mac = _segment_mac(self._key, name)
        self._active_records = 0
        self._active_size = len(MAGIC)
        self._backlog += len(MAGIC)  # done() subtracts whole file sizes
        self._active_opened = time.monotonic()

    def append(self, payload: bytes) -> None:
        """Append one record; it is on stable storage when this returns."""
        payload_crc = zlib.crc32(payload)  # outside the lock; the MAC needs the place
        with self._lock:
            if self._fd is None:
                self._open_segment()
            assert self._fd is not None and self._active_mac is not None
            mac = _mac(self._active_mac, self._active_records, payload)
            record = _frame(mac, payload, payload_crc)
            try:
                _write_all(self._fd, record)
                if self._sync:
                    os.fdatasync(self._fd)
            except OSError:
                # Never append after a record that may be torn (disk full mid-write) or
                # whose sync failed: readers stop at a torn record, and acknowledged
                # records after it would be lost. Cut it off and start a new segment.
                self._abandon_tail_locked()
                raise
            self._active_records += 1
            self._active_size += len(record)
            self._backlog += len(record)
            self._last_append = time.monotonic()
            if self._active_size >= self.segment_bytes:
                self._seal_locked()

    def _abandon_tail_locked(self) -> None:
        assert self._fd is not None
        # If even this fails, readers stop at the torn record: only it (unacknowledged) is lost.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._active_size)
        self._seal_locked()

    def _seal_locked(self) -> None:
        if self._fd is None or self._active is None:
            return
        os.close(self._fd)
        self._sealed.append(self._active)
        self._sizes[self._active] = self._active_size
        self._fd = None
        self._active = None
        self._active_mac = None
        self._active_size = 0

    def seal(self, older_than_s: float = 0.0, idle_s: float | None = None) -> None:
        """Seal the active segment if it holds records and is at least ``older_than_s``
        old, or has had no append for ``idle_s`` (a burst ended: land it now)."""
        with self._lock:
            if self._active is None or self._active_size <= len(MAGIC):
                return
            now = time.monotonic()
            old = now - self._active_opened >= older_than_s
            idle = idle_s is not None and now - self._last_append >= idle_s
            if old or idle:
                self._seal_locked()

    def sealed(self) -> list[Path]:
        with self._lock:
            return list(self._sealed)

    def done(self, path: Path) -> None:
        """The lander landed ``path`` and deleted it (or moved it aside)."""
        with self._lock:
            self._sealed.remove(path)
            self._backlog -= self._sizes.pop(path, 0)

    @property
    def backlog_bytes(self) -> int:
        """Bytes acknowledged but not yet landed."""
        with self._lock:
            return self._backlog

    def close(self) -> None:
        with self._lock:
            self._seal_locked()


def landed_name(segment: Path) -> str:
    """The Parquet file name a segment lands as, in each date partition it covers."""
    return f"{LANDED_PREFIX}{segment.name.removesuffix(SEGMENT_SUFFIX)}.parquet"


def land_segment(
    segment: Path, data_dir: Path, table_of: TableOf, key: bytes | None = None
) -> Landed:
    """Land one sealed segment exactly once, then delete it.

    A record whose MAC does not verify under ``key`` (default :func:`spool_key`), a record
    that cannot be decoded, or a span that cannot be normalized, is set aside alone (noted
    in the quarantine, see :func:`note_set_aside`); the rest lands. A ``TTSPOOL1``
    segment's records land with their sender stamps not believed (:func:`_unbelieved`).
    Raises OSError when the data directory cannot be written (the segment stays, to be
    retried).
    """
    try:
        read = read_segment(segment)
    except FileNotFoundError:
        return Landed(0, 0)  # landed and deleted by another lander (a dying collector's worker)
    genuine = authentic(read, segment.name, key if key is not None else spool_key())
    legacy = read.version == 1
    tables: list[pa.Table] = []
    aside: list[SetAside] = []
    forged = 0
    for k, payload in enumerate(read.payloads):
        if not (legacy or genuine[k]):
            forged += 1
            aside.extend(_forged(k, payload))
            continue
        try:
            request = ExportTraceServiceRequest.FromString(payload)
        except Exception as e:  # DecodeError; the receiver decoded it once, so: corruption
            aside.append(_undecodable(k, payload, e))
            continue
        if legacy:
            _unbelieved(request)
        try:
            result = table_of(request)
        except (MemoryError, OSError):
            raise  # not this request's fault: the segment stays, to be retried
        except Exception as e:
            # The pipeline sets bad spans aside one by one; this is a failure no span
            # explains (ids the receiver checked, say): it costs this request alone.
            aside.extend(_aside_all(request, f"the request failed: {type(e).__name__}"))
            continue
        tables.append(result.table)
        aside.extend(result.set_aside)
    # The note first: once the segment is gone, the note is all that says what was dropped.
    note_set_aside(data_dir, segment.name, aside)
    table = pa.concat_tables(tables) if tables else None
    name = landed_name(segment)
    # Held until the segment is gone: see the module docstring (compaction).
    with spans_lock(data_dir / SPANS_DIR, exclusive=False):
        landed, skipped = land_named(table, data_dir, name)
        segment.unlink(missing_ok=True)
        fsync_path(segment.parent)
    unauthenticated = len(read.payloads) if legacy else 0
    return Landed(landed, skipped, len(aside), foreign_rows(table), forged, unauthenticated)


# The reason noted for each span of a record whose MAC does not verify.
FORGED_REASON: Final = (
    "its spool record's MAC does not verify (planted or edited in the data directory, "
    "or written under another chain key): not landed"
)


def _forged(index: int, payload: bytes) -> list[SetAside]:
    """Notes for a record whose MAC does not verify: its spans' ids when it decodes (the
    ids help find what was planted; its values are never noted), else its digest."""
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except Exception as e:
        return [_undecodable(index, payload, e)]
    notes = _aside_all(request, f"record {index}: {FORGED_REASON}")
    return notes or [SetAside("", "", f"record {index} (no spans): {FORGED_REASON}")]


def _unbelieved(request: ExportTraceServiceRequest) -> None:
    """Replace each resource's sender stamp ``S`` by ``spool-unauthenticated:S``: a
    ``TTSPOOL1`` record has no MAC, so whoever wrote the data directory may have written
    the stamp. Its rows land claimed (``verified`` false), their ``source`` saying why and
    what the stamp said (kept only when it is one the collector writes)."""
    for rs in request.resource_spans:
        attrs = rs.resource.attributes
        said = ""
        for i in reversed(range(len(attrs))):
            if attrs[i].key == sc.TT_COLLECTOR_SENDER:
                said = said or attrs[i].value.string_value
                del attrs[i]
        kv = attrs.add()
        kv.key = sc.TT_COLLECTOR_SENDER
        kv.value.string_value = f"{SOURCE_UNAUTHENTICATED_SPOOL}{_stamp_shown(said)}"


def _stamp_shown(stamp: str) -> str:
    """``stamp`` if the collector could have written it (``otlp``, ``agent:<name>``),
    else ``unknown``: a planted stamp must not pose as another kind of source."""
    name = stamp.removeprefix(sc.SOURCE_AGENT_PREFIX)
    agent = stamp.startswith(sc.SOURCE_AGENT_PREFIX) and 0 < len(name) <= _NAME_MAX
    if stamp == sc.SOURCE_OTLP or (agent and name[0].isalnum() and set(name) <= _NAME_CHARS):
        return stamp
    return "unknown"


# Agent names as tooltrail/access.py allows them (letters, digits, ._@-; at most 64).
_NAME_CHARS: Final = frozenset(string.ascii_letters + string.digits + "._@-")
_NAME_MAX: Final = 64


def land_named(table: pa.Table | None, data_dir: Path, name: str) -> tuple[int, int]:
    """Land ``table`` as ``spans/date=D/<name>`` in each date partition it covers, once:
    a partition where that name exists already is skipped (it landed before a crash, or
    it is the same batch sent again). Returns (rows landed, rows skipped)."""
    if table is None or table.num_rows == 0:
        return 0, 0
    spans_root = data_dir / SPANS_DIR
    landed = skipped = 0
    for day, part in split_by_date(table):
        target = spans_root / f"date={day}" / name
        if target.exists():
            skipped += part.num_rows
            continue
        try:
            write_table_atomic(part, target)
        except FileExistsError:
            skipped += part.num_rows
            continue
        landed += part.num_rows
    return landed, skipped


def _aside_all(request: ExportTraceServiceRequest, reason: str) -> list[SetAside]:
    return [
        SetAside(span.trace_id.hex(), span.span_id.hex(), reason)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


def _undecodable(index: int, payload: bytes, error: Exception) -> SetAside:
    # Its ids cannot be read either; its size and digest identify it in the log.
    digest = hashlib.sha256(payload).hexdigest()[:16]
    reason = (
        f"record {index} ({len(payload)} bytes, sha256 {digest}) cannot be decoded: "
        f"{type(error).__name__}"
    )
    return SetAside("", "", reason)


def quarantine_dir(data_dir: Path) -> Path:
    return data_dir / SPOOL_DIR / QUARANTINE_DIR


def note_set_aside(data_dir: Path, source: str, items: Sequence[SetAside]) -> None:
    """Write what was set aside from ``source`` (a segment or request name) as a JSON-lines
    note in the quarantine: ids and reasons, never values. Atomic, and a second landing of
    the same source (after a crash) writes the same note again, replacing it."""
    if not items:
        return
    qdir = quarantine_dir(data_dir)
    qdir.mkdir(parents=True, exist_ok=True)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [json.dumps({"at": at, "source": source, **item.as_json()}) for item in items]
    target = qdir / f"{source.removesuffix(SEGMENT_SUFFIX)}{NOTE_SUFFIX}"
    tmp = qdir / f".{target.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(qdir)


def quarantine(segment: Path, data_dir: Path, reason: str) -> Path:
    """The last resort for a segment that cannot be landed at all: note the ids of its
    spans (or its records' digests) with ``reason``, then delete it. The raw segment is
    never kept: it holds the values the scrubber never saw."""
    try:
        read = read_segment(segment)
    except FileNotFoundError:
        read = SegmentRead([], 0, False)
    items: list[SetAside] = []
    for k, payload in enumerate(read.payloads):
        try:
            request = ExportTraceServiceRequest.FromString(payload)
        except Exception as e:
            items.append(_undecodable(k, payload, e))
            continue
        items.extend(_aside_all(request, reason))
    note_set_aside(data_dir, segment.name, items or [SetAside("", "", reason)])
    segment.unlink(missing_ok=True)
    fsync_path(segment.parent)
    return quarantine_dir(data_dir) / f"{segment.name.removesuffix(SEGMENT_SUFFIX)}{NOTE_SUFFIX}"


def sweep_quarantine(data_dir: Path, older_than_s: float) -> int:
    """Delete quarantine files (notes, and raw segments an older release kept) last
    changed more than ``older_than_s`` ago; returns how many."""
    qdir = quarantine_dir(data_dir)
    if not qdir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in qdir.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


__all__ = [
    "DEFAULT_QUARANTINE_RETENTION_S",
    "DEFAULT_SEGMENT_BYTES",
    "FORGED_REASON",
    "MAGIC",
    "MAGIC_V1",
    "SPOOL_DIR",
    "Landed",
    "SegmentRead",
    "Spool",
    "authentic",
    "encode_record",
    "land_named",
    "land_segment",
    "landed_name",
    "note_set_aside",
    "quarantine",
    "quarantine_dir",
    "read_segment",
    "record_mac",
    "spool_key",
    "sweep_quarantine",
]
