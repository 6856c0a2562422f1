"""Helpers for the real-browser dashboard tests: Debian's chromium driven by Playwright
(never a downloaded browser), a dashboard server started with ``launch``, a real OpenID
provider (npm ``oidc-provider``, tests/js/oidc_provider.mjs) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_S = 60.0
WAIT_MS = 30_000
JS = Path(__file__).parent / "js"
OIDC_PROVIDER = JS / "oidc_provider.mjs"

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("TOOLTRAIL_REQUIRE_BROWSER"),
    reason="Debian's chromium is not installed (apt-get install -y chromium); "
    "this test drives /usr/bin/chromium and never downloads a browser",
)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for a Streamlit server's health check (fail with its log if it died)."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read() == b"ok":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the dashboard did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _loopback_only(route: Any) -> None:
    """Requests leave the machine never (the provider's pages @import a web font)."""
    host = urllib.parse.urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


@contextmanager
def browser_page() -> Iterator[Any]:
    """A fresh chromium tab (its own cookies) that reaches loopback only, closed with the
    browser afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            context.route("**/*", _loopback_only)
            tab = context.new_page()
            tab.set_default_timeout(WAIT_MS)
            yield tab
        finally:
            browser.close()


def settled(page: Any) -> None:
    """Wait until Streamlit has finished the current run."""
    page.wait_for_selector("[data-testid=stStatusWidget]", state="detached", timeout=WAIT_MS)


def require_oidc_provider() -> None:
    """Skip where node or the npm packages are missing; fail in CI, where .ci/run
    installs them (``CI`` or ``TOOLTRAIL_REQUIRE_NODE`` set)."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node is not on PATH")
    if not (JS / "node_modules" / "oidc-provider").exists():
        missing.append(f"{JS / 'node_modules'} is not installed (run `npm ci` in {JS})")
    if not missing:
        return
    if os.environ.get("CI") or os.environ.get("TOOLTRAIL_REQUIRE_NODE"):
        pytest.fail("; ".join(missing))
    pytest.skip("; ".join(missing))


@contextmanager
def oidc_provider(
    folder: Path, client_id: str, client_secret: str, redirect_uris: Sequence[str]
) -> Iterator[str]:
    """A real OpenID provider on a free loopback port; yields its issuer URL. Stopped (its
    process group) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "port": 0,
                "client_id": client_id,
                "client_secret": client_secret,
                "redirect_uris": list(redirect_uris),
                "post_logout_redirect_uris": list(redirect_uris),
            }
        )
    )
    log = folder / "oidc-provider.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["node", str(OIDC_PROVIDER), str(config)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=JS,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            raise AssertionError(f"the OpenID provider did not start:\n{log.read_text()}")
        yield str(json.loads(line)["issuer"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
