"""The tamper-evident chain over landed span files (issue 17).

Two layers, both written by whoever lands a file (exporter, collector lander, ingest,
compaction, retention), none of them needing the others to run:

* **Row summaries.** A file's rows, in file order, give a per-session summary (rows,
  first row, a SHA-256 of the session's values in order, decision counts), a SHA-256
  per column and one over all of them (see "row summaries" below).
* **The ledger** ``<data>/chain/ledger.jsonl``: one JSON line per landed file (its
  manifest: path, SHA-256 of its bytes, the row summary), per compaction (which records
  the new file replaced) and per deletion (a tombstone: who, when, which sessions, how
  many rows). Each line names the SHA-256 of the line before it and is signed with
  Ed25519. Appends are serialized by ``flock`` on the ledger, which is the only step
  writers share (microseconds per file, not per row).

What a break looks like is decided in :mod:`tooltrail.collector.verify`; why the chain is
per data directory and not per session is argued in docs/ARCHITECTURE.md, and whose key
signs and what that protects against in docs/SECURITY.md.

The agent-side import path reaches this module (the exporter lands files): it imports
pyarrow and, lazily, ``cryptography`` only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from tooltrail import config
from tooltrail.errors import StoreError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

CHAIN_DIR: Final = "chain"
LEDGER_FILE: Final = "ledger.jsonl"
KEYS_DIR: Final = "keys"  # public keys copied here for operators (never trusted from here)
# The private key: $TOOLTRAIL_CHAIN_KEY, else <config dir>/chain-signing.key (0600).
ENV_CHAIN_KEY: Final = "TOOLTRAIL_CHAIN_KEY"
KEY_FILE: Final = "chain-signing.key"
TRUSTED_DIR: Final = "trusted-keys"  # <config dir>/trusted-keys/*.pub: other writers' keys
VERSION: Final = 1
GENESIS: Final = "0" * 64

# --- row summaries -----------------------------------------------------------------------------
#
# The *detection* of any change to a landed file is its SHA-256 in its signed record: a
# deleted, added, edited or reordered row changes the bytes. The row summary *explains* a
# change: per session (a run of rows: files are sorted by session) its row count, where
# it starts, its decisions and a SHA-256 of its decision-bearing values in order; per
# such column a SHA-256. Those are the columns below: who, which call, when, and what was
# decided (an edit elsewhere is still detected by the file's hash, reported as "the
# bytes differ"). Columns are put in a layout-independent form by a few Arrow kernels
# each and hashed per session as contiguous byte ranges (_Col), so the only Python loop
# is per session and column: landing pays about a microsecond a row for it.
SUMMARY_COLUMNS: Final = (
    "trace_id",
    "span_id",
    "session_id",
    "start_time",
    "sequence",
    "tool_name",
    "arguments",
    "decision",
    "policy_rule",
    "enforced",
    "approval_status",
    "approval_decided_by",
    "verified",
)


@dataclass(frozen=True, slots=True)
class _Col:
    """A column in a layout-independent form: a null mask (a byte a row), and either the
    values' lengths (4 bytes a row) and bytes, or an 8-byte value a row. The lengths make
    the concatenation unambiguous without escaping."""

    name: str
    mask: memoryview
    data: memoryview
    lens: memoryview | None
    offs: Any  # row i's bytes: data[offs[i] - offs[0] : offs[i + 1] - offs[0]]

    def feed(self, h: Any, s: int, e: int) -> None:
        h.update(self.mask[s:e])
        if self.lens is None:
            h.update(self.data[8 * s : 8 * e])
        else:
            base = self.offs[0]
            h.update(self.lens[4 * s : 4 * e])
            h.update(self.data[self.offs[s] - base : self.offs[e] - base])


def _fixed(arr: pa.Array, width: int) -> memoryview:
    buf = arr.buffers()[1]
    return memoryview(buf)[arr.offset * width : (arr.offset + len(arr)) * width]


def _canonical(name: str, col: pa.ChunkedArray) -> _Col:
    arr = col.combine_chunks()
    mask = _fixed(pc.cast(pc.is_null(arr), pa.int8()), 1)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # A null's slot holds no bytes (Arrow builders and the Parquet reader leave it
        # empty); the mask tells it from "".
        lens = _fixed(pc.cast(pc.binary_length(arr), pa.int32()), 4)
        _, offsets, data = arr.buffers()
        view = memoryview(offsets)
        ints = view.cast("q") if pa.types.is_large_string(t) else view.cast("i")
        offs = ints[arr.offset : arr.offset + len(arr) + 1]
        raw = memoryview(data) if data is not None else memoryview(b"")
        return _Col(name, mask, raw[offs[0] :], lens, offs)
    if pa.types.is_timestamp(t):
        arr = arr.view(pa.int64())
    return _Col(name, mask, _fixed(pc.fill_null(pc.cast(arr, pa.int64()), 0), 8), None, None)


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """A session's rows in one file: count, where they start, a digest of their values
    in file order, and their decisions."""

    session_id: str | None
    rows: int
    first_row: int
    digest: str
    decisions: dict[str, int]

    def to_json(self) -> list[Any]:
        return [self.session_id, self.rows, self.first_row, self.digest, self.decisions]

    @classmethod
    def from_json(cls, v: list[Any]) -> SessionEntry:
        return cls(v[0], int(v[1]), int(v[2]), str(v[3]), dict(v[4]))


@dataclass(frozen=True, slots=True)
class RowSummary:
    rows: int
    rows_digest: str
    columns: dict[str, str]
    sessions: list[SessionEntry]


def summarize(table: pa.Table) -> RowSummary:
    """The row summary of ``table`` as it is ordered (the landed file's order)."""
    n = table.num_rows
    names = [c for c in SUMMARY_COLUMNS if c in table.column_names]
    cols = [_canonical(c, table.column(c)) for c in names]
    decisions = _column(table, "decision")
    sha = hashlib.sha256
    entries: list[SessionEntry] = []
    start = 0
    for sid, end in _runs(table, "session_id"):
        h = sha()
        for c in cols:
            c.feed(h, start, end)
        counts = Counter(decisions[start:end])
        entries.append(
            SessionEntry(
                sid,
                end - start,
                start,
                h.hexdigest(),
                {("" if k is None else k): v for k, v in counts.items()},
            )
        )
        start = end
    per_column: dict[str, str] = {}
    whole = sha(header_of(table.column_names))
    for c in cols:
        h = sha()
        c.feed(h, 0, n)
        per_column[c.name] = h.hexdigest()
        whole.update(h.digest())
    return RowSummary(n, whole.hexdigest(), per_column, entries)


def _runs(table: pa.Table, name: str) -> list[tuple[Any, int]]:
    """(value, end row) of each run of equal values of column ``name`` (one run of null
    when the column is missing)."""
    if table.num_rows == 0:
        return []
    if name not in table.column_names:
        return [(None, table.num_rows)]
    ree = pc.run_end_encode(table.column(name).combine_chunks())
    return list(zip(ree.values.to_pylist(), ree.run_ends.to_pylist(), strict=True))


def _column(table: pa.Table, name: str) -> list[Any]:
    if name not in table.column_names:
        return [None] * table.num_rows
    values: list[Any] = table.column(name).to_pylist()
    return values


def header_of(names: Sequence[str]) -> bytes:
    """What a file's rows digest starts from: its columns, in order."""
    return ("tooltrail-rows-v1\x1f" + "\x1f".join(names)).encode()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest(table: pa.Table, path: Path, data_dir: Path) -> dict[str, Any]:
    """A landed file's manifest body (``table`` is the file's rows in file order)."""
    summary = summarize(table)
    return {
        "kind": "file",
        "file": relative(path, data_dir),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "rows": summary.rows,
        "rows_digest": summary.rows_digest,
        "columns": summary.columns,
        "sessions": [e.to_json() for e in summary.sessions],
    }


def relative(path: Path, data_dir: Path) -> str:
    """``path`` (built from ``data_dir``) as the ledger names it. Not resolved: ``spans``
    may be a symlink to another filesystem."""
    return path.relative_to(data_dir).as_posix()


def data_dir_of(landed: Path) -> Path | None:
    """``<data>`` for ``<data>/spans/date=D/name.parquet``; None for any other path."""
    part = landed.parent
    if part.name.startswith("date=") and part.parent.name == config.SPANS_DIR:
        return part.parent.parent
    return None


# --- keys ------------------------------------------------------------------------------------

_key_lock = threading.Lock()
_key_cache: dict[Path, Ed25519PrivateKey] = {}


def key_path() -> Path:
    explicit = os.environ.get(ENV_CHAIN_KEY)
    return Path(explicit) if explicit else config.config_dir() / KEY_FILE


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path}: not an Ed25519 private key")
    return key


def signing_key() -> Ed25519PrivateKey:
    """This account's chain key, created (0600) on first use."""
    path = key_path()
    with _key_lock:
        cached = _key_cache.get(path)
        if cached is not None:
            return cached
        if not path.exists():
            _create_key(path)
        key = _load_private(path)
        _key_cache[path] = key
        return key


def _create_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: use theirs
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def public_raw(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_raw(key)).hexdigest()[:16]


def public_text(key: Ed25519PublicKey) -> str:
    """The ``.pub`` file form: base64 of the raw 32 bytes."""
    return base64.b64encode(public_raw(key)).decode() + "\n"


def load_public(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, OSError) as e:
        raise StoreError(f"{path}: not an Ed25519 public key ({e})") from e


def trusted_keys(extra: Sequence[Path] = ()) -> dict[str, Ed25519PublicKey]:
    """The keys ``verify`` accepts: this account's own, <config>/trusted-keys/*.pub and
    ``extra`` (``--trust``). Never the copies in the data directory: whoever can edit
    the data could put their own key there."""
    keys: dict[str, Ed25519PublicKey] = {}
    own = key_path()
    if own.exists():
        pub = _load_private(own).public_key()
        keys[key_id(pub)] = pub
    trusted = config.config_dir() / TRUSTED_DIR
    for path in [*sorted(trusted.glob("*.pub")), *extra]:
        pub = load_public(path)
        keys[key_id(pub)] = pub
    return keys


# --- the ledger ------------------------------------------------------------------------------


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_id(line: bytes) -> str:
    """A record's id: the SHA-256 of its line (without the newline)."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def ledger_path(data_dir: Path) -> Path:
    return data_dir / CHAIN_DIR / LEDGER_FILE


@contextlib.contextmanager
def _ledger_fd(data_dir: Path) -> Iterator[int]:
    path = ledger_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _last_line(fd: int) -> bytes | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    step = 65_536
    pos = size
    tail = b""
    while pos > 0:
        pos = max(0, pos - step)
        tail = os.pread(fd, size - pos, pos)
        body = tail.rstrip(b"\n")
        cut = body.rfind(b"\n")
        if cut >= 0:
            return body[cut + 1 :]
    return tail.rstrip(b"\n")


def _writer() -> str:
    # Computed per append: a forked child is another writer.
    from tooltrail.collector.writer import new_writer_id

    return f"{new_writer_id().rsplit('-', 1)[0]}"


def _publish_key(data_dir: Path, pub: Ed25519PublicKey, kid: str) -> None:
    target = data_dir / CHAIN_DIR / KEYS_DIR / f"{kid}.pub"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(public_text(pub))
        tmp.replace(target)


def append(data_dir: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Sign ``body`` and append it to the ledger after the current last record; returns
    the record as written (with ``id``, its line's SHA-256)."""
    key = signing_key()
    pub = key.public_key()
    kid = key_id(pub)
    _publish_key(data_dir, pub, kid)
    with _ledger_fd(data_dir) as fd:
        last = _last_line(fd)
        prev, n = GENESIS, 0
        if last:
            prev = line_id(last)
            try:
                n = int(json.loads(last)["n"]) + 1
            except (ValueError, KeyError, TypeError):
                n = -1  # a broken last line: verify reports it; keep linking after it
        record = {
            **body,
            "v": VERSION,
            "n": n,
            "prev": prev,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "writer": _writer(),
            "key": kid,
        }
        record["sig"] = base64.b64encode(key.sign(canonical(record))).decode()
        line = canonical(record) + b"\n"
        # No fsync: the record is in the page cache when the call returns, which survives
        # the writer's crash; only a power loss can take it (then verify reports the file
        # as unrecorded). An fsync here would cost more than the rest of the chain.
        os.write(fd, line)
    record["id"] = line_id(line)
    return record


def last_record(data_dir: Path, kind: str) -> dict[str, Any] | None:
    """The ledger's last record of ``kind`` (None: none), read from the end backwards, so
    the cost is the records appended after it, not the whole ledger. Not checked here:
    ``verify`` checks every link and signature."""
    path = ledger_path(data_dir)
    needle = b'"kind":' + json.dumps(kind).encode()  # as canonical() writes it
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        end = os.fstat(fd).st_size
        carry = b""
        while end > 0:
            start = max(0, end - (1 << 20))
            chunk = os.pread(fd, end - start, start) + carry
            lines = chunk.split(b"\n")
            carry = lines[0] if start > 0 else b""
            for line in reversed(lines if start == 0 else lines[1:]):
                if needle in line:
                    with contextlib.suppress(ValueError):
                        rec = json.loads(line)
                        if isinstance(rec, dict) and rec.get("kind") == kind:
                            return rec
            end = start
        return None
    finally:
        os.close(fd)


def record_file(path: Path, table: pa.Table, **extra: Any) -> dict[str, Any] | None:
    """Append the manifest of a file just landed under ``<data>/spans`` (``table``: its
    rows in file order); a file elsewhere (a staging directory) is not recorded here."""
    data_dir = data_dir_of(path)
    if data_dir is None:
        return None
    return append(data_dir, {**manifest(table, path, data_dir), **extra})


@dataclass(frozen=True, slots=True)
class LedgerLine:
    number: int  # 1-based line number in the ledger file
    raw: bytes
    record: dict[str, Any] | None  # None: not JSON
    id: str


def read_ledger(data_dir: Path) -> list[LedgerLine]:
    path = ledger_path(data_dir)
    if not path.exists():
        return []
    out: list[LedgerLine] = []
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\n")
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    rec = None
            except ValueError:
                rec = None
            out.append(LedgerLine(i, line, rec, line_id(line)))
    return out


def signature_ok(record: dict[str, Any], keys: dict[str, Ed25519PublicKey]) -> str | None:
    """None when ``record`` is signed by a trusted key; else why not."""
    from cryptography.exceptions import InvalidSignature

    kid = record.get("key")
    pub = keys.get(str(kid))
    if pub is None:
        return f"signed by key {kid}, which is not trusted here (--trust, docs/SECURITY.md)"
    body = {k: v for k, v in record.items() if k != "sig"}
    try:
        pub.verify(base64.b64decode(str(record.get("sig", ""))), canonical(body))
    except (InvalidSignature, ValueError):
        return "signature does not match the record (edited after signing)"
    return None


__all__ = [
    "SessionEntry",
    "append",
    "file_sha256",
    "read_ledger",
    "record_file",
    "summarize",
    "trusted_keys",
]


FILE_KINDS: Final = frozenset({"file", "compact", "retain"})


def live_records(lines: Sequence[LedgerLine]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per landed file (path relative to the data directory): the id and record that
    cover it now, i.e. the last file record naming it that no later record replaced."""
    replaced: set[str] = set()
    for line in lines:
        if line.record is not None:
            replaced.update(str(r) for r in line.record.get("replaces", []))
    live: dict[str, tuple[str, dict[str, Any]]] = {}
    for line in lines:
        rec = line.record
        if rec is None or rec.get("kind") not in FILE_KINDS or line.id in replaced:
            continue
        live[str(rec.get("file"))] = (line.id, rec)
    return live
