"""The dashboard in a real browser: a real ``streamlit run`` server (``tooltrail.dashboard.
launch``) over seeded data, driven with Playwright through Debian's chromium.

The machine downloads no browsers: chromium comes from apt (``apt-get install -y
chromium``) and is launched by path. Without /usr/bin/chromium the test is skipped.
Screenshots go to the test's temporary folder; the Overview one is also copied to
docs/img/dashboard.png for the README.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, needs_chromium, wait_healthy
from dashboard_support import (
    BRANCH,
    CHANGED_TOOL,
    GATEWAY_CLIENT,
    GATEWAY_SESSION,
    HOTFIX,
    PENDING_ANYONE,
    RELEASE,
    TRIAGE,
    Seeded,
    free_port,
    seed,
    seed_with_foreign,
    seed_with_gateway,
    stop_server,
)

from tooltrail.control import ControlStore
from tooltrail.dashboard import launch

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "img" / "dashboard.png"
MAX_DOCS_IMAGE_BYTES = 300_000
# Rows of st.dataframe (glide data grid, a canvas): header and rows are 35 px high.
ROW_PX = 35

pytestmark = [
    # CI sets TOOLTRAIL_REQUIRE_BROWSER=1: there a missing browser fails instead of skipping.
    needs_chromium,
    pytest.mark.slow,
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


@pytest.fixture
def server(seeded: Seeded, tmp_path: Path) -> Iterator[str]:
    """The dashboard served by a real ``streamlit run`` on a free local port."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = launch(seeded.root, port, policy=seeded.policy_path, new_session=True, output=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            tab = context.new_page()
            tab.set_default_timeout(WAIT_MS)
            # `expect` keeps its own 5 s default: a first Streamlit run on a loaded CI
            # machine can take longer.
            playwright_api.expect.set_options(timeout=WAIT_MS)
            yield tab
        finally:
            browser.close()


def _shot(page: Any, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.wait_for_timeout(600)  # let charts finish their first paint
    page.screenshot(path=str(path))
    return path


def _settled(page: Any) -> None:
    """Wait until Streamlit has finished the current run."""
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=WAIT_MS)


def test_open_a_session_from_the_list_and_approve_a_request(
    server: str, page: Any, seeded: Seeded, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    shots = tmp_path / "screenshots"

    page.goto(f"{server}/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.get_by_test_id("stMetric").first).to_be_visible()
    page.wait_for_selector(
        "[data-testid=stVegaLiteChart] canvas, [data-testid=stVegaLiteChart] svg"
    )
    _settled(page)
    overview = _shot(page, shots, "overview")

    # Open a session from the list: tick its row, then "Open session".
    page.get_by_role("link", name="Sessions").click()
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    grid = page.get_by_test_id("stDataFrame").first
    expect(grid).to_be_visible()
    _settled(page)
    _shot(page, shots, "sessions")
    order = [TRIAGE, BRANCH, HOTFIX, RELEASE]  # most recent activity first
    box = grid.bounding_box()
    row = order.index(RELEASE)
    page.mouse.click(box["x"] + 15, box["y"] + ROW_PX + ROW_PX * row + ROW_PX // 2)
    expect(page.get_by_text(f"Selected: {RELEASE}")).to_be_visible()
    page.get_by_role("button", name="Open session").click()
    expect(page.get_by_role("heading", name=f"Session {RELEASE}")).to_be_visible()
    assert f"session={RELEASE}" in page.url
    expect(page.get_by_text("release-bot").first).to_be_visible()
    _settled(page)
    _shot(page, shots, "session")

    # Approve a pending request as "alice".
    name = page.get_by_role("textbox", name="Your name")
    name.fill("alice")
    name.press("Enter")
    _settled(page)
    page.get_by_role("link", name="Approvals · 2").click()
    expect(page.get_by_role("heading", name="Approvals")).to_be_visible()
    card = page.locator(f".st-key-approvals-card-{PENDING_ANYONE}")
    expect(card).to_be_visible()
    approve = card.get_by_role("button", name="Approve")
    expect(approve).to_be_enabled()
    approve.click()
    expect(page.get_by_text(f"Approved {PENDING_ANYONE} as alice").first).to_be_visible()
    expect(page.get_by_role("link", name="Approvals · 1")).to_be_visible()
    expect(page.get_by_text("1 pending approval", exact=False).first).to_be_visible()
    expect(card).to_have_count(0)
    _settled(page)
    _shot(page, shots, "approvals")

    with ControlStore(seeded.root) as store:
        record = store.get(PENDING_ANYONE)
    assert (record.status, record.decided_by) == ("approved", "alice")

    # The README's picture, refreshed on request only: a test run leaves the tree clean.
    assert overview.stat().st_size < MAX_DOCS_IMAGE_BYTES
    if os.environ.get("TOOLTRAIL_UPDATE_SCREENSHOT"):
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(overview, DOCS_IMAGE)


# --- charts draw in a real browser ---------------------------------------------------------

# Vega reports a spec it cannot draw only in the browser console: an unknown tick interval
# ("minute"), a dropped label format, a fixed domain merged across layers.
_VEGA_TROUBLE = ("ERROR", "are dropped", "Conflicting scale", "Infinite extent")


@pytest.fixture
def foreign_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The dashboard over seeded data plus spans from another instrumentation (null
    agent, tool, repository and model)."""
    seeded, session_id = seed_with_foreign(tmp_path / "data")
    port = free_port()
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = launch(seeded.root, port, policy=seeded.policy_path, new_session=True, output=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url, session_id
    finally:
        stop_server(proc)


def _drawn(chart: Any, path: Path) -> int:
    """How many colours the chart's picture has (a blank chart: background and grid)."""
    from PIL import Image

    chart.scroll_into_view_if_needed()
    chart.screenshot(path=str(path))
    with Image.open(path) as picture:
        return len(picture.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def test_every_chart_draws_over_data_with_missing_fields(
    foreign_server: tuple[str, str], page: Any, tmp_path: Path
) -> None:
    url, session_id = foreign_server
    trouble: list[str] = []
    page.on(
        "console",
        lambda m: trouble.append(m.text) if any(t in m.text for t in _VEGA_TROUBLE) else None,
    )
    shots = tmp_path / "charts"
    shots.mkdir()
    views = [("overview", "/", None), ("session", f"/session?session={session_id}", "Timeline")]
    views += [(f"blast-{g}", "/blast-radius", g) for g in ("Agent", "Tool", "Repository", "Day")]
    for name, path, choice in views:
        page.goto(url + path)
        page.wait_for_selector("[data-testid=stMain]")
        _settled(page)
        if choice in ("Agent", "Tool", "Repository", "Day"):
            page.locator("[data-testid=stButtonGroup] button", has_text=choice).first.click()
        elif choice:
            page.get_by_role("tab", name=choice).click()
        _settled(page)
        chart = page.get_by_test_id("stVegaLiteChart").first
        chart.wait_for(state="visible", timeout=WAIT_MS)
        page.wait_for_timeout(800)  # the first paint
        assert page.get_by_test_id("stException").count() == 0, name
        assert _drawn(chart, shots / f"{name}.png") > 20, name
    assert not trouble, trouble


# --- sessions through the MCP gateway ------------------------------------------------------

GATEWAY_IMAGE = DOCS_IMAGE.with_name("dashboard-gateway.png")


@pytest.fixture
def gateway_server(tmp_path: Path) -> Iterator[tuple[Seeded, str]]:
    """The dashboard over seeded data plus a session through the MCP gateway that called a
    tool whose definition changed after it was pinned."""
    seeded, _ = seed_with_gateway(tmp_path / "data")
    port = free_port()
    log = tmp_path / "streamlit.log"
    with log.open("wb") as out:
        proc = launch(seeded.root, port, policy=seeded.policy_path, new_session=True, output=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield seeded, url
    finally:
        stop_server(proc)


def _grid_row(grid: Any, text: str) -> Any:
    """The grid's rows (its accessible DOM twin of the canvas) with a cell reading so."""
    # `has` is matched inside each row: a locator from the page root, not from the grid.
    # CSS, not roles: the accessible table is hidden from role queries.
    return grid.locator("tr").filter(has=grid.page.locator(_cell(text)))


def _cell(text: str) -> str:
    return f"td:text-is({text!r})"


def test_gateway_sessions_are_badged_and_changed_tool_calls_marked(
    gateway_server: tuple[Seeded, str], page: Any, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    _seeded, url = gateway_server
    shots = tmp_path / "screenshots"
    client, version = GATEWAY_CLIENT

    page.goto(f"{url}/sessions")
    expect(page.get_by_role("heading", name="Sessions")).to_be_visible()
    grid = page.get_by_test_id("stDataFrame").first
    expect(grid).to_be_visible()
    _settled(page)
    badge = _grid_row(grid, GATEWAY_SESSION).locator(_cell("gateway"))
    expect(badge).to_have_count(1)
    expect(_grid_row(grid, RELEASE).locator(_cell("instrumentation"))).to_have_count(1)
    listing = _shot(page, shots, "sessions-gateway")

    page.goto(f"{url}/session?session={GATEWAY_SESSION}")
    expect(page.get_by_role("heading", name=f"Session {GATEWAY_SESSION}")).to_be_visible()
    expect(page.get_by_text(f"through the gateway (client {client} {version})")).to_be_visible()
    expect(page.get_by_text("2 calls to a tool whose definition changed")).to_be_visible()
    actions = page.get_by_test_id("stDataFrame").first
    expect(actions).to_be_visible()
    _settled(page)
    marked = _grid_row(actions, CHANGED_TOOL)
    expect(marked).to_have_count(2)
    for i in range(2):
        expect(marked.nth(i).locator(_cell("changed"))).to_have_count(1)
    listed = _grid_row(actions, "list_directory")
    expect(listed.locator(_cell("changed"))).to_have_count(0)
    assert page.get_by_test_id("stException").count() == 0
    # The header (status, end, trust notes) can push the grid below the window: the
    # screenshot must show the marked rows.
    actions.scroll_into_view_if_needed()
    detail = _shot(page, shots, "session-gateway")

    # The canvas draws the chips: the gateway's solid violet (ui.GOVERNED_HEX) is in the
    # list's picture, the changed mark's crimson (ui.CHANGED_TOOL_HEX) in the session's.
    from PIL import Image

    with Image.open(listing) as picture:
        colours = {c for _, c in picture.convert("RGB").getcolors(maxcolors=1 << 22) or []}
    assert (0x70, 0x48, 0xE8) in colours, "the gateway badge was not drawn"
    with Image.open(detail) as picture:
        colours = {c for _, c in picture.convert("RGB").getcolors(maxcolors=1 << 22) or []}
    assert (0xC2, 0x25, 0x5C) in colours, "the changed-tool mark was not drawn"
    if os.environ.get("TOOLTRAIL_UPDATE_SCREENSHOT"):
        shutil.copyfile(detail, GATEWAY_IMAGE)
