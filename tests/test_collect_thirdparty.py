"""Spans made by a third-party instrumentation from PyPI land as tooltrail actions.

What is real here, all of it unmodified: OpenLLMetry 0.62.4 (``traceloop-sdk`` and its
``opentelemetry-instrumentation-mcp``) instruments a plain MCP agent
(``tests/agents/openllmetry_agent.py``) that calls a real ``mcp-server-git`` over stdio on a
real repository; the stock OTel SDK exports the spans with the OTLP/HTTP exporter to a real
``tooltrail collect`` subprocess; the rows are read back from its Parquet files and through
the ``sessions`` / ``actions`` analytics views. Two wirings, both as OpenLLMetry documents
them:

- ``sdk``: ``Traceloop.init(api_endpoint=<collector>, instruments={Instruments.MCP})``,
  which builds the SDK's tracer provider with the OTLP/HTTP exporter and calls
  ``McpInstrumentor().instrument()``; the session is set with
  ``Traceloop.set_association_properties({"session_id": ...})`` and lands from
  ``traceloop.association.properties.session_id``.
- ``standalone``: ``McpInstrumentor().instrument()`` with a hand-built ``TracerProvider`` +
  ``BatchSpanProcessor(OTLPSpanExporter)``. OpenLLMetry sets no session attribute here; the
  calls run under one root span and the session is its trace id (SPEC §2's fallback).

The tool arguments are recorded because OpenLLMetry captures content by default
(``TRACELOOP_TRACE_CONTENT``, which the agent's environment leaves unset).

Why a separate virtualenv: OpenLLMetry 0.62.4 hooks mcp 1.x only (it wraps
``mcp.shared.session.BaseSession.send_request`` and reads ``request.root``; mcp 2.x has
neither), and tooltrail's own environment pins mcp 2.3. So the agent runs in a venv built
from ``tests/agents/openllmetry-requirements.txt`` (mcp 1.30.0, mcp-server-git 2026.8.18,
a full pinned set; why those versions is written there), built once per set of pins under
``build/thirdparty-venvs/`` and reused afterwards: building took 12 s here with pip's cache
warm, 16 s without; the two agent runs then take about 9 s. Building needs the package
registry: if it fails, the tests FAIL (setup error), unless ``TOOLTRAIL_OFFLINE=1`` is set,
which skips them instead (a venv already built is used either way).

OpenInference's ``openinference-instrumentation-mcp`` is not used: by its own description
it only propagates context and makes no spans, so there is nothing of it to land.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from collect_support import (
    CollectorProcess,
    VenvError,
    cached_venv,
    landed_rows,
    metric,
    wait_until,
)
from git_support import clean_env, git, init_repo

from tooltrail import analytics

pytestmark = pytest.mark.mcp

AGENTS = Path(__file__).parent / "agents"
AGENT = AGENTS / "openllmetry_agent.py"
REQUIREMENTS = AGENTS / "openllmetry-requirements.txt"
VENV_CACHE = Path(__file__).resolve().parents[1] / "build" / "thirdparty-venvs"
OFFLINE = "TOOLTRAIL_OFFLINE"

APP_NAME = "openllmetry-git-agent"  # the agent's service.name (openllmetry_agent.APP_NAME)
ROOT_SPAN = "git-agent.run"  # the standalone wiring's root span (openllmetry_agent.ROOT_SPAN)
SDK_SESSION = "oll-session-42"
BRANCH = "agent/feature"  # the branch the agent creates
WIRINGS = ("sdk", "standalone")
AGENT_TIMEOUT_S = 120


@dataclass(frozen=True)
class Run:
    """One agent run through its own collector: what the agent saw and what landed."""

    repo: Path
    data: Path
    session: str  # the session every row of this run must carry
    results: list[dict[str, Any]]  # the agent's tool calls and the server's answers
    rows: list[dict[str, Any]]  # every landed row, in start order
    rejected: float  # spans the collector dropped as invalid

    @property
    def actions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["span_type"] == "tool"]


@pytest.fixture(scope="session")
def openllmetry_python() -> Path:
    """The python of the OpenLLMetry venv (built on first use, then reused)."""
    try:
        return cached_venv(REQUIREMENTS, VENV_CACHE, timeout=240)
    except VenvError as e:
        if os.environ.get(OFFLINE) == "1":
            pytest.skip(f"{OFFLINE}=1 and the OpenLLMetry venv cannot be built: {e}")
        pytest.fail(f"cannot build the OpenLLMetry venv (set {OFFLINE}=1 to skip): {e}")


def _agent_env() -> dict[str, str]:
    """No OTEL_* / TRACELOOP_* of the caller (TRACELOOP_BASE_URL would redirect the spans,
    TRACELOOP_TRACE_CONTENT=false drop the arguments), no PYTHONPATH into another env."""
    env = clean_env(PYTHONUNBUFFERED="1")
    env = {
        k: v
        for k, v in env.items()
        if not k.startswith("TRACELOOP_") and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    # OpenLLMetry's documented switch: tooltrail collects traces, not the SDK's metrics.
    env["TRACELOOP_METRICS_ENABLED"] = "false"
    return env


def _all_landed(url: str) -> bool:
    # The agent flushed at exit, so every span it sent has been accepted (at least its
    # three tool spans); landing follows within the flush interval.
    accepted = metric(url, "spans_accepted_total")
    return accepted >= 3 and metric(url, "spans_landed_total") >= accepted


def _run_agent(python: Path, wiring: str, tmp: Path) -> Run:
    repo = init_repo(tmp / "repo")
    data = tmp / "data"
    with CollectorProcess(data, "--flush-interval", "0.2") as col:
        env = _agent_env()
        argv = [str(python), str(AGENT), wiring, col.url, SDK_SESSION, str(repo)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=AGENT_TIMEOUT_S)
        assert out.returncode == 0, f"agent ({wiring}) failed:\n{out.stdout}\n{out.stderr}"
        # The SDK prints colour codes and notices on stdout too; the agent's lines are JSON.
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        wait_until(lambda: _all_landed(col.url), what=f"the {wiring} agent's spans to land")
        rejected = metric(col.url, "spans_rejected_total")
    roots = [line["trace_id"] for line in lines if "trace_id" in line]
    assert len(roots) == (wiring == "standalone"), out.stdout  # only it prints its root
    session = roots[0] if roots else SDK_SESSION
    rows = sorted(landed_rows(data), key=lambda r: (r["start_time"], r["span_id"]))
    results = [line for line in lines if "tool" in line]
    return Run(repo, data, session, results, rows, rejected)


@pytest.fixture(scope="module")
def runs(openllmetry_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Each wiring run once: three real tool calls on mcp-server-git, one collector each."""
    return {
        wiring: _run_agent(openllmetry_python, wiring, tmp_path_factory.mktemp(wiring))
        for wiring in WIRINGS
    }


@pytest.mark.parametrize("wiring", WIRINGS)
def test_real_server_answered(runs: dict[str, Run], wiring: str) -> None:
    run = runs[wiring]
    assert [r["tool"] for r in run.results] == ["git_status", "git_create_branch", "git_log"]
    assert run.results[0]["text"].startswith("Repository status:")
    assert git(run.repo, "branch", "--list", BRANCH)  # the server really created it


@pytest.mark.parametrize("wiring", WIRINGS)
def test_tool_spans_land_as_actions(runs: dict[str, Run], wiring: str) -> None:
    run = runs[wiring]
    assert run.rejected == 0
    # Exactly the three tool calls are actions: OpenLLMetry's protocol spans (initialize,
    # tools/list, its stream-writer spans) land too, but not as tool calls.
    assert [r["tool_name"] for r in run.actions] == [r["tool"] for r in run.results]
    assert [r["name"] for r in run.actions] == [f"{r['tool']}.tool" for r in run.results]
    assert {r["name"] for r in run.rows} > {"initialize.mcp", "tools/list.mcp"}
    for row, call in zip(run.actions, run.results, strict=True):
        assert row["status_code"] == "OK", row
        assert row["service_name"] == APP_NAME
        assert call["text"].splitlines()[0] in (row["result_preview"] or ""), row


@pytest.mark.parametrize("wiring", WIRINGS)
def test_arguments_are_the_tool_arguments(runs: dict[str, Run], wiring: str) -> None:
    """Not OpenLLMetry's {"tool_name": ..., "arguments": {...}} wrapper: the arguments."""
    run = runs[wiring]
    landed = [json.loads(r["arguments"]) for r in run.actions]
    assert landed == [call["arguments"] for call in run.results]
    assert landed[0] == {"repo_path": str(run.repo)}
    assert landed[1] == {"repo_path": str(run.repo), "branch_name": BRANCH}


def test_sdk_session_is_the_association_property(runs: dict[str, Run]) -> None:
    run = runs["sdk"]
    # OpenLLMetry starts a new trace per MCP request here, yet one session holds them all.
    assert len({r["trace_id"] for r in run.actions}) == 3
    assert {r["session_id"] for r in run.rows} == {SDK_SESSION}


def test_standalone_session_is_the_root_trace(runs: dict[str, Run]) -> None:
    run = runs["standalone"]
    (root,) = [r for r in run.rows if r["name"] == ROOT_SPAN]
    assert root["trace_id"] == run.session
    assert {r["session_id"] for r in run.rows} == {run.session}
    assert {r["parent_span_id"] for r in run.actions} == {root["span_id"]}


@pytest.mark.parametrize("wiring", WIRINGS)
def test_session_in_analytics_views(runs: dict[str, Run], wiring: str) -> None:
    run = runs[wiring]
    con = analytics.connect(run.data)
    try:
        sessions = con.execute(
            "SELECT session_id, total_actions, span_count FROM sessions"
        ).fetchall()
        actions = con.execute(
            "SELECT tool_name, arguments FROM actions WHERE session_id = $s ORDER BY start_time",
            {"s": run.session},
        ).fetchall()
    finally:
        con.close()
    # The view counts a span of no known kind whose session is only its trace id (the
    # standalone run's root and protocol spans) in no agent session (sessions_view.sql).
    counted = [r for r in run.rows if r["span_type"] != "other" or r["session_id"] != r["trace_id"]]
    assert sessions == [(run.session, 3, len(counted))]
    assert actions == [(r["tool_name"], r["arguments"]) for r in run.actions]
