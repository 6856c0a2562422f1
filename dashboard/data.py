"""Data access for the dashboard: where the data is, cached reads, and the only writes.

Reads go through ``tooltrail.analytics`` on one connection per data directory, shared by
every browser session (``st.cache_resource``). A DuckDB connection must not run two
statements at once, so a lock serialises them; the results are cached per
(data directory, fingerprint, arguments) with ``st.cache_data`` and a short TTL.

The fingerprint is a few ``stat`` calls: the span partition directories (a landed or
compacted file changes its directory), the session index and the control store files.
While nothing changed, a rerun (a click, the auto-refresh timer) is served from the cache
and scans nothing. Times that move by themselves (a session turning from active to
completed, "since 24h") are bounded by the TTL.

Writes go only through :class:`tooltrail.control.ControlStore` (approve / deny,
pause / resume / cancel), as the signed-in identity (``auth.Identity``: with access
control on, its role is checked here and by the store), and, for an admin deleting a
terminal session, through the library call ``tooltrail delete`` makes
(:func:`tooltrail.collector.retention.delete_sessions`); each one clears the result cache
so the next run shows it.
The store is also read for the two things the views do not carry: who may decide a
request (its approvers) and a session's control history. It is not created just by
looking: without ``control.sqlite`` those reads are empty.

Just past 600 lines, kept whole on purpose: it is the one place the pages read and write
through (the shared connection, its lock and the cache every write clears).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import duckdb
import polars as pl
import streamlit as st

from tooltrail import analytics, config
from tooltrail.access import Action
from tooltrail.analytics import SESSION_INDEX_FILE
from tooltrail.analytics.engine import SPANS_GLOB
from tooltrail.control import ApprovalRecord, ControlEvent, ControlStore, SessionControl
from tooltrail.dashboard import queries
from tooltrail.dashboard.auth import Identity
from tooltrail.errors import TooltrailError
from tooltrail.policy import Policy, load_policy, loads_policy

if TYPE_CHECKING:
    from tooltrail.collector.retention import DeleteReport

T = TypeVar("T")

CACHE_TTL_S: Final = 15.0
"""How long a cached result may be served while the data directory looks unchanged."""

SESSION_FILTERS: Final = (
    "agent",
    "status",
    "since",
    "search",
    "repo",
    "decision",
    "blast_radius",
    "governed_by",
    "tags",
)

Outcome = Literal["approved", "denied"]
SessionAction = Literal["pause", "resume", "cancel"]


# --- where the data is -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppConfig:
    """The data directory and the active policy file (if any) the app runs over."""

    data_dir: Path
    policy_path: Path | None


def app_config(argv: Sequence[str] | None = None) -> AppConfig:
    """From the script arguments (``streamlit run app.py -- --data DIR --policy FILE``),
    else ``$TOOLTRAIL_DATA`` / ``$TOOLTRAIL_POLICY``, else ./tooltrail-data and no policy.

    Unknown arguments are ignored: under ``AppTest`` ``sys.argv`` is pytest's.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--data")
    parser.add_argument("--policy")
    ns, _ = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    data = config.data_dir(ns.data).expanduser().resolve()
    policy = ns.policy or os.environ.get(config.ENV_POLICY) or None
    return AppConfig(data, Path(policy).expanduser() if policy else None)


def fingerprint(root: Path) -> str:
    """Changes whenever files are landed or compacted, the session index is rebuilt or
    the control store is written (up to the file system's timestamp granularity)."""
    parts: list[str] = []
    spans = root / config.SPANS_DIR
    for path in (spans, root / SESSION_INDEX_FILE, *_control_files(root)):
        parts.append(_stat(path))
    try:
        with os.scandir(spans) as entries:
            parts.extend(f"{e.name}:{_stat(Path(e.path))}" for e in entries if e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        pass
    return hashlib.blake2b("|".join(sorted(parts)).encode(), digest_size=12).hexdigest()


def _control_files(root: Path) -> tuple[Path, Path]:
    store = root / config.CONTROL_FILE
    return store, store.with_name(store.name + "-wal")


def _stat(path: Path) -> str:
    try:
        st_ = path.stat()
    except OSError:
        return f"{path.name}:-"
    return f"{path.name}:{st_.st_ino}:{st_.st_mtime_ns}:{st_.st_size}"


# --- the shared connection ---------------------------------------------------------------


class Reader:
    """One analytics connection for a data directory, opened on first use; calls are
    serialised because a DuckDB connection runs one statement at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None

    def __call__(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        with self._lock:
            if self._con is None:
                self._con = analytics.connect(self.root)
            return fn(self._con)


@st.cache_resource(show_spinner=False)
def reader(root: str) -> Reader:
    return Reader(Path(root))


# --- cached reads ------------------------------------------------------------------------

_cache = st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=128)


def _since(label: str | None) -> dt.datetime | None:
    return analytics.parse_since(label) if label else None


@_cache
def _kpis(root: str, stamp: str, since: str | None) -> dict[str, int]:
    return reader(root)(lambda con: queries.kpis(con, _since(since)))


@_cache
def _active_sessions(root: str, stamp: str) -> int:
    return reader(root)(lambda con: analytics.count_sessions(con, status="active"))


@_cache
def _decisions_over_time(
    root: str, stamp: str, since: str | None, bucket: dt.timedelta
) -> pl.DataFrame:
    return reader(root)(lambda con: queries.decisions_over_time(con, _since(since), bucket))


@_cache
def _blast_stats(root: str, stamp: str, by: str, since: str | None) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.blast_radius_stats(con, by, since=_since(since)))


@_cache
def _critical(root: str, stamp: str, since: str | None, limit: int) -> pl.DataFrame:
    return reader(root)(lambda con: queries.critical_actions(con, _since(since), limit))


@_cache
def _sessions(
    root: str, stamp: str, filters: tuple[tuple[str, Any], ...], limit: int, offset: int
) -> pl.DataFrame:
    kwargs = dict(filters)
    return reader(root)(lambda con: analytics.sessions(con, limit=limit, offset=offset, **kwargs))


@_cache
def _count_sessions(root: str, stamp: str, filters: tuple[tuple[str, Any], ...]) -> int:
    kwargs = dict(filters)
    return reader(root)(lambda con: analytics.count_sessions(con, **kwargs))


@_cache
def _tool_changes(root: str, stamp: str, since: str | None) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.tool_changes(con, since=_since(since)))


@_cache
def _filter_options(root: str, stamp: str) -> tuple[list[str], list[str]]:
    return reader(root)(queries.filter_options)


@_cache
def _session(root: str, stamp: str, session_id: str) -> dict[str, Any] | None:
    frame = reader(root)(lambda con: analytics.session(con, session_id))
    return None if frame is None else frame.row(0, named=True)


@_cache
def _session_actions(root: str, stamp: str, session_id: str) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.session_actions(con, session_id))


@_cache
def _session_trace(root: str, stamp: str, session_id: str, only: str) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.session_trace(con, session_id, only=only))


@_cache
def _tag_options(root: str, stamp: str) -> list[str]:
    return reader(root)(queries.tag_options)


@_cache
def _llm_usage(root: str, stamp: str, session_id: str) -> pl.DataFrame:
    return reader(root)(lambda con: queries.session_llm_usage(con, session_id))


@_cache
def _session_links(root: str, stamp: str) -> pl.DataFrame:
    return reader(root)(queries.session_links)


@_cache
def _approvals(
    root: str,
    stamp: str,
    status: str,
    since: str | None,
    session_id: str | None,
    limit: int | None,
) -> pl.DataFrame:
    return reader(root)(
        lambda con: analytics.approval_history(
            con, status, since=_since(since), session_id=session_id, limit=limit
        )
    )


@_cache
def _approval_stats(root: str, stamp: str, by: str, since: str | None) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.approval_stats(con, by, since=_since(since)))


@_cache
def _approvers(root: str, stamp: str) -> dict[str, list[str]]:
    if not (Path(root) / config.CONTROL_FILE).exists():
        return {}
    with ControlStore(root) as store:
        return {r.approval_id: list(r.approvers) for r in store.list_approvals("pending")}


@_cache
def _control_history(root: str, stamp: str, session_id: str) -> list[ControlEvent]:
    if not (Path(root) / config.CONTROL_FILE).exists():
        return []
    with ControlStore(root) as store:
        return store.control_history(session_id)


@_cache
def _rule_hits(root: str, stamp: str, version: str | None) -> pl.DataFrame:
    return reader(root)(lambda con: queries.rule_hits(con, version))


@_cache
def _policy_versions(root: str, stamp: str) -> pl.DataFrame:
    return reader(root)(queries.policy_versions)


@_cache
def _view_columns(root: str, stamp: str) -> pl.DataFrame:
    return reader(root)(queries.view_columns)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=16)
def _run_query(root: str, stamp: str, sql: str, limit: int) -> pl.DataFrame:
    return reader(root)(lambda con: analytics.run_query(con, sql, limit=limit))


@dataclass(frozen=True, slots=True)
class Data:
    """The data directory as of this script run: every read goes through here."""

    root: Path
    stamp: str

    @classmethod
    def current(cls, root: Path) -> Data:
        settle_approvals(root)
        return cls(root, fingerprint(root))

    @property
    def _key(self) -> tuple[str, str]:
        return str(self.root), self.stamp

    def has_spans(self) -> bool:
        spans = self.root / config.SPANS_DIR
        return spans.is_dir() and next(spans.glob(SPANS_GLOB), None) is not None

    def kpis(self, since: str | None) -> dict[str, int]:
        return _kpis(*self._key, since)

    def active_sessions(self) -> int:
        return _active_sessions(*self._key)

    def decisions_over_time(self, since: str | None, bucket: dt.timedelta) -> pl.DataFrame:
        return _decisions_over_time(*self._key, since, bucket)

    def blast_stats(self, by: str, since: str | None) -> pl.DataFrame:
        return _blast_stats(*self._key, by, since)

    def critical_actions(self, since: str | None, limit: int = 200) -> pl.DataFrame:
        return _critical(*self._key, since, limit)

    def sessions(self, filters: dict[str, Any], *, limit: int, offset: int) -> pl.DataFrame:
        return _sessions(*self._key, _filters(filters), limit, offset)

    def count_sessions(self, filters: dict[str, Any]) -> int:
        return _count_sessions(*self._key, _filters(filters))

    def tool_changes(self, since: str | None) -> pl.DataFrame:
        """Calls to tools whose definition changed since pinned (``analytics.tool_changes``)."""
        return _tool_changes(*self._key, since)

    def filter_options(self) -> tuple[list[str], list[str]]:
        return _filter_options(*self._key)

    def session(self, session_id: str) -> dict[str, Any] | None:
        return _session(*self._key, session_id)

    def session_actions(self, session_id: str) -> pl.DataFrame:
        return _session_actions(*self._key, session_id)

    def session_trace(self, session_id: str, only: str = "all") -> pl.DataFrame:
        """The activity trace (``analytics.session_trace``)."""
        return _session_trace(*self._key, session_id, only)

    def tag_options(self) -> list[str]:
        """Every session tag, for the tag filter."""
        return _tag_options(*self._key)

    def llm_usage(self, session_id: str) -> pl.DataFrame:
        return _llm_usage(*self._key, session_id)

    def session_links(self) -> pl.DataFrame:
        return _session_links(*self._key)

    def approvals(
        self,
        status: str = "all",
        *,
        since: str | None = None,
        session_id: str | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Approval requests, newest first (``analytics.approval_history``)."""
        return _approvals(*self._key, status, since, session_id, limit)

    def pending(self) -> pl.DataFrame:
        """Pending requests, oldest first, with ``approvers`` (who may decide; empty when
        the store does not know the request, which then cannot be decided here)."""
        frame = self.approvals("pending").reverse()
        approvers = _approvers(*self._key)
        # Only the store's own row of a request can be decided: a span citing the same id
        # for another call (in_store false) must never lend its card the request's approvers.
        rows = zip(frame["approval_id"].to_list(), frame["in_store"].to_list(), strict=True)
        return frame.with_columns(
            pl.Series(
                "approvers",
                [approvers.get(i or "", []) if known else [] for i, known in rows],
                pl.List(pl.String),
            )
        )

    def approval_stats(self, by: str, since: str | None) -> pl.DataFrame:
        return _approval_stats(*self._key, by, since)

    def control_history(self, session_id: str) -> list[ControlEvent]:
        return _control_history(*self._key, session_id)

    def rule_hits(self, version: str | None) -> pl.DataFrame:
        return _rule_hits(*self._key, version)

    def policy_versions(self) -> pl.DataFrame:
        return _policy_versions(*self._key)

    def view_columns(self) -> pl.DataFrame:
        return _view_columns(*self._key)

    def run_query(self, sql: str, limit: int) -> pl.DataFrame:
        return _run_query(*self._key, sql, limit)


def _filters(filters: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    unknown = set(filters) - set(SESSION_FILTERS)
    if unknown:
        raise ValueError(f"unknown session filters: {sorted(unknown)}")
    return tuple(sorted((k, v) for k, v in filters.items() if v not in (None, "")))


# --- the active policy --------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=8)
def _policy(path: str, stamp: str) -> Policy:
    return load_policy(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def opened_policy(text: str, name: str) -> Policy:
    """A policy file a viewer opened in the page (its text), compiled once per content.
    Raises :class:`~tooltrail.errors.PolicyError` when it is not a valid policy."""
    return loads_policy(text, name)


def active_policy(path: Path | None) -> Policy | None:
    """The policy file the app was started with, compiled once per version of the file.
    Raises :class:`~tooltrail.errors.PolicyError` when it cannot be loaded."""
    if path is None:
        return None
    return _policy(str(path), _stat(path))


# --- writes (the control store only) -----------------------------------------------------


def _acting(root: Path, who: Identity, action: Action) -> tuple[str, str | None]:
    """The name a write is recorded as and the role it is checked with. With access
    control on only a signed-in identity (a role) whose role allows ``action`` acts; a
    name typed in single-user mode acts with no role (names and ``*`` only), as the
    command line's ``--by`` does. Refusals raise AccessDeniedError and change nothing."""
    from tooltrail import access
    from tooltrail.dashboard import auth
    from tooltrail.errors import AccessDeniedError

    if access.enabled(root):
        if who.role is None:
            raise AccessDeniedError(
                "access control is on for this data directory: sign in to decide"
            )
        if not who.may(action):
            raise AccessDeniedError(f"{who.label} may not {access.ACTION_WORDS[action]}")
        if who.via == "oidc" and auth.relay_credential() is None:
            # A decision takes effect only signed, and an OpenID sign-in unlocks no key of
            # its own: only the dashboard's relay key can vouch for it (SECURITY.md §7).
            raise AccessDeniedError(auth.NO_RELAY.format(who=who.name))
        return who.name, who.role
    return who.name, None


def trust_notice(root: Path) -> str | None:
    """What every decision surface says about how decisions are verified here (None: a
    pinned trust root the agents cannot write, nothing to warn of)."""
    from tooltrail.errors import TooltrailError
    from tooltrail.signing import load_trust_root

    try:
        return load_trust_root(root).notice(root)
    except TooltrailError as e:
        return f"the trust root cannot be read ({e}): every decision is refused"


def _signer(root: Path, who: Identity) -> Any:
    """The signed-in decider's signer: their own key (local accounts), the relay's key
    vouching for them (OpenID sign-ins); None in single-user mode."""
    from tooltrail.dashboard import auth

    if who.role is None:
        return None
    return auth.relay_signer(root) if who.via == "oidc" else auth.signer(who)


def acting_label(root: Path, who: Identity) -> str:
    """Who a write is recorded as, as the pages say it: an OpenID sign-in with its role
    and the relay that vouches for it ("carol@example.com (approver, via OpenID, vouched
    by dashboard)")."""
    from tooltrail.dashboard import auth

    if who.via != "oidc":
        return who.name
    return f"{who.name} ({who.role}, via OpenID, vouched by {auth.relay_name(root)})"


def decide(
    root: Path, approval_id: str, outcome: Outcome, who: Identity, reason: str | None
) -> ApprovalRecord:
    """Approve or deny one pending request as ``who`` (refusals raise the store's errors).
    The one call into the control store's decisions."""
    name, role = _acting(root, who, "decide")
    try:
        with ControlStore(root) as store:
            return store.decide(
                approval_id, outcome, name, reason or None, role=role, signer=_signer(root, who)
            )
    finally:
        invalidate()


def control_session(
    root: Path, session_id: str, action: SessionAction, who: Identity, reason: str | None
) -> SessionControl:
    """Pause, resume or cancel a session as ``who`` (invalid transitions raise the
    store's errors)."""
    name, role = _acting(root, who, "control")
    try:
        with ControlStore(root) as store:
            return store.set_session_state(
                session_id, action, name, reason or None, signer=_signer(root, who), role=role
            )
    finally:
        invalidate()


DELETE_NEEDS_ACCESS: Final = (
    "Deleting from the dashboard needs access control on (`tooltrail users add NAME --role"
    " admin`), so that the tombstone names an admin who signed in, not a typed name; in"
    " single-user mode delete on the command line: `tooltrail delete SESSION --by NAME`"
    " (docs/SECURITY.md §8)."
)


def _deleting_as(root: Path, who: Identity) -> str:
    """The name a deletion is recorded as: only a signed-in admin's, with access control
    on (docs/SECURITY.md §8 says why single-user mode cannot delete here). The tombstone
    is signed with this process's chain key, as the CLI's is, so an admin signed in
    through OpenID may delete too (no decider's key is needed)."""
    from tooltrail import access
    from tooltrail.errors import AccessDeniedError

    if not access.enabled(root) or who.role is None:
        raise AccessDeniedError(DELETE_NEEDS_ACCESS)
    if not who.may("admin"):
        raise AccessDeniedError(f"{who.label} may not delete sessions: that needs an admin")
    return who.name


def delete_session(root: Path, session_id: str, who: Identity, reason: str | None) -> DeleteReport:
    """Delete one terminal session as ``who`` (an admin): the library call of ``tooltrail
    delete``, so it leaves the same signed tombstone naming them. Returns its
    ``DeleteReport``; a session that is not terminal raises BadInputError, nothing
    deleted."""
    from tooltrail.collector.retention import delete_sessions, refresh_views

    name = _deleting_as(root, who)
    try:
        report = delete_sessions(root, [session_id], by=name, reason=reason or None)
        refresh_views(root)
        return report
    finally:
        invalidate()


def settle_approvals(root: Path) -> None:
    """Record what became true without anyone writing it (an agent died, a deadline
    passed) before the run reads anything: a cached card must not keep offering Approve
    for a request nobody waits on. A write only when something changed, which then moves
    the fingerprint; a store that cannot be opened is left to the reads to report."""
    if not (root / config.CONTROL_FILE).exists():
        return
    with contextlib.suppress(TooltrailError), ControlStore(root, busy_timeout_s=1.0) as store:
        store.expire_due()


def invalidate() -> None:
    """Forget every cached result: called after each write so the next run shows it."""
    st.cache_data.clear()


__all__ = [
    "CACHE_TTL_S",
    "DELETE_NEEDS_ACCESS",
    "SESSION_FILTERS",
    "AppConfig",
    "Data",
    "Outcome",
    "Reader",
    "SessionAction",
    "acting_label",
    "active_policy",
    "app_config",
    "control_session",
    "decide",
    "delete_session",
    "fingerprint",
    "invalidate",
    "opened_policy",
    "reader",
]
