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

    def to_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "rows": self.rows,
            "files_rewritten": self.files_rewritten,
            "files_removed": self.files_removed,
            "tombstone": self.tombstone,
        }


@dataclass
class _Rewrite:
    part: Path
    old: Path
    kept: pa.Table | None  # None: every row of the file goes
    removed: int
    record_id: str | None
    new_name: str | None = None


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


def delete_sessions(
    data_dir: Path, session_ids: Sequence[str], *, by: str, reason: str | None = None
) -> DeleteReport:
    """Delete every landed row of ``session_ids`` (terminal sessions only) and leave a
    signed tombstone in the chain.

    Example:

        delete_sessions(Path("tooltrail-data"), ["s-123"], by="alice", reason="GDPR")
    """
    report = DeleteReport(sessions=sorted(set(session_ids)))
    if not report.sessions:
        return report
    terminal = set(deletable_sessions(data_dir))
    for sid in report.sessions:
        if sid not in terminal:
            raise BadInputError(_not_deletable(data_dir, sid))
    root = data_dir / SPANS_DIR
    with _single_compactor(root):
        rewrites = _plan(data_dir, set(report.sessions))
        by_part: dict[Path, list[_Rewrite]] = {}
        for rw in rewrites:
            by_part.setdefault(rw.part, []).append(rw)
        for part, items in sorted(by_part.items()):
            _swap_partition(part, items)
    _record(data_dir, report, rewrites, by, reason)
    return report


def _plan(data_dir: Path, targets: set[str]) -> list[_Rewrite]:
    live = (
        chain.live_records(chain.read_ledger(data_dir))
        if chain.ledger_path(data_dir).exists()
        else {}
    )
    wanted = pa.array(sorted(targets), pa.string())
    out: list[_Rewrite] = []
    for path in iter_span_files(data_dir):
        rel = chain.relative(path, data_dir)
        found = live.get(rel)
        if found is not None:
            named = {e[0] for e in found[1].get("sessions", [])}
            if not named & targets:
                continue
            if chain.file_sha256(path) != found[1].get("sha256"):
                raise StoreError(
                    f"{rel} does not match its record in the chain (run tooltrail verify);"
                    " nothing deleted"
                )
        table = pq.read_table(path, partitioning=None)
        hit = pc.is_in(table["session_id"], value_set=wanted)
        removed = int(pc.sum(hit).as_py() or 0)
        if not removed:
            continue
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
    return out


def _swap_partition(part: Path, items: list[_Rewrite]) -> None:
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
        gone = {rw.old.name for rw in items}
        with spans_lock(part.parent, exclusive=True):
            for f in part.glob("*.parquet"):
                if f.name not in gone:
                    os.link(f, staging / f.name)
            _exchange(part, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    seconds = parse_since_seconds(text, option=option)
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
    data_dir: Path, older_than: str | None, *, by: str, reason: str | None = None
) -> DeleteReport:
    """Delete every terminal session idle for longer than ``older_than``.

    Example:

        apply_retention(Path("tooltrail-data"), "90d", by="alice")
    """
    cutoff = retention_cutoff(older_than)
    sessions = deletable_sessions(data_dir, before=cutoff)
    return delete_sessions(
        data_dir, sessions, by=by, reason=reason or f"retention: idle before {cutoff:%Y-%m-%d}"
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
    a deletion takes the spans lock exclusively only for each partition's swap, as
    compaction does). A failed pass (another compaction running, a file that does not
    match its chain record) is logged and counted, and the next pass tries again; it
    never stops the collector.

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
            sessions = deletable_sessions(self.data_dir, before=cutoff)
            report = delete_sessions(
                self.data_dir,
                sessions,
                by=COLLECTOR_IDENTITY,
                reason=f"retention: older than {self.older_than} (idle before"
                f" {cutoff:%Y-%m-%dT%H:%M:%SZ})",
            )
            if report.sessions:
                refresh_views(self.data_dir)
        except Exception as e:  # a failed pass must never stop the collector
            self._count("failures", 1)
            _log.warning("tooltrail collect: retention pass failed (retried later): %s", e)
            return None
        self._count("runs", 1)
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
    "RetentionLoop",
    "apply_retention",
    "deletable_sessions",
    "delete_sessions",
    "refresh_views",
    "retention_cutoff",
    "retention_seconds",
]
