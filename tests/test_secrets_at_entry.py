"""No secret shape reaches disk or another exporter (issue 14 §3), checked on a real agent.

One instrumented agent runs every shape of ``secret_shapes.SHAPES`` through every way a
value enters the record: ``@tool`` arguments and results (JSON and plain text), an
exception's message, a REWRITE's rewritten arguments, a REQUIRE_APPROVAL held in the
control store (the session id, the decider's reason, a pause and a resume with reasons
quoting the secret), and a real MCP ``tools/call`` to ``mcp-server-git``. Its provider
exports to the tooltrail exporter (Parquet), to the SDK's in-memory exporter and to the
SDK's console exporter (a second real exporter writing text). Then every byte written is
searched: the Parquet files (raw and decoded), ``control.sqlite`` with its ``-wal`` and
``-shm``, both other exporters' spans, and every log record.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from anyio.from_thread import start_blocking_portal
from git_support import init_repo
from mcp import ClientSession, StdioServerParameters, stdio_client
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from secret_shapes import SHAPES, SecretShape

import tooltrail.instrumentation as tt
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.control import ControlStore
from tooltrail.instrumentation import _settings

pytestmark = pytest.mark.mcp

POLICY = """
version: 1
default: ALLOW
rules:
  - id: staging-only
    when: {tool: deploy}
    decision: REWRITE
    rewrite: {set: {stage: staging}}
  - id: hold-publish
    when: {tool: publish}
    decision: REQUIRE_APPROVAL
    approval: {timeout: 60s, approvers: ["*"]}
"""


@dataclass
class Written:
    """Everything the agent run wrote, by where it went."""

    files: dict[str, bytes] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    landed_sessions: set[str] = field(default_factory=set)
    approvals: int = 0

    def holding(self, needle: str) -> list[str]:
        """Where ``needle`` (as is, or JSON-escaped) was written."""
        spellings = {needle, json.dumps(needle)[1:-1]}
        found = [n for n, b in self.files.items() if any(s.encode() in b for s in spellings)]
        found += [n for n, t in self.texts.items() if any(s in t for s in spellings)]
        return found


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _text_of(value: Any) -> str:
    return f"ran with {value!r}"


def _define_tools(received: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The agent's tools; each keeps what it was really called with."""

    @tt.tool
    def echo(**kwargs: Any) -> dict[str, Any]:
        received.setdefault("echo", []).append(kwargs)
        return kwargs

    @tt.tool
    def describe(**kwargs: Any) -> str:
        received.setdefault("describe", []).append(kwargs)
        return _text_of(kwargs)

    @tt.tool
    def fail(**kwargs: Any) -> None:
        received.setdefault("fail", []).append(kwargs)
        message = _text_of(kwargs)
        raise RuntimeError(message)

    @tt.tool
    def deploy(**kwargs: Any) -> str:
        received.setdefault("deploy", []).append(kwargs)
        return "deployed"

    @tt.tool
    def publish(**kwargs: Any) -> str:
        received.setdefault("publish", []).append(kwargs)
        return "published"

    return {"echo": echo, "describe": describe, "fail": fail, "deploy": deploy, "publish": publish}


def _decider(data: Path, stop: threading.Event, reasons: dict[str, str]) -> None:
    """Approves every pending request, with a reason quoting its session's secrets (a
    person pasting what they saw), as the CLI and dashboard do: through the store."""
    with ControlStore(data) as store:
        while not stop.is_set():
            for record in store.list_approvals():
                reason = reasons.get(record.agent_name or "", "ok")
                store.decide(record.approval_id, "approved", by="alice", reason=reason)
            time.sleep(0.02)


@asynccontextmanager
async def _git(repo: Path) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_server_git", "--repository", str(repo)]
    )
    async with (
        stdio_client(params, errlog=sys.stderr) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _run_shape(shape: SecretShape, tools: dict[str, Any], data: Path, git: Any, repo: Path) -> None:
    args = shape.arguments
    # The session id and agent name quote the secrets too (a run named after its input).
    session_id = f"run-{shape.name}-{json.dumps(args)}"
    with tt.session(session_id=session_id, agent_name=shape.name):
        tools["echo"](**args)
        tools["describe"](**args)
        with pytest.raises(RuntimeError):
            tools["fail"](**args)
        tools["deploy"](stage="prod", **args)
        with ControlStore(data) as store:
            reason = f"holding: {json.dumps(args)}"
            store.set_session_state(session_id, "pause", by="ops", reason=reason)
            store.set_session_state(session_id, "resume", by="ops", reason=reason)
        tools["publish"](**args)
        git(lambda s: s.call_tool("git_status", {"repo_path": str(repo), **args}))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    root = tmp_path_factory.mktemp("entry")
    data, repo = root / "data", init_repo(root / "repo")
    policy = root / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    memory, console_out = InMemorySpanExporter(), io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TooltrailSpanExporter(data_dir=data)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=console_out)))
    capture, logger = _Capture(), logging.getLogger("tooltrail")  # every tooltrail logger
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    out = Written()
    stop = threading.Event()
    reasons = {s.name: f"approved, saw {json.dumps(s.arguments)}" for s in SHAPES}
    decider = threading.Thread(target=_decider, args=(data, stop, reasons), daemon=True)
    instrumentor = tt.McpInstrumentor()
    try:
        instrumentor.instrument(
            tracer_provider=provider,
            policy=policy,
            enforce=True,
            capture_results=True,
            data_dir=data,
            session_control=True,
        )
        tools = _define_tools(out.received)
        decider.start()
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(_git(repo)) as session,
        ):

            def git(fn: Any) -> Any:
                async def go() -> Any:
                    return await fn(session)

                return portal.call(go)

            for shape in SHAPES:
                _run_shape(shape, tools, data, git, repo)
    finally:
        stop.set()
        decider.join(timeout=10)
        instrumentor.uninstrument()
        _settings.reset()
        provider.shutdown()
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    for path in sorted(data.rglob("*")):
        if path.is_file():
            out.files[str(path.relative_to(data))] = path.read_bytes()
    for path in sorted(data.rglob("*.parquet")):
        table = pq.read_table(path)
        out.texts[f"{path.name} (decoded)"] = json.dumps(table.to_pylist(), default=str)
        sessions = table.column("session_id").to_pylist()
        out.landed_sessions.update(s for s in sessions if s.startswith("run-"))
    out.texts["in-memory exporter"] = "\n".join(s.to_json() for s in memory.get_finished_spans())
    out.texts["console exporter"] = console_out.getvalue()
    out.texts["log"] = "\n".join(capture.lines)
    with ControlStore(data) as store:
        out.approvals = len(store.list_approvals("approved"))
    yield out


def test_the_agent_ran_every_shape_for_real(written: Written) -> None:
    """The run did what the other tests rely on: every tool got the caller's real values
    (scrubbing touches the record only), every hold was approved, everything landed."""
    n = len(SHAPES)
    for tool in ("echo", "describe", "fail", "publish"):
        assert written.received[tool] == [s.arguments for s in SHAPES], tool
    assert written.received["deploy"] == [{"stage": "staging", **s.arguments} for s in SHAPES]
    assert written.approvals == n
    assert len(written.landed_sessions) == n
    assert "control.sqlite" in written.files and written.texts["in-memory exporter"]


@pytest.mark.parametrize("shape", [s.param() for s in SHAPES])
def test_no_byte_written_holds_the_secret(written: Written, shape: SecretShape) -> None:
    for needle in shape.needles:
        assert written.holding(needle) == [], f"{shape.name}: {needle[:12]}… was written"
