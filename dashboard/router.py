"""The app's router: page setup, the sidebar every page shares, deep links, auto-refresh.

``main()`` is what ``app.py`` (``streamlit run app.py``) and the packaged entry script
(``tooltrail dashboard``) run. With access control on, nothing but the sign-in page is
shown until someone signs in (``auth``). The sidebar carries the pending-approvals
badge, who is signed in and Sign out (in single-user mode: the typed name every decision
records, and a note that it is not checked), the auto-refresh toggle and where the data
comes from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final, Literal

import streamlit as st

from tooltrail.dashboard import auth, nav, signin, ui
from tooltrail.dashboard.data import Data, app_config
from tooltrail.errors import TooltrailError

REFRESH_CHOICES: Final = (5, 10, 30, 60)
LOGO: Final = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="150" height="32" viewBox="0 0 150 32">'
    '<rect x="0" y="2" width="28" height="28" rx="7" fill="#1c7ed6"/>'
    '<path d="M7 22 L12 14 L17 18 L22 9" stroke="#fff" stroke-width="2.6" fill="none" '
    'stroke-linecap="round" stroke-linejoin="round"/>'
    '<circle cx="22" cy="9" r="2.6" fill="#fff"/>'
    '<text x="36" y="23" font-family="Helvetica, Arial, sans-serif" font-size="20" '
    'font-weight="700" fill="#1f2933">tooltrail</text></svg>'
)
_LAST_FULL_RUN: Final = "_last_full_run"


def main() -> None:
    st.set_page_config(
        page_title="tooltrail",
        page_icon=":material/policy:",
        layout="wide",
        initial_sidebar_state="expanded",
    )
    st.logo(LOGO, size="large")
    who = _signed_in(app_config().data_dir)
    if who is False:
        return
    ctx = nav.context()
    pending = _pending_count(ctx.data)
    approvals_title = f"Approvals · {pending}" if pending else "Approvals"
    pages = {
        section: [nav.page(n, approvals_title if n == "approvals" else None) for n in names]
        for section, names in nav.SECTIONS.items()
    }
    current = st.navigation(pages, position="sidebar", expanded=True)
    _deep_link(current)
    _sidebar(ctx, pending, who)
    ui.show_flash()
    current.run()


def _signed_in(root: Path) -> auth.Identity | Literal[False] | None:
    """Who is signed in (None in single-user mode until a name is typed); False when
    access control is on and nobody is: then only the sign-in page was drawn (fails
    closed: an unreadable access store shows nothing else either)."""
    try:
        required = auth.required(root)
        who = auth.current(root)
    except TooltrailError as e:
        st.error(f"Cannot read who may use {root}: {e}")
        return False
    if who is not None or not required:
        return who
    signin.page(root)
    return False


def _pending_count(data: Data) -> int:
    try:
        return data.pending().height
    except TooltrailError as e:
        st.error(f"Cannot read {data.root}: {e}")
        return 0


def _deep_link(current: st.Page) -> None:
    """``/?session=<id>`` (or any page with that parameter) opens the session."""
    session_id = st.query_params.get(nav.SESSION_PARAM)
    if session_id and current.url_path != nav.PAGES["session"].url_path:
        nav.open_session(session_id)


def _sidebar(ctx: nav.Context, pending: int, who: auth.Identity | None) -> None:
    with st.sidebar:
        if pending:
            st.badge(
                f"{pending} pending approval{'s' if pending != 1 else ''}",
                icon=":material/pending_actions:",
                color="violet",
            )
        else:
            st.badge("No pending approvals", icon=":material/check:", color="green")
        if who is not None and who.via != "single-user":
            signin.signed_in_box(who, ctx.root)
        else:
            st.text_input(
                "Your name",
                key=ui.OPERATOR_KEY,
                placeholder="e.g. alice",
                help="Recorded with every approval, denial, pause, resume and cancel. "
                "Required before deciding. Single-user mode: not checked.",
            )
        if st.toggle("Auto-refresh", key="auto_refresh", help="Re-read live sessions."):
            every = st.selectbox(
                "Every",
                REFRESH_CHOICES,
                index=1,
                format_func=lambda s: f"{s} seconds",
                key="refresh_every",
            )
            _ticker(float(every or REFRESH_CHOICES[1]))
        st.caption(f"Data: {ui.code(ctx.root.name)}", help=f"Data directory: {ctx.root}")
        if ctx.config.policy_path is not None:
            policy = ctx.config.policy_path
            st.caption(f"Policy: {ui.code(policy.name)}", help=f"Active policy: {policy}")


def _ticker(every: float) -> None:
    """Rerun the whole app every ``every`` seconds. Results are cached against the data
    directory's fingerprint, so a rerun with nothing new scans nothing."""
    st.session_state[_LAST_FULL_RUN] = time.monotonic()

    def tick() -> None:
        if time.monotonic() - st.session_state.get(_LAST_FULL_RUN, 0.0) >= every * 0.9:
            st.rerun(scope="app")

    st.fragment(tick, run_every=every)()


__all__ = ["main"]
