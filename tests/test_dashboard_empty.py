"""Dashboard: with nothing landed (no directory, or an empty one) every page explains what
to do instead of showing empty tables, and nothing is created just by looking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dashboard_support import app_test, goto, texts

PAGES = ("overview", "sessions", "session", "approvals", "blast_radius", "policy", "sql")
HEADLINES = {
    "overview": "No agent activity yet",
    "sessions": "No sessions yet",
    "session": "No sessions yet",
    "approvals": "No approval requests yet",
    "blast_radius": "No actions yet",
    "policy": "No active policy",
    "sql": "The views are empty",
}


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_every_page_renders_a_helpful_empty_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    root = tmp_path / "data"
    if kind == "empty":
        (root / "spans").mkdir(parents=True)
    at = app_test(root, None, monkeypatch)
    for page in PAGES:
        goto(at, page)
        assert not at.exception, page
        assert not at.error, (page, texts(at.error))
        shown = texts(at.markdown)
        assert any(HEADLINES[page] in m for m in shown), (page, shown)
        if page != "policy":
            assert any("tooltrail demo" in m and str(root) in m for m in shown), page
        assert not at.dataframe, page  # no empty tables
    assert any("No pending approvals" in m for m in texts(at.sidebar.markdown))
    assert not (root / "control.sqlite").exists()
    assert kind == "empty" or not root.exists()


def test_held_calls_that_never_reached_the_store_do_not_break_the_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_row: Any
) -> None:
    """Spans of held calls without an approval id (landed by another instrumentation, or
    abandoned before filing) are listed as pending but undecidable, never crash a page."""
    import datetime as dt

    from tooltrail.collector.writer import ParquetSpanWriter

    root = tmp_path / "data"
    now = dt.datetime.now(dt.UTC)
    held = [
        make_row(
            session_id=f"held-{i}",
            decision="REQUIRE_APPROVAL",
            policy_rule="needs-a-human",
            tool_name="git_commit",
            start_time=now - dt.timedelta(minutes=i + 1),
        )
        for i in range(2)
    ]
    ParquetSpanWriter(root).write(held)
    at = app_test(root, None, monkeypatch)
    for page in ("overview", "approvals"):
        goto(at, page)
        assert not at.exception, (page, at.exception)
    cards = [m for m in texts(at.markdown) if m.startswith("**git_commit**")]
    assert len(cards) == 2  # both listed, each its own card
