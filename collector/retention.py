"""Deleting terminal sessions: ``tooltrail delete`` and ``tooltrail retention`` (issue 17).

Landed files are immutable, so deleting a session rewrites each file holding its rows
without them, the way compaction publishes files: the partition is rebuilt in a staging
directory (the untouched files hard-linked, the rewritten ones new) and swapped in with
one ``renameat2(RENAME_EXCHANGE)`` under the exclusive spans lock, so a reader sees the
old partition or the new one, never a half-deleted session.

Then the chain records it: one signed **tombstone** (who, when, why, which sessions, how
many rows, which records it replaced) and, per rewritten file, a ``retain`` record naming
the record it replaced and the tombstone. ``tooltrail verify`` checks that a rewritten
file kept every other session's rows bit for bit (same ordered digests), so a sanctioned
deletion verifies clean while the same rows removed without a tombstone are tampering.

A deletion re-checks what it deletes: :func:`check_deletable` records what each
session's files held when it was found terminal, and the plan (and, under the exclusive
spans lock, every file landed since the plan) must hold no more rows and no later time,
else that session is not deleted (:class:`SessionChanged`). A file no chain record covers
is never rewritten once a ledger exists: that would sign whatever was planted in it.

One file past 600 lines: the check, the plan, the staging and the swap share private
types whose half-steps must not become API (a caller could swap an unchecked plan).

Who may delete is checked by the caller (the CLI and the dashboard: an admin when access
control is on). :class:`RetentionLoop` applies retention from ``tooltrail collect
--retention`` in a background thread of its own, off the landing path.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tooltrail.collector import chain
from tooltrail.collector.compact import _exchange, _single_compactor, _staging_root
from tooltrail.collector.writer import (
    iter_span_files,
    new_writer_id,
    spans_lock,
    write_table_atomic,
)
from tooltrail.config import SPANS_DIR
from tooltrail.errors import BadInputError, StoreError

_log = logging.getLogger(__name__)

# Retention configured for a data directory when `tooltrail retention` has no --older-than
# (and the age `tooltrail collect` applies by itself when it has no --retention).
ENV_RETENTION = "TOOLTRAIL_RETENTION"
# Who the collector's own retention passes are recorded as in their tombstones.
COLLECTOR_IDENTITY = "retention (collector)"


@dataclass
class DeleteReport:
    sessions: list[str] = field(default_factory=list)
    rows: int = 0
    files_rewritten: int = 0
    files_removed: int = 0
    tombstone: str | None = None
    # Sessions retention left for a later pass (they changed since the check), and why.
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "rows": self.rows,
            "files_rewritten": self.files_rewritten,
            "files_removed": self.files_removed,
            "tombstone": self.tombstone,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class SessionMark:
    """What the files held of one session when it was checked: its rows and its latest
    time (end, else start), read from the files themselves as the plan reads them."""

    rows: int = 0
    last: dt.datetime | None = None

    def merge(self, rows: int, last: dt.datetime | None) -> SessionMark:
        latest = (
            self.last if last is None or (self.last is not None and self.last >= last) else last
        )
        return SessionMark(self.rows + rows, latest)


@dataclass(frozen=True)
class DeletionCheck:
    """Sessions found terminal (and old enough, for retention), each with what its files
    held when it was found so: :func:`delete_sessions` deletes nothing of a session whose
    files hold more rows or a later time by the time it rewrites them (activity after the
    check: the session may no longer be terminal)."""

    marks: dict[str, SessionMark] = field(default_factory=dict)

    @property
    def sessions(self) -> list[str]:
        return sorted(self.marks)


class SessionChanged(BadInputError):
    """Sessions whose files changed between the terminal check and the deletion."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(f"{why}; nothing deleted" for why in reasons.values()))


@dataclass
class _Rewrite:
    part: Path
    old: Path
    kept: pa.Table | None  # None: every row of the file goes
    removed: int
    record_id: str | None
    new_name: str | None = None


@dataclass
class _Plan:
    rewrites: list[_Rewrite]
    listed: set[Path]  # every span file the plan saw: any other one landed after it


def deletable_sessions(
    data_dir: Path, *, session_id: str | None = None, before: dt.datetime | None = None
) -> list[str]:
    """Terminal sessions (completed, failed, canceled, abandoned), optionally one id or
    those idle since before ``before``."""
    from tooltrail import analytics

    frame = analytics.terminal_sessions(data_dir, before=before, session_id=session_id)
    return [str(s) for s in frame["session_id"].to_list()]


def _not_deletable(data_dir: Path, session_id: str) -> str:
    """Why ``session_id`` cannot be deleted: unknown here, or its status is not terminal."""
    from tooltrail import analytics

    header = analytics.session(data_dir, session_id)
    if header is None:
        return f"there is no session {session_id!r} in {data_dir}"
    status = header["status"][0] if "status" in header.columns else "not terminal"
    return (
        f"session {session_id!r} in {data_dir} is {status}: only completed, failed, canceled"
        " or abandoned sessions can be deleted"
    )


def check_deletable(
    data_dir: Path,
    session_ids: Sequence[str] | None = None,
    *,
    before: dt.datetime | None = None,
) -> DeletionCheck:
    """The terminal check, with what each session's files held at it: ``session_ids``
    (BadInputError for one that is not terminal), or with None every terminal session idle
    since before ``before`` (retention).

    The files are read before the views decide: a row landing after the read is seen by
    the deletion (which then refuses that session), one landing before it by the views.

    Example:

        check = check_deletable(Path("tooltrail-data"), ["s-123"])
        delete_sessions(Path("tooltrail-data"), ["s-123"], by="alice", checked=check)
    """
    wanted = (
        sorted(set(session_ids))
        if session_ids is not None
        else deletable_sessions(data_dir, before=before)
    )
    if not wanted:
        return DeletionCheck()
    marks = _scan(data_dir, set(wanted))
    terminal = set(deletable_sessions(data_dir, before=before))
    if session_ids is not None:
        for sid in wanted:
            if sid not in terminal:
                raise BadInputError(_not_deletable(data_dir, sid))
    return DeletionCheck({sid: marks.get(sid, SessionMark()) for sid in wanted if sid in terminal})


def delete_sessions(
    data_dir: Path,
    session_ids: Sequence[str],
    *,
    by: str,
    reason: str | None = None,
    checked: DeletionCheck | None = None,
) -> DeleteReport:
    """Delete every landed row of ``session_ids`` (terminal sessions only) and leave a
    signed tombstone in the chain. ``checked``: the :func:`check_deletable` these ids
    passed (made here when None). A session that changed since that check fails the
    whole deletion (:class:`SessionChanged`, nothing deleted).

    Example:

        delete_sessions(Path("tooltrail-data"), ["s-123"], by="alice", reason="GDPR")
    """
    wanted = sorted(set(session_ids))
    if not wanted:
        return DeleteReport()
    check = checked if checked is not None else check_deletable(data_dir, wanted)
    unchecked = [sid for sid in wanted if sid not in check.marks]
    if unchecked:
        raise BadInputError(
            f"session(s) {', '.join(unchecked)} were not found terminal by the check given"
        )
    marks = {sid: check.marks[sid] for sid in wanted}
    return _delete(data_dir, marks, by=by, reason=reason, skip_changed=False)


def _delete(
    data_dir: Path,
    marks: dict[str, SessionMark],
    *,
    by: str,
    reason: str | None,
    skip_changed: bool,
) -> DeleteReport:
    """Delete the sessions of ``marks``. A session that changed since its mark fails the
    deletion, or with ``skip_changed`` is left out (retention: the next pass decides)."""
    report = DeleteReport()
    root = data_dir / SPANS_DIR
    targets = dict(marks)
    plan = _Plan([], set())
    while targets:
        try:
            with _single_compactor(root):
                plan = _plan(data_dir, targets)
                _swap_all(root, plan, set(targets))
            break
        except SessionChanged as e:
            if not skip_changed:
                raise
            # Each retry drops at least one session: at most one retry per session.
            for sid, why in e.reasons.items():
                report.skipped[sid] = why
                targets.pop(sid, None)
    report.sessions = sorted(targets)
    if report.sessions:
        _record(data_dir, report, plan.rewrites, by, reason)
    return report


def _read(path: Path, rel: str, columns: list[str] | None = None) -> pa.Table:
    """A span file's rows, or StoreError naming the file (planted, truncated, not one)."""
    try:
        table = pq.read_table(path, columns=columns, partitioning=None)
    except (pa.ArrowException, OSError) as e:
        raise StoreError(f"{rel}: unreadable, or not a span file: {e}; nothing deleted") from e
    if "session_id" not in table.column_names:
        raise StoreError(
            f"{rel}: unreadable, or not a span file: it has no session_id column; nothing deleted"
        )
    return table


_Candidate = tuple[Path, str, tuple[str, dict[str, Any]] | None]
# The columns a mark is made of.
_MARK_COLUMNS = ["session_id", "start_time", "end_time"]


def _candidates(data_dir: Path, targets: set[str]) -> tuple[list[_Candidate], set[Path]]:
    """The span files that may hold rows of ``targets`` (every file no record covers, and
    the recorded ones whose record names one of them), and every span file listed."""
    live = (
        chain.live_records(chain.read_ledger(data_dir))
        if chain.ledger_path(data_dir).exists()
        else {}
    )
    out: list[_Candidate] = []
    listed = set(iter_span_files(data_dir))
    for path in sorted(listed):
        rel = chain.relative(path, data_dir)
        found = live.get(rel)
        if found is not None and not {e[0] for e in found[1].get("sessions", [])} & targets:
            continue
        out.append((path, rel, found))
    return out, listed


def _marks_of(table: pa.Table, hit: pa.ChunkedArray) -> dict[str, tuple[int, dt.datetime | None]]:
    """Per target session in ``table`` (``hit``: its rows): rows and latest end/start."""
    rows = table.filter(pc.fill_null(hit, False))
    at = (
        pc.coalesce(rows["end_time"], rows["start_time"])
        if "end_time" in rows.column_names and "start_time" in rows.column_names
        else pa.nulls(rows.num_rows, pa.timestamp("us", "UTC"))
    )
    grouped = (
        pa.table({"s": rows["session_id"], "t": at})
        .group_by("s")
        .aggregate([("s", "count"), ("t", "max")])
    )
    return {
        str(s): (int(n), t)
        for s, n, t in zip(
            grouped["s"].to_pylist(),
            grouped["s_count"].to_pylist(),
            grouped["t_max"].to_pylist(),
            strict=True,
        )
    }


def _scan(data_dir: Path, targets: set[str]) -> dict[str, SessionMark]:
    wanted = pa.array(sorted(targets), pa.string())
    marks: dict[str, SessionMark] = {}
    for path, rel, _found in _candidates(data_dir, targets)[0]:
        table = _read(path, rel, _MARK_COLUMNS)
        hit = pc.is_in(table["session_id"], value_set=wanted)
        for sid, (n, last) in _marks_of(table, hit).items():
            marks[sid] = marks.get(sid, SessionMark()).merge(n, last)
    return marks


def _changes(checked: dict[str, SessionMark], now: dict[str, SessionMark]) -> dict[str, str]:
    """The sessions whose files hold more rows, or a later time, than at their check."""
    out: dict[str, str] = {}
    for sid, mark in checked.items():
        seen = now.get(sid, SessionMark())
        later = seen.last is not None and (mark.last is None or seen.last > mark.last)
        if seen.rows > mark.rows or later:
            when = "" if seen.last is None else f" (latest activity {seen.last.isoformat()})"
            out[sid] = (
                f"session {sid!r} changed since it was checked:"
                f" {max(seen.rows - mark.rows, 0)} new rows{when}"
            )
    return out


def _plan(data_dir: Path, targets: dict[str, SessionMark]) -> _Plan:
    ledger = chain.ledger_path(data_dir).exists()
    wanted = pa.array(sorted(targets), pa.string())
    out: list[_Rewrite] = []
    marks: dict[str, SessionMark] = {}
    candidates, listed = _candidates(data_dir, set(targets))
    for path, rel, found in candidates:
        if found is not None and chain.file_sha256(path) != found[1].get("sha256"):
            raise StoreError(
                f"{rel} does not match its record in the chain (run tooltrail verify);"
                " nothing deleted"
            )
        table = _read(path, rel)
        hit = pc.is_in(table["session_id"], value_set=wanted)
        removed = int(pc.sum(hit).as_py() or 0)
        if not removed:
            continue
        if found is None and ledger:
            # Rewriting it would sign whatever it holds (a forged row planted beside one
            # of an old session) in a retain record: refuse, as compaction does.
            raise StoreError(
                f"{rel}: unrecorded: no chain record covers this file, which holds rows of"
                " a session to delete: run tooltrail verify; nothing deleted"
            )
        for sid, (n, last) in _marks_of(table, hit).items():
            marks[sid] = marks.get(sid, SessionMark()).merge(n, last)
        kept = table.filter(pc.invert(pc.fill_null(hit, False)))
        out.append(
            _Rewrite(
                path.parent,
                path,
                kept if kept.num_rows else None,
                removed,
                None if found is None else found[0],
            )
        )
    changed = _changes(targets, marks)
    if changed:
        raise SessionChanged(changed)
    return _Plan(out, listed)


def _landed_since(data_dir: Path, plan: _Plan, targets: set[str]) -> None:
    """Under the exclusive spans lock (no writer lands meanwhile): SessionChanged if a
    file landed since the plan holds rows of ``targets`` (the rewrite would leave them,
    and the session may be active again)."""
    wanted = pa.array(sorted(targets), pa.string())
    marks: dict[str, SessionMark] = {}
    for path in iter_span_files(data_dir):
        if path in plan.listed:
            continue
        table = _read(path, chain.relative(path, data_dir), _MARK_COLUMNS)
        hit = pc.is_in(table["session_id"], value_set=wanted)
        for sid, (n, last) in _marks_of(table, hit).items():
            marks[sid] = marks.get(sid, SessionMark()).merge(n, last)
    if marks:
        raise SessionChanged(_changes(dict.fromkeys(marks, SessionMark()), marks))


def _swap_all(root: Path, plan: _Plan, targets: set[str]) -> None:
    """Stage every affected partition, then under one exclusive spans lock check what
    landed since the plan and swap them all: writers wait only for the links and swaps."""
    by_part: dict[Path, list[_Rewrite]] = {}
    for rw in plan.rewrites:
        by_part.setdefault(rw.part, []).append(rw)
    staged: list[tuple[Path, Path, set[str]]] = []
    try:
        for part, items in sorted(by_part.items()):
            staged.append((part, _stage(part, items), {rw.old.name for rw in items}))
        with spans_lock(root, exclusive=True):
            _landed_since(root.parent, plan, targets)
            for part, staging, gone in staged:
                for f in part.glob("*.parquet"):
                    if f.name not in gone:
                        os.link(f, staging / f.name)
                _exchange(part, staging)
    finally:
        for _part, staging, _gone in staged:
            shutil.rmtree(staging, ignore_errors=True)


def _stage(part: Path, items: list[_Rewrite]) -> Path:
    staging = _staging_root(part) / f"{part.name}.retain-{os.urandom(4).hex()}"
    staging.mkdir(parents=True)
    try:
        writer_id = new_writer_id()
        for i, rw in enumerate(items):
            if rw.kept is not None:
                rw.new_name = f"retained-{writer_id}-{i:04d}.parquet"
                # The kept rows in their landed order: every other session's ordered
                # digest stays the same (verify checks it).
                write_table_atomic(rw.kept, staging / rw.new_name, record=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _record(
    data_dir: Path, report: DeleteReport, rewrites: list[_Rewrite], by: str, reason: str | None
) -> None:
    report.rows = sum(rw.removed for rw in rewrites)
    report.files_rewritten = sum(1 for rw in rewrites if rw.kept is not None)
    report.files_removed = sum(1 for rw in rewrites if rw.kept is None)
    tomb = chain.append(
        data_dir,
        {
            "kind": "tombstone",
            "by": by,
            "reason": reason,
            "sessions": report.sessions,
            "rows": report.rows,
            "replaces": [rw.record_id for rw in rewrites if rw.record_id is not None],
            "files": [chain.relative(rw.old, data_dir) for rw in rewrites],
        },
    )
    report.tombstone = str(tomb["id"])
    for rw in rewrites:
        if rw.kept is None or rw.new_name is None:
            continue
        path = rw.part / rw.new_name
        body = chain.manifest(rw.kept, path, data_dir)
        body.update(
            kind="retain",
            replaces=[] if rw.record_id is None else [rw.record_id],
            tombstone=report.tombstone,
        )
        chain.append(data_dir, body)


def retention_seconds(older_than: str | None, *, option: str = "--older-than") -> float:
    """How old (seconds) ``older_than`` (or $TOOLTRAIL_RETENTION) says a session must be:
    ``90d``, ``12w``... BadInputError naming ``option`` for anything else."""
    from tooltrail.policy.durations import parse_since_seconds

    text = older_than or os.environ.get(ENV_RETENTION)
    if not text:
        raise BadInputError(
            f"{option} is required (or set {ENV_RETENTION}, e.g. 90d): how old a"
            " session must be to be deleted"
        )
    seconds = parse_since_seconds(text, option=option, accepts_all=False)
    if seconds is None:
        raise BadInputError(f"{option} all would delete every session: give an age (90d)")
    return seconds


def retention_cutoff(
    older_than: str | None, *, now: dt.datetime | None = None, option: str = "--older-than"
) -> dt.datetime:
    """The instant ``--older-than`` (or $TOOLTRAIL_RETENTION) means: ``90d``, ``12w``..."""
    seconds = retention_seconds(older_than, option=option)
    return (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=seconds)


def apply_retention(
    data_dir: Path,
    older_than: str | None,
    *,
    by: str,
    reason: str | None = None,
    checked: DeletionCheck | None = None,
) -> DeleteReport:
    """Delete every terminal session idle for longer than ``older_than``. A session that
    changed since the check (``checked``, made here when None) is left for the next pass
    and named in ``report.skipped``; the others are deleted.

    Example:

        apply_retention(Path("tooltrail-data"), "90d", by="alice")
    """
    cutoff = retention_cutoff(older_than)
    check = checked if checked is not None else check_deletable(data_dir, before=cutoff)
    return _delete(
        data_dir,
        check.marks,
        by=by,
        reason=reason or f"retention: idle before {cutoff:%Y-%m-%d}",
        skip_changed=True,
    )


def refresh_views(data_dir: Path) -> None:
    """Rebuild the session index and ``tooltrail.duckdb`` after a deletion, so that the
    session lists stop showing what was deleted without aggregating every span again
    (a stale index is ignored, never wrong: this is speed, not correctness).

    Example:

        refresh_views(Path("tooltrail-data"))
    """
    from tooltrail import analytics

    analytics.build_session_index(data_dir)
    analytics.build_duckdb_file(data_dir)


class RetentionLoop:
    """``tooltrail collect --retention AGE``: apply retention on start and then every
    ``every_s`` seconds, in a thread of its own (the landing thread never waits on it:
    a deletion takes the spans lock exclusively only for its swaps, as compaction
    does). A failed pass (another compaction running, a file that does not match its chain
    record or that no record covers) is logged and counted, and the next pass tries again;
    it never stops the collector. A session that changed since the check is left for the
    next pass (logged), the others deleted.

    ``count(name, value)`` receives ``sessions``, ``rows``, ``runs`` and ``failures``.

    Example:

        loop = RetentionLoop(Path("tooltrail-data"), "90d", 3600.0, count=print)
        loop.start(); ...; loop.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        older_than: str,
        every_s: float,
        count: Callable[[str, float], None],
    ) -> None:
        retention_seconds(older_than, option="--retention")  # bad input before starting
        if not every_s > 0:
            raise BadInputError("--retention-every must be a positive duration")
        self.data_dir = data_dir
        self.older_than = older_than
        self.every_s = every_s
        self._count = count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tooltrail-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the pass under way (a deletion is never cut between its swap and
        its chain records, which would read as tampering)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.every_s)

    def run_once(self) -> DeleteReport | None:
        """One pass; None when it failed (logged and counted)."""
        cutoff = retention_cutoff(self.older_than, option="--retention")
        try:
            report = _delete(
                self.data_dir,
                check_deletable(self.data_dir, before=cutoff).marks,
                by=COLLECTOR_IDENTITY,
                reason=f"retention: older than {self.older_than} (idle before"
                f" {cutoff:%Y-%m-%dT%H:%M:%SZ})",
                skip_changed=True,
            )
            if report.sessions:
                refresh_views(self.data_dir)
        except Exception as e:  # a failed pass must never stop the collector
            self._count("failures", 1)
            _log.warning("tooltrail collect: retention pass failed (retried later): %s", e)
            return None
        self._count("runs", 1)
        for why in report.skipped.values():
            _log.info("tooltrail collect: retention left for the next pass: %s", why)
        if report.sessions:
            self._count("sessions", len(report.sessions))
            self._count("rows", report.rows)
            _log.info(
                "tooltrail collect: retention deleted %d session(s), %d rows (tombstone %s)",
                len(report.sessions),
                report.rows,
                report.tombstone,
            )
        return report


__all__ = [
    "COLLECTOR_IDENTITY",
    "DeleteReport",
    "DeletionCheck",
    "RetentionLoop",
    "SessionChanged",
    "SessionMark",
    "apply_retention",
    "check_deletable",
    "deletable_sessions",
    "delete_sessions",
    "refresh_views",
    "retention_cutoff",
    "retention_seconds",
]
