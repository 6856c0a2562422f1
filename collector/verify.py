"""``tooltrail verify``: recompute the chain and name every break (issue 17).

Checks, in order:

1. The ledger itself: each record links to the SHA-256 of the line before it, numbers
   run without a gap, and each is signed by a trusted key (a removed, edited, inserted or
   reordered record breaks the links after it).
2. Each landed file against the record that covers it: its bytes (SHA-256). A file whose
   bytes differ has its rows recomputed (collector/chain.py: per session the row count,
   a digest of its values in order and the decision counts; a digest per column) and the
   difference is named per session: rows deleted or added (with the decisions before and
   after), values edited (and in which column), rows reordered.
3. Every file a live record names still exists (a deleted file), and no file lands
   without a record (a planted file, or one landed before the chain existed).
4. Compaction and retention: a compacted file's sessions (rows and decisions) add up to
   the files it replaced; a file rewritten by retention keeps every other session's rows
   bit for bit (same digests) and drops only the sessions its signed tombstone names.
5. The session index (``session_index.parquet``, derived from the span files, read by
   the views): its bytes against the ledger's last ``index`` record.
6. Control events, when the control store offers ``tooltrail.control.verify_control``.

Just past 600 lines, kept whole: the six checks share one pass over the ledger and the file
listing, and a split would pass that state between modules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tooltrail import config
from tooltrail.collector.chain import (
    GENESIS,
    LedgerLine,
    SessionEntry,
    file_sha256,
    live_records,
    read_ledger,
    signature_ok,
    summarize,
    trusted_keys,
)
from tooltrail.collector.writer import iter_span_files
from tooltrail.errors import BadInputError

# The session index's name and record kind (tooltrail.analytics.index, which imports
# duckdb: not imported here).
SESSION_INDEX_FILE = "session_index.parquet"
INDEX_KIND = "index"


# Breaks reported whatever session ``--session`` asks about.
_ANY_SESSION = frozenset({"ledger", "control", "index", "unreadable"})


@dataclass(frozen=True, slots=True)
class Break:
    """One thing that is wrong: ``kind`` is a stable word, ``what`` says it in full."""

    kind: str
    what: str
    file: str | None = None
    session: str | None = None
    sequence: str | None = None  # ledger record number, rows in the file

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VerifyReport:
    records: int = 0
    files: int = 0
    rows: int = 0
    tombstones: int = 0
    skipped: int = 0  # recorded files not hashed: recorded before ``--since``
    control_checked: bool = False
    seconds: float = 0.0
    head: str | None = None  # the last record's id: keep it elsewhere to anchor the ledger
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "files": self.files,
            "rows": self.rows,
            "tombstones": self.tombstones,
            "skipped": self.skipped,
            "control_checked": self.control_checked,
            "head": self.head,
            "seconds": round(self.seconds, 3),
            "breaks": [b.to_dict() for b in self.breaks],
        }


@dataclass(frozen=True, slots=True)
class _Agg:
    rows: int
    decisions: dict[str, int]
    digests: tuple[str, ...]
    first_row: int
    last_row: int


def _aggregate(entries: Iterable[SessionEntry]) -> dict[str | None, _Agg]:
    out: dict[str | None, _Agg] = {}
    for e in entries:
        prev = out.get(e.session_id)
        if prev is None:
            out[e.session_id] = _Agg(
                e.rows, dict(e.decisions), (e.digest,), e.first_row, e.first_row + e.rows
            )
            continue
        decisions = dict(prev.decisions)
        for k, v in e.decisions.items():
            decisions[k] = decisions.get(k, 0) + v
        out[e.session_id] = _Agg(
            prev.rows + e.rows,
            decisions,
            (*prev.digests, e.digest),
            min(prev.first_row, e.first_row),
            max(prev.last_row, e.first_row + e.rows),
        )
    return out


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k or 'none'} {v}" for k, v in sorted(d.items())) or "none"


def _entries(record: dict[str, Any]) -> list[SessionEntry]:
    return [SessionEntry.from_json(v) for v in record.get("sessions", [])]


def _out_of_order(times: list[Any], first: int, last: int) -> bool:
    run = [t for t in times[first:last] if t is not None]
    return any(b < a for a, b in itertools.pairwise(run))


def diff_sessions(
    recorded: list[SessionEntry], actual: list[SessionEntry], times: list[Any]
) -> list[tuple[str | None, str, str, str]]:
    """(session, kind, what, rows) for each session whose rows differ from the record;
    ``times``: the file's start times in file order (a reordered session is out of the
    landed order, which sorts a session's rows by start time)."""
    rec, act = _aggregate(recorded), _aggregate(actual)
    out: list[tuple[str | None, str, str, str]] = []
    for sid in sorted(set(rec) | set(act), key=lambda s: s or ""):
        r, a = rec.get(sid), act.get(sid)
        if r is not None and a is None:
            what = f"all {r.rows} rows of the session are gone (decisions {_counts(r.decisions)})"
            out.append((sid, "rows_deleted", what, f"rows {r.first_row}-{r.last_row - 1}"))
            continue
        if a is not None and r is None:
            what = f"{a.rows} rows no record covers (decisions {_counts(a.decisions)})"
            out.append((sid, "rows_added", what, f"rows {a.first_row}-{a.last_row - 1}"))
            continue
        assert r is not None and a is not None
        where = f"rows {a.first_row}-{a.last_row - 1}"
        before_after = f"decisions {_counts(r.decisions)} recorded, {_counts(a.decisions)} now"
        if a.rows < r.rows:
            what = f"{r.rows - a.rows} of {r.rows} rows gone; {before_after}"
            out.append((sid, "rows_deleted", what, where))
        elif a.rows > r.rows:
            out.append((sid, "rows_added", f"{a.rows - r.rows} rows added; {before_after}", where))
        elif a.digests != r.digests:
            if a.decisions != r.decisions:
                out.append((sid, "edited", f"values edited; {before_after}", where))
            elif _out_of_order(times, a.first_row, a.last_row):
                what = f"its {r.rows} rows are out of their landed (time) order"
                out.append((sid, "reordered", what, where))
            else:
                out.append((sid, "edited", f"values edited in its {r.rows} rows", where))
    return out


class _Verifier:
    def __init__(
        self,
        data_dir: Path,
        since: dt.date | None,
        session: str | None,
        trust: Sequence[Path],
        deep: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.deep = deep
        self.since = since
        self.session = session
        self.keys = trusted_keys(trust)
        self.report = VerifyReport()
        self.by_id: dict[str, dict[str, Any]] = {}
        self.seq_of: dict[str, str] = {}

    # -- scope -----------------------------------------------------------------------------

    def _in_scope_record(self, rec: dict[str, Any]) -> bool:
        """Whether ``--since`` asks for this record's file to be hashed: its ledger record
        was appended on or after that UTC day. The record's time is signed with it, so a
        writer without the key cannot move a file out of scope, as it could by choosing
        the file's ``date=`` directory (which is why that directory decides nothing)."""
        if self.since is None:
            return True
        try:
            at = dt.datetime.fromisoformat(str(rec.get("at")))
        except ValueError:
            return True  # an unreadable time: check it (its signature fails anyway)
        return at.astimezone(dt.UTC).date() >= self.since

    def add(self, b: Break, sessions: Iterable[str | None] = ()) -> None:
        if self.session is not None:
            names = {b.session, *sessions}
            # (an unreadable file may hold the session's rows: always reported)
            if self.session not in names and b.kind not in _ANY_SESSION:
                return
        self.report.breaks.append(b)

    # -- 1. the ledger --------------------------------------------------------------------

    def ledger(self) -> list[LedgerLine]:
        lines = read_ledger(self.data_dir)
        prev, expected = GENESIS, 0
        for line in lines:
            rec = line.record
            where = f"ledger line {line.number}"
            if rec is None:
                self.add(Break("ledger", f"{where} is not a record (edited or corrupted)"))
                prev, expected = line.id, expected + 1
                continue
            seq = f"record {rec.get('n')}"
            if rec.get("prev") != prev:
                self.add(
                    Break(
                        "ledger",
                        f"{where}: the chain is broken before it (a record was removed, "
                        "edited, inserted or reordered)",
                        rec.get("file"),
                        sequence=seq,
                    )
                )
            elif rec.get("n") != expected:
                self.add(Break("ledger", f"{where}: numbered {rec.get('n')}, expected {expected}"))
            why = signature_ok(rec, self.keys)
            if why is not None:
                self.add(Break("ledger", f"{where}: {why}", rec.get("file"), sequence=seq))
            self.by_id[line.id] = rec
            self.seq_of[line.id] = seq
            prev, expected = line.id, expected + 1
        self.report.records = len(lines)
        self.report.head = lines[-1].id if lines else None
        return lines

    def anchors(self, lines: list[LedgerLine], anchors: Sequence[str]) -> None:
        """Each anchor (a head saved elsewhere earlier) must still be in the ledger."""
        ids = {line.id for line in lines}
        for anchor in anchors:
            if anchor not in ids:
                self.add(
                    Break(
                        "ledger",
                        f"the anchored record {anchor[:16]}… is not in the ledger: it was"
                        " truncated or rewritten after that head was saved",
                    )
                )

    # -- 2/3. files -----------------------------------------------------------------------

    def files(self, lines: list[LedgerLine]) -> None:
        live = live_records(lines)
        on_disk = {
            p.relative_to(self.data_dir).as_posix(): p for p in iter_span_files(self.data_dir)
        }
        # Every file is listed whatever ``--since`` says (listing is cheap): an unrecorded
        # file is reported under any directory; only the hashing of recorded files is
        # limited to records appended since that day.
        for rel, path in sorted(on_disk.items()):
            found = live.get(rel)
            try:
                if found is None:
                    self._unrecorded(rel, path)
                elif self._in_scope_record(found[1]):
                    self._check_file(rel, path, found[0], found[1])
                else:
                    self.report.skipped += 1
            except (pa.ArrowException, KeyError, OSError) as err:
                # One planted or truncated file is one break: it must not hide the others.
                what = f"no column {err}" if isinstance(err, KeyError) else str(err)
                self.add(Break("unreadable", f"unreadable, or not a span file: {what}", rel))
        for rel, (rid, rec) in sorted(live.items()):
            if rel not in on_disk:
                entries = _entries(rec)
                sessions = ", ".join(str(e.session_id) for e in entries[:5])
                more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
                decisions: dict[str, int] = {}
                for e in entries:
                    for k, v in e.decisions.items():
                        decisions[k] = decisions.get(k, 0) + v
                self.add(
                    Break(
                        "file_deleted",
                        f"the file is gone: its {rec.get('rows')} rows (sessions {sessions}{more};"
                        f" decisions {_counts(decisions)}) with it",
                        rel,
                        entries[0].session_id if len(entries) == 1 else None,
                        self.seq_of[rid],
                    ),
                    [e.session_id for e in entries],
                )

    def _unrecorded(self, rel: str, path: Path) -> None:
        sessions = pq.read_table(path, columns=["session_id"], partitioning=None)
        names = sorted({str(s) for s in sessions["session_id"].to_pylist()})
        self.report.files += 1
        self.report.rows += sessions.num_rows
        self.add(
            Break(
                "unrecorded",
                f"no record covers this file's {sessions.num_rows} rows (sessions"
                f" {', '.join(names[:5])}{' …' if len(names) > 5 else ''}): planted, or landed"
                " before the chain existed",
                rel,
                names[0] if len(names) == 1 else None,
            ),
            names,
        )

    def _check_file(self, rel: str, path: Path, rid: str, rec: dict[str, Any]) -> None:
        seq = self.seq_of[rid]
        self.report.files += 1
        same_bytes = file_sha256(path) == rec.get("sha256")
        if same_bytes and not self.deep:
            # The same bytes are the same rows: nothing to recompute.
            self.report.rows += int(rec.get("rows") or 0)
            return
        table = pq.read_table(path, partitioning=None)
        summary = summarize(table)
        self.report.rows += summary.rows
        recorded = _entries(rec)
        names = [e.session_id for e in recorded] + [e.session_id for e in summary.sessions]
        times = _column_values(table, "start_time")
        diffs = diff_sessions(recorded, summary.sessions, times)
        changed = _changed_columns(rec.get("columns") or {}, summary.columns)
        for sid, kind, what, rows in diffs:
            if kind == "edited" and changed:
                what += f" (column {', '.join(changed)})"
            self.add(Break(kind, f"session {sid}: {what}", rel, sid, f"{seq}, {rows}"), names)
        if diffs:
            return
        if summary.rows_digest != rec.get("rows_digest"):
            what = "the file's rows are in another order"
            if changed:
                what = f"values of column {', '.join(changed)} differ from the recorded ones"
            self.add(Break("edited", what, rel, sequence=seq), names)
        elif not same_bytes:
            self.add(
                Break(
                    "replaced",
                    "the file's bytes differ from the recorded ones (rewritten; its rows read"
                    " the same)",
                    rel,
                    sequence=seq,
                ),
                names,
            )

    # -- 4. compaction and retention ----------------------------------------------------

    def rewrites(self) -> None:
        groups: dict[tuple[str, ...], list[tuple[str, dict[str, Any]]]] = {}
        for rid, rec in self.by_id.items():
            kind = rec.get("kind")
            if kind == "compact":
                groups.setdefault(tuple(map(str, rec.get("replaces", []))), []).append((rid, rec))
            elif kind == "retain":
                self._retained(rid, rec)
            elif kind == "tombstone":
                self.report.tombstones += 1
                self._tombstone(rid, rec)
        for group in groups.values():
            self._compaction(group)

    def _replaced(self, rid: str, rec: dict[str, Any]) -> list[dict[str, Any]] | None:
        out: list[dict[str, Any]] = []
        for old in rec.get("replaces", []):
            found = self.by_id.get(str(old))
            if found is None:
                self.add(
                    Break(
                        "ledger",
                        f"replaces record {str(old)[:12]}…, which the ledger does not hold",
                        rec.get("file"),
                        sequence=self.seq_of[rid],
                    )
                )
                return None
            out.append(found)
        return out

    def _compaction(self, group: list[tuple[str, dict[str, Any]]]) -> None:
        rid, rec = group[0]
        olds = self._replaced(rid, rec)
        if olds is None:
            return
        before = _aggregate(e for old in olds for e in _entries(old))
        after = _aggregate(e for _, out in group for e in _entries(out))
        if len(group) != rec.get("outputs", 1):
            self.add(
                Break(
                    "compaction",
                    f"{rec.get('outputs')} compacted files were recorded, {len(group)} are in"
                    " the ledger",
                    rec.get("file"),
                    sequence=self.seq_of[rid],
                )
            )
        for sid in sorted(set(before) | set(after), key=lambda s: s or ""):
            b, a = before.get(sid), after.get(sid)
            if b is None or a is None or (b.rows, b.decisions) != (a.rows, a.decisions):
                self.add(
                    Break(
                        "compaction",
                        f"session {sid}: the compacted file's rows ({a.rows if a else 0}) do "
                        f"not add up to the {b.rows if b else 0} rows of the files it replaced",
                        rec.get("file"),
                        sid,
                        self.seq_of[rid],
                    )
                )

    def _retained(self, rid: str, rec: dict[str, Any]) -> None:
        olds = self._replaced(rid, rec)
        tomb = self.by_id.get(str(rec.get("tombstone")))
        if olds is None:
            return
        if tomb is None or tomb.get("kind") != "tombstone":
            self.add(
                Break(
                    "retention",
                    "a rewrite that no tombstone sanctions",
                    rec.get("file"),
                    sequence=self.seq_of[rid],
                )
            )
            return
        removed = set(tomb.get("sessions", []))
        before = {
            e.session_id: (e.rows, e.digest, e.decisions)
            for old in olds
            for e in _entries(old)
            if e.session_id not in removed
        }
        after = {e.session_id: (e.rows, e.digest, e.decisions) for e in _entries(rec)}
        if before != after:
            changed = sorted(
                (
                    str(s)
                    for s in set(before) ^ set(after)
                    | {s for s in before if before[s] != after.get(s)}
                ),
            )
            self.add(
                Break(
                    "retention",
                    "the rewritten file changed sessions its tombstone does not name: "
                    + ", ".join(changed[:5]),
                    rec.get("file"),
                    sequence=self.seq_of[rid],
                )
            )

    def _tombstone(self, rid: str, rec: dict[str, Any]) -> None:
        olds = self._replaced(rid, rec)
        if olds is None:
            return
        removed = set(rec.get("sessions", []))
        rows = sum(e.rows for old in olds for e in _entries(old) if e.session_id in removed)
        if rows != rec.get("rows"):
            self.add(
                Break(
                    "retention",
                    f"the tombstone says {rec.get('rows')} rows were deleted; the files it "
                    f"replaced held {rows} rows of its sessions",
                    sequence=self.seq_of[rid],
                )
            )

    # -- 5. the session index ----------------------------------------------------------------

    def index(self, lines: list[LedgerLine]) -> None:
        """The index the views read must be the one the last ``index`` record signed. It is
        derived (every value comes from the span files, which are checked above), so the
        fix is to rebuild it; the views ignore a mismatching index meanwhile."""
        path = self.data_dir / SESSION_INDEX_FILE
        if not path.exists():
            return
        found = next(
            (
                line
                for line in reversed(lines)
                if line.record is not None and line.record.get("kind") == INDEX_KIND
            ),
            None,
        )
        derived = (
            "; it is the derived session index (computed from the span files, which the"
            " views then read instead): `tooltrail compact` rebuilds it"
        )
        if found is None or found.record is None:
            what = "no ledger record covers the session index (written by hand, or before"
            self.add(Break("index", what + " the index was chained)" + derived, path.name))
        elif file_sha256(path) != found.record.get("sha256"):
            what = "the session index differs from its signed record (edited or replaced)"
            self.add(Break("index", what + derived, path.name, sequence=self.seq_of[found.id]))

    # -- 6. control events ------------------------------------------------------------------

    def control(self) -> None:
        """Control events are chained and signed by the control store (another part of
        issue 17); verify reports what its checker finds, when the store has one."""
        from tooltrail import control

        check: Callable[[Path], Iterable[Any]] | None = getattr(control, "verify_control", None)
        if check is None:
            return
        if not (self.data_dir / config.CONTROL_FILE).exists():
            # Opening the store would create an empty one that verifies. With access control
            # on, decisions and session controls live there: a missing store is a deletion.
            from tooltrail.access import access_path

            if access_path(self.data_dir).exists():
                what = (
                    f"the control store ({config.CONTROL_FILE}) is missing: with access"
                    " control on, every approval, decision and session control is gone"
                )
                self.add(Break("control_store_missing", what, file=config.CONTROL_FILE))
            return
        self.report.control_checked = True
        for item in check(self.data_dir):
            self.add(_control_break(item))


def _column_values(table: Any, name: str) -> list[Any]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return list(table.column(name).cast("int64").to_pylist())


def _changed_columns(recorded: dict[str, str], actual: dict[str, str]) -> list[str]:
    return sorted(k for k in set(recorded) | set(actual) if recorded.get(k) != actual.get(k))


def _control_break(item: Any) -> Break:
    if isinstance(item, Break):
        return item
    if hasattr(item, "to_dict"):
        item = item.to_dict()
    elif dataclasses.is_dataclass(item) and not isinstance(item, type):
        item = dataclasses.asdict(item)
    if isinstance(item, dict):
        what = str(item.get("what") or item.get("reason") or item.get("problem") or item)
        session = item.get("session") or item.get("session_id")
        seq = item.get("sequence") or item.get("id") or item.get("seq")
        return Break(
            "control",
            what,
            "control.sqlite",
            None if session is None else str(session),
            None if seq is None else str(seq),
        )
    return Break("control", str(item), "control.sqlite")


def verify(
    data_dir: Path,
    *,
    since: dt.date | None = None,
    session: str | None = None,
    trust: Sequence[Path] = (),
    deep: bool = False,
    anchors: Sequence[str] = (),
) -> VerifyReport:
    """Recompute the chain of ``data_dir`` and report every break.

    Every file's SHA-256 is recomputed; a file whose bytes differ from its record has
    its rows recomputed to name what changed. ``deep`` recomputes every file's rows.
    ``anchors``: ledger heads saved earlier (``report.head``), each of which must still be
    in the ledger.

    Example:

        report = verify(Path("tooltrail-data"), session="s-123")
        assert report.ok, [b.what for b in report.breaks]
    """
    if not data_dir.is_dir():
        raise BadInputError(f"{data_dir}: no such data directory")
    started = time.perf_counter()
    v = _Verifier(data_dir, since, session, trust, deep)
    lines = v.ledger()
    v.anchors(lines, anchors)
    v.files(lines)
    v.rewrites()
    v.index(lines)
    v.control()
    v.report.seconds = time.perf_counter() - started
    return v.report


__all__ = ["Break", "VerifyReport", "diff_sessions", "verify"]
