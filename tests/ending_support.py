"""Shared by the session-end tests: tests/agents/ending_agent.py run as a real process,
landing in a data directory through tooltrail's own exporter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from git_support import clean_env

AGENT = Path(__file__).parent / "agents" / "ending_agent.py"


def agent(data: Path, mode: str, session_id: str, *otlp_url: str) -> subprocess.Popen[str]:
    """Start the agent in ``mode`` (ok, raise, hang, trace: see the agent's docstring);
    given a collector's URL, its spans go there too."""
    return subprocess.Popen(
        [sys.executable, str(AGENT), mode, session_id, *otlp_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(TOOLTRAIL_DATA=str(data), TOOLTRAIL_DUCKDB_FILE="0"),
    )


def run_agent(data: Path, mode: str, session_id: str, *otlp_url: str) -> None:
    """Run the agent to its end; fail with its stderr if it did not exit 0."""
    proc = agent(data, mode, session_id, *otlp_url)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def run_trace_agent(data: Path, session_id: str) -> None:
    """The ``trace`` agent, paused and resumed by ``ops`` between its two steps."""
    from tooltrail.control import ControlStore

    proc = agent(data, "trace", session_id)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "step"
        with ControlStore(data) as store:
            store.set_session_state(session_id, "pause", by="ops", reason="look")
            store.set_session_state(session_id, "resume", by="ops")
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
