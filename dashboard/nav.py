"""The pages of the app and what every page needs from the current run.

Pages are files of this package run by ``st.navigation`` (AppTest can switch between
file pages, and each one is a plain script). A page is built here by name, so links
(``st.page_link``, ``st.switch_page``) and the router construct identical pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import streamlit as st

from tooltrail.dashboard.data import AppConfig, Data, app_config

HERE: Final = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class PageSpec:
    file: str
    title: str
    icon: str
    url_path: str


PAGES: Final = {
    "overview": PageSpec("page_overview.py", "Overview", ":material/space_dashboard:", "overview"),
    "sessions": PageSpec("page_sessions.py", "Sessions", ":material/list_alt:", "sessions"),
    "session": PageSpec("page_session.py", "Session detail", ":material/timeline:", "session"),
    "approvals": PageSpec(
        "page_approvals.py", "Approvals", ":material/approval_delegation:", "approvals"
    ),
    "blast_radius": PageSpec(
        "page_blast_radius.py", "Blast radius", ":material/crisis_alert:", "blast-radius"
    ),
    "policy": PageSpec("page_policy.py", "Policy", ":material/policy:", "policy"),
    "sql": PageSpec("page_sql.py", "SQL", ":material/terminal:", "sql"),
}
SECTIONS: Final = {
    "Monitor": ("overview", "sessions", "session", "approvals"),
    "Investigate": ("blast_radius", "policy", "sql"),
}
SESSION_PARAM: Final = "session"


def page(name: str, title: str | None = None) -> st.Page:
    spec = PAGES[name]
    return st.Page(
        HERE / spec.file,
        title=title or spec.title,
        icon=spec.icon,
        url_path=spec.url_path,
        default=name == "overview",
    )


@dataclass(frozen=True, slots=True)
class Context:
    """What a page reads: the configuration and the data directory as of this run."""

    config: AppConfig
    data: Data

    @property
    def root(self) -> Path:
        return self.config.data_dir


def context() -> Context:
    cfg = app_config()
    return Context(cfg, Data.current(cfg.data_dir))


def open_session(session_id: str) -> None:
    """Go to the session detail page for ``session_id`` (ends this run)."""
    st.switch_page(page("session"), query_params={SESSION_PARAM: session_id})


def session_link(session_id: str, label: str | None = None, **kwargs: object) -> None:
    st.page_link(
        page("session"),
        label=label or session_id,
        query_params={SESSION_PARAM: session_id},
        **kwargs,  # type: ignore[arg-type]
    )


__all__ = [
    "PAGES",
    "SECTIONS",
    "SESSION_PARAM",
    "Context",
    "PageSpec",
    "context",
    "open_session",
    "page",
    "session_link",
]
