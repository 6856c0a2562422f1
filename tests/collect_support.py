"""Helpers for the ``tooltrail collect`` tests: a real collector subprocess, HTTP, rows.

``CollectorProcess`` starts ``tooltrail collect`` on a free loopback port (``--port 0``; the
URL is read from its first stdout line) and always stops it: SIGTERM, then SIGKILL if it
does not exit, also when the test fails.

``cached_venv`` builds (once, then reuses) a separate virtualenv from a pinned requirements
file, for agents whose third-party packages cannot live in tooltrail's own environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from tooltrail.collector.writer import iter_span_files

START_TIMEOUT_S = 30.0


def collect_argv() -> list[str]:
    """``tooltrail collect`` once the CLI group registers it; the same command before."""
    from tooltrail.cli import cli

    if "collect" in cli.commands:
        return [str(Path(sys.executable).with_name("tooltrail")), "collect"]
    return [sys.executable, "-m", "tooltrail.collector.cli"]


class CollectorProcess:
    def __init__(
        self,
        data_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        max_files: int | None = None,
    ) -> None:
        self.max_files = max_files  # the process's open-file limit (ulimit -n), if set
        self.data_dir = data_dir
        self.args = ["--data", str(data_dir), "--host", "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_path = data_dir.parent / f"collect-{time.monotonic_ns()}.err"

    def start(self) -> CollectorProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        err = open(self.stderr_path, "w")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*collect_argv(), *self.args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=self.env,
            preexec_fn=self._limit_files if self.max_files is not None else None,
        )
        err.close()
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(timeout=0.2):
                line = self.proc.stdout.readline()
                break
        sel.close()
        if "listening on " not in line:
            self.stop()
            raise RuntimeError(f"collector did not start: {line!r} {self.stderr()}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        return self

    def _limit_files(self) -> None:
        assert self.max_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_files, self.max_files))

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close_pipes()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the collector drains its spool), SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._close_pipes()
        return proc.returncode

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def post_traces(
    url: str, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return request(url, "POST", "/v1/traces", body, {"Content-Type": content_type, **(extra or {})})


def metric(url: str, name: str) -> float:
    status, _, body = request(url, "GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(f"tooltrail_collector_{name} "):
            return float(line.split()[-1])
    raise KeyError(name)


def landed_rows(data_dir: Path) -> list[dict[str, Any]]:
    """Every landed row, ordered by (trace_id, span_id)."""
    rows: list[dict[str, Any]] = []
    for path in iter_span_files(data_dir):
        rows.extend(pq.read_table(path, partitioning=None).to_pylist())
    rows.sort(key=lambda r: (r["trace_id"], r["span_id"]))
    return rows


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def span_keys(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["trace_id"], r["span_id"]) for r in rows]


VENV_READY = ".tooltrail-venv-ready"
"""Written into a cached venv once its install succeeded; a venv without it is rebuilt."""


class VenvError(RuntimeError):
    """A third-party virtualenv could not be built (e.g. the package registry is unreachable)."""


def cached_venv(requirements: Path, cache_dir: Path, timeout: float = 600.0) -> Path:
    """The python of a virtualenv holding exactly ``requirements`` (a full ``pip freeze``).

    Built under ``cache_dir`` in a directory named after the requirements file, this
    interpreter's tag and a hash of both, and reused while they are unchanged; other builds
    from the same file (older pins) are deleted. An flock serialises concurrent builders,
    and a marker written last means a half-built venv (interrupted, failed) is rebuilt.
    Installs with tooltrail's own pip (``pip --python``): ``--no-deps`` because the file
    pins every package, ``--no-compile`` because byte-compiling everything costs more than
    the modules an agent imports. Raises ``VenvError`` with pip's output when it fails.
    """
    tag = sys.implementation.cache_tag
    digest = hashlib.sha256(requirements.read_bytes() + tag.encode()).hexdigest()[:12]
    stem = requirements.stem
    venv = cache_dir / f"{stem}-{tag}-{digest}"
    python = venv / "bin" / "python"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / VENV_READY).exists() and python.exists():
            return python
        for old in cache_dir.glob(f"{stem}-*"):
            shutil.rmtree(old, ignore_errors=True)
        _build_venv(venv, requirements, timeout)
        (venv / VENV_READY).write_text(requirements.read_text())
    return python


def _build_venv(venv: Path, requirements: Path, timeout: float) -> None:
    steps = [
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")),
            *("install", "--quiet", "--disable-pip-version-check", "--no-input"),
            *("--no-deps", "--no-compile", "--requirement", str(requirements)),
        ],
    ]
    for argv in steps:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            shutil.rmtree(venv, ignore_errors=True)
            raise VenvError(f"{' '.join(argv[:6])}... timed out after {timeout:.0f}s") from e
        if out.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            output = (out.stdout + out.stderr)[-4000:]  # pip's cause comes last
            raise VenvError(
                f"building {venv.name} from {requirements} failed "
                f"(exit {out.returncode}): {' '.join(argv)}\n{output}"
            )


@contextmanager
def two_agent_collector(
    root: Path, *args: str
) -> Iterator[tuple[CollectorProcess, dict[str, str]]]:
    """``tooltrail collect ARGS`` on ``root/data`` with access control on: an admin and two
    agents (bot-a, bot-b) added through the real CLI; yields it and the agents'
    credentials. Keys and trust live in ``root/config``, never the user's."""
    import pytest
    from access_support import add

    data = root / "data"
    data.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLTRAIL_CONFIG_DIR", str(root / "config"))
        admin = add(data, "user", "admin", "admin", None)
        creds = {name: add(data, "agent", name, None, admin) for name in ("bot-a", "bot-b")}
    env = {"TOOLTRAIL_CONFIG_DIR": str(root / "config")}
    with CollectorProcess(data, *args, env=env) as proc:
        yield proc, creds
