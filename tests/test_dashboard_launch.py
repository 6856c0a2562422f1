"""Dashboard: the launcher (``tooltrail dashboard`` runs it), the top-level ``app.py``, and
the data-directory fingerprint that keys the result cache."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_support import PENDING_ANYONE, app_test, free_port, seed, stop_server, texts
from streamlit.testing.v1 import AppTest

from tooltrail.control import ControlStore
from tooltrail.dashboard import ENTRY, command, launch
from tooltrail.dashboard.data import app_config, fingerprint
from tooltrail.errors import BadInputError

REPO = Path(__file__).resolve().parents[1]


def test_command_runs_the_packaged_entry_with_absolute_script_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cmd = command("data", 9123, policy="p.yaml")
    assert cmd[:5] == [sys.executable, "-m", "tooltrail.dashboard.serve", "run", str(ENTRY)]
    assert ENTRY.is_file() and ENTRY.parent.name == "dashboard"
    options = dict(zip(cmd[5:-5:2], cmd[6:-5:2], strict=True))
    assert options["--server.port"] == "9123"
    assert options["--server.address"] == "127.0.0.1"
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"
    assert cmd[-5:] == [
        "--",
        "--data",
        str(tmp_path / "data"),
        "--policy",
        str(tmp_path / "p.yaml"),
    ]
    assert "--" not in command()  # no arguments: the app reads $TOOLTRAIL_DATA itself


@pytest.mark.parametrize("port", [0, 65536, -1, True])
def test_command_refuses_a_bad_port(port: int) -> None:
    with pytest.raises(BadInputError, match="--port"):
        command(port=port)


def test_app_config_reads_script_arguments_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLTRAIL_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("TOOLTRAIL_POLICY", str(tmp_path / "env.yaml"))
    cfg = app_config(["--data", str(tmp_path / "arg-data"), "-q", "--unrelated"])
    assert (cfg.data_dir, cfg.policy_path) == (tmp_path / "arg-data", tmp_path / "env.yaml")
    cfg = app_config(["--dat", "x"])  # no abbreviations: pytest's own flags never match
    assert cfg.data_dir == tmp_path / "env-data"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.read() == b"ok"
    except OSError:
        return False


def _wait_until_healthy(proc: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 60
    while not _healthy(port):
        assert proc.poll() is None, f"{what} exited"
        assert time.monotonic() < deadline, f"{what} did not come up"
        time.sleep(0.3)


def _wait_until_down(port: int, timeout_s: float, message: str) -> None:
    deadline = time.monotonic() + timeout_s
    while _healthy(port):
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


@contextlib.contextmanager
def _dashboard_command(root: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``tooltrail dashboard`` as a real command, once its server answers: (the command's
    process, the port). In a process group of its own, so that the cleanup reaches an
    orphaned server too, if the test failed."""
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("tooltrail")), "dashboard", "--data", str(root)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_until_healthy(proc, port, "the dashboard")
        yield proc, port
    finally:
        stop_server(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # an orphaned server, if the test failed


def test_launch_serves_the_app_over_http_and_stops(tmp_path: Path) -> None:
    root = seed(tmp_path / "data", batch=0).root
    port = free_port()
    proc = launch(root, port, new_session=True, output=subprocess.DEVNULL)
    try:
        _wait_until_healthy(proc, port, "the server")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as r:
            assert b"<title>" in r.read()  # the app shell; pages render over the websocket
    finally:
        stop_server(proc)
    assert proc.returncode is not None


def test_sigterm_to_the_command_stops_the_server_too(tmp_path: Path) -> None:
    # A supervisor (systemd, docker stop) sends SIGTERM: the Streamlit child must not
    # outlive the command, serving approve / deny buttons on its own.
    root = seed(tmp_path / "data", batch=0).root
    with _dashboard_command(root) as (proc, port):
        proc.send_signal(signal.SIGTERM)  # to the command only, not its process group
        assert proc.wait(timeout=30) == 0
        _wait_until_down(port, 15, "the server outlived the command")


def test_the_server_stops_when_the_command_is_killed_outright(tmp_path: Path) -> None:
    # kill -9 (or the OOM killer) leaves no chance to forward a signal: the server
    # notices it was re-parented and stops itself.
    root = seed(tmp_path / "data", batch=0).root
    with _dashboard_command(root) as (proc, port):
        proc.kill()
        proc.wait()
        _wait_until_down(port, 20, "the server outlived the killed command")


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_dashboard_refuses_a_busy_port_and_a_missing_directory(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tooltrail.cli import cli

    root = seed(tmp_path / "data", batch=0).root
    with _busy_port() as port:
        result = CliRunner().invoke(cli, ["dashboard", "--data", str(root), "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
    assert "dashboard: http" not in result.output  # no URL of somebody else's server
    missing = tmp_path / "typo"
    result = CliRunner().invoke(cli, ["dashboard", "--data", str(missing)])
    assert result.exit_code == 2 and "does not exist" in result.output
    # Out of range: refused as bad input, before any URL (the resolver would wrap 99999).
    for args in (["dashboard", "--data", str(root)], ["demo", "--data", str(tmp_path / "d")]):
        result = CliRunner().invoke(cli, [*args, "--port", "99999"])
        assert result.exit_code == 2 and "--port" in result.output, result.output
        assert "dashboard: http" not in result.output


def test_demo_refuses_a_busy_dashboard_port_before_running_agents(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tooltrail.cli import cli

    data = tmp_path / "data"
    with _busy_port() as port:
        result = CliRunner().invoke(cli, ["demo", "--data", str(data), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not data.exists()  # no agent ran, nothing landed


def test_top_level_app_py_runs_the_same_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = seed(tmp_path / "data", batch=0)
    app_test(seeded.root, seeded.policy_path, monkeypatch)  # sets the environment, clears caches
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert texts(at.title) == ["Overview"]
    assert {m.label: m.value for m in at.metric}["Pending approvals"] == "2"
    at.switch_page("dashboard/page_sessions.py").run()
    assert texts(at.title) == ["Sessions"]


def test_fingerprint_moves_with_landed_files_and_store_writes_only(tmp_path: Path) -> None:
    root = tmp_path / "data"
    empty = fingerprint(root)
    seeded = seed(root, batch=0)
    landed = fingerprint(root)
    assert landed != empty
    with ControlStore(root) as store:  # reading, as the views do, changes nothing
        store.list_approvals("all")
        store.session_states()
    assert fingerprint(root) == landed
    time.sleep(0.01)
    with ControlStore(root) as store:
        store.decide(PENDING_ANYONE, "approved", "alice")
    decided = fingerprint(root)
    assert decided != landed
    seed(tmp_path / "other", batch=0)  # another directory does not matter
    assert fingerprint(root) == decided
    assert seeded.root == root
