"""tooltrail.dashboard: the Streamlit app over a data directory, and how to start it.

``tooltrail dashboard`` calls :func:`run` (or :func:`launch` for a process handle); the
app itself is ``router.main()``, run by the packaged ``entry.py`` or the repository's
top-level ``app.py`` (``streamlit run app.py -- --data DIR``). Pages: ``page_*.py``;
reads and writes: ``data.py``; see docs/DASHBOARD.md.

This module imports neither Streamlit nor DuckDB: the CLI loads it cheaply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from tooltrail._net import is_loopback
from tooltrail.errors import BadInputError

ENTRY: Final = Path(__file__).resolve().with_name("entry.py")
SERVE_MODULE: Final = "tooltrail.dashboard.serve"
DEFAULT_PORT: Final = 8501
DEFAULT_HOST: Final = "127.0.0.1"
STOP_TIMEOUT_S: Final = 10.0
# Server and look settings passed on the command line, so the packaged app needs no
# .streamlit/config.toml. The file watcher is off: the app's files live in site-packages.
SERVER_OPTIONS: Final = {
    "browser.gatherUsageStats": "false",
    "server.fileWatcherType": "none",
    "client.toolbarMode": "minimal",
    "theme.base": "light",
    "theme.primaryColor": "#1c7ed6",
}


def command(
    data_dir: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    headless: bool = True,
    *,
    policy: str | os.PathLike[str] | None = None,
    secrets: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command line of the dashboard's server: ``python -m streamlit run``, through
    ``tooltrail.dashboard.serve``, which stops the server if this process dies.

    ``data_dir`` / ``policy`` are passed to the app after ``--`` (absolute, so the
    server's working directory does not matter); when omitted the app falls back to
    ``$TOOLTRAIL_DATA`` / ``$TOOLTRAIL_POLICY``. ``secrets``: a secrets.toml whose
    ``[auth]`` section configures OpenID sign-in (``st.login``); without it Streamlit
    reads ``.streamlit/secrets.toml`` of the working directory or of ``~``.

    Refuses (BadInputError) a non-loopback ``host`` while the data directory has no
    access control: anyone reaching the port could approve, deny and cancel.
    """
    if isinstance(port, bool) or not 0 < int(port) < 65536:
        raise BadInputError(f"--port must be between 1 and 65535, got {port!r}")
    if not host or not host.strip():
        raise BadInputError("the dashboard needs a host address to listen on")
    check_bind(data_dir, host)
    cmd = [sys.executable, "-m", SERVE_MODULE, "run", str(ENTRY)]
    options = {
        "server.port": str(int(port)),
        "server.address": host,
        "server.headless": "true" if headless else "false",
        **SERVER_OPTIONS,
    }
    if secrets is not None:
        options["secrets.files"] = str(Path(secrets).expanduser().resolve())
    for name, value in options.items():
        cmd += [f"--{name}", value]
    script_args: list[str] = []
    if data_dir is not None:
        script_args += ["--data", str(Path(data_dir).expanduser().resolve())]
    if policy is not None:
        script_args += ["--policy", str(Path(policy).expanduser().resolve())]
    if script_args:
        cmd += ["--", *script_args]
    return cmd


def check_bind(data_dir: str | os.PathLike[str] | None, host: str) -> None:
    """Refuse to serve off loopback without access control, as ``collect`` does."""
    from tooltrail import access

    if not is_loopback(host.strip()) and not access.enabled(data_dir):
        raise BadInputError(
            f"refusing to serve the dashboard on non-loopback address {host!r}: the data"
            " directory has no users, so anyone who can reach the port could approve, deny,"
            " pause and cancel. Add users first (`tooltrail users add NAME --role admin`)"
            " or listen on 127.0.0.1"
        )


def launch(
    data_dir: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    headless: bool = True,
    *,
    policy: str | os.PathLike[str] | None = None,
    secrets: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
    output: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the dashboard server; the caller owns the process (stop it with
    ``terminate()`` then ``wait()``). ``new_session`` puts it in its own process group
    (tests kill the group); ``output`` receives its stdout and stderr (a file, or
    ``subprocess.DEVNULL``; default: this process's)."""
    return subprocess.Popen(
        command(data_dir, port, host, headless, policy=policy, secrets=secrets),
        env=dict(env) if env is not None else None,
        stdout=output,
        stderr=subprocess.STDOUT if output is not None else None,
        start_new_session=new_session,
    )


def run(
    data_dir: str | os.PathLike[str] | None = None,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    headless: bool = True,
    *,
    policy: str | os.PathLike[str] | None = None,
    secrets: str | os.PathLike[str] | None = None,
) -> int:
    """Run the dashboard in the foreground until it exits, Ctrl-C, SIGTERM or SIGHUP;
    returns its exit code (0 when stopped by one of those).

    The server is a child process: it must never outlive this one, or it would go on
    serving the approve / deny and pause / cancel buttons after the operator (or a
    supervisor's SIGTERM) stopped the dashboard.
    """
    stopped: list[int] = []
    started: list[subprocess.Popen[Any]] = []

    def forward(signum: int, _frame: object) -> None:
        stopped.append(signum)
        for proc in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    # Installed before the server starts: a SIGTERM in between must not orphan it.
    previous = _handle_stop_signals(forward)
    try:
        proc = launch(data_dir, port, host, headless, policy=policy, secrets=secrets)
    except BaseException:
        _restore(previous)
        raise
    started.append(proc)
    if stopped:  # the signal came while the server was starting
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait()
        return 0 if stopped else code
    except KeyboardInterrupt:
        # The server got the same SIGINT from the terminal; give it time to shut down.
        return 0 if _stop(proc) in (0, -signal.SIGINT, -signal.SIGTERM) else 1
    finally:
        _stop(proc)
        _restore(previous)


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)


def _handle_stop_signals(handler: Any) -> dict[int, Any]:
    """Install ``handler`` for SIGTERM and SIGHUP; returns the handlers it replaced
    (none off the main thread, where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in _STOP_SIGNALS}


def _stop(proc: subprocess.Popen[Any]) -> int:
    """Wait for the server to exit, asking it to and then forcing it: its exit code."""
    if proc.poll() is None:
        try:
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                return proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
    return proc.wait()


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ENTRY", "check_bind", "command", "launch", "run"]
