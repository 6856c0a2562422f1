"""Round-4 user walkthroughs: the audit record survives sampling, exit paths and forked
children; spans and the control store share one directory; uninstrumenting MCP keeps
``@tool`` enforcement; the environment's service name wins; a resumed session is not its
own parent; a rewrite that cannot be applied is a DENY. Whole agents run as subprocesses
and are read back from the Parquet files they landed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from git_support import clean_env
from instrumentation_support import attrs, instrumented
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

import tooltrail.instrumentation as tt
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.control import ControlStore
from tooltrail.instrumentation import _settings
from tooltrail.instrumentation.sampling import ToolSpanSampler
from tooltrail.semconv import (
    GEN_AI_OPERATION_NAME,
    OP_EXECUTE_TOOL,
    TT_ARGUMENTS_REWRITTEN,
    TT_DECISION,
    TT_PARENT_SESSION_ID,
    TT_POLICY_REASON,
    TT_POLICY_RULE,
    TT_TRIGGER,
)

BIN = Path(sys.executable).parent
POLICY = """
version: 1
default: ALLOW
rules:
  - id: no-rm
    when: {tool: rm}
    decision: DENY
    reason: no deleting
"""
# The agent of the walkthroughs: two tools, one denied; PROLOGUE runs before them.
AGENT = """
import json, sys
import tooltrail.instrumentation as tt
{prologue}

@tt.tool
def ls(path):
    return "listed " + str(path)

@tt.tool
def rm(path):
    return "deleted " + str(path)

def attempt(fn, arg):
    try:
        return fn(arg)
    except tt.ToolCallDenied as e:
        return "denied " + e.rule

{body}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def run_agent(
    tmp_path: Path, prologue: str, body: str, env: dict[str, str], zero_code: bool = False
) -> list[str]:
    """Run the agent; its stdout lines (stderr, the log, is asserted empty of errors)."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT.format(prologue=textwrap.dedent(prologue), body=textwrap.dedent(body)))
    cmd = [sys.executable, str(script)]
    if zero_code:
        cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
    out = subprocess.run(
        cmd, env=clean_env(**env), capture_output=True, text=True, timeout=90, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    return [*out.stdout.splitlines(), *(f"LOG {line}" for line in out.stderr.splitlines())]


def rows(data: Path) -> list[dict[str, Any]]:
    if not (data / "spans").exists():
        return []
    got: list[dict[str, Any]] = pq.read_table(data / "spans").to_pylist()
    return sorted(
        (r for r in got if r["span_type"] == "tool"), key=lambda r: (r["session_id"], r["sequence"])
    )


# --- A1: sampling ----------------------------------------------------------------------

UNSAMPLED_PARENT = """
from opentelemetry import context, propagate, trace
tt.configure(data_dir=sys.argv[1], policy=sys.argv[2], enforce=True, agent_name="pa")
tok = context.attach(propagate.extract(
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}))
print(attempt(ls, "/"), attempt(rm, "/etc"))
context.detach(tok)
print(attempt(ls, "/after"))
with trace.get_tracer("app").start_as_current_span("not-a-tool"):
    pass
"""


@pytest.mark.parametrize(
    "sampler_env",
    [
        {},  # the SDK default: parent-based, and the upstream did not sample
        {"OTEL_TRACES_SAMPLER": "always_off"},
        {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.0"},
    ],
)
def test_configure_lands_every_tool_call_whatever_the_sampler(
    tmp_path: Path, policy_file: Path, sampler_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    script = tmp_path / "agent.py"
    script.write_text(AGENT.format(prologue="", body=UNSAMPLED_PARENT))
    out = subprocess.run(
        [sys.executable, str(script), str(data), str(policy_file)],
        env=clean_env(**sampler_env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["listed", "/", "denied", "no-rm", "listed", "/after"]
    landed = rows(data)
    assert [(r["tool_name"], r["sequence"], r["decision"]) for r in landed] == [
        ("ls", 1, "ALLOW"),
        ("rm", 2, "DENY"),
        ("ls", 3, "ALLOW"),
    ]
    # The tool spans under the upstream's trace keep it (and so stay joined to it).
    assert landed[0]["trace_id"] == landed[1]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    # Everything else is still the configured sampler's call: always_off drops it.
    names = {r["name"] for r in pq.read_table(data / "spans").to_pylist()}
    assert ("not-a-tool" in names) == (sampler_env == {})


def test_zero_code_lands_every_tool_call_under_a_zero_ratio(
    tmp_path: Path, policy_file: Path
) -> None:
    data = tmp_path / "data"
    lines = run_agent(
        tmp_path,
        "",
        'print(attempt(ls, "/"), attempt(rm, "/etc"))',
        {
            "TOOLTRAIL_DATA": str(data),
            "TOOLTRAIL_POLICY": str(policy_file),
            "TOOLTRAIL_ENFORCE": "1",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.0",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "mcp",
        },
        zero_code=True,
    )
    assert lines[0] == "listed / denied no-rm"
    assert [(r["tool_name"], r["decision"]) for r in rows(data)] == [
        ("ls", "ALLOW"),
        ("rm", "DENY"),
    ]


def test_tool_span_sampler_samples_tool_spans_and_delegates_the_rest() -> None:
    exporter = InMemorySpanExporter()
    sampler = ToolSpanSampler(ParentBased(TraceIdRatioBased(0.0)))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    state = TraceState([("vendor", "v1")])
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0), trace_state=state)
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        tracer.start_span(
            "execute_tool x", attributes={GEN_AI_OPERATION_NAME: OP_EXECUTE_TOOL}
        ).end()
        tracer.start_span("other", attributes={GEN_AI_OPERATION_NAME: "chat"}).end()
    finally:
        context.detach(token)
    tracer.start_span("root, not a tool").end()
    (span,) = exporter.get_finished_spans()
    assert span.name == "execute_tool x"
    assert span.context.trace_id == 0xABC and span.context.trace_state == state
    assert sampler.get_description() == (
        "ToolSpanSampler{tools:AlwaysOnSampler,others:"
        + ParentBased(TraceIdRatioBased(0.0)).get_description()
        + "}"
    )


def test_configure_warns_once_when_the_applications_sampler_may_drop_tool_spans(
    tmp_path: Path,
) -> None:
    prologue = f"""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
    trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
    tt.configure(data_dir={str(tmp_path / "d")!r})
    tt.configure(data_dir={str(tmp_path / "d")!r})
    """
    lines = run_agent(tmp_path, prologue, "", {})
    warnings = [line for line in lines if "AlwaysOffSampler" in line]
    assert len(warnings) == 1 and "ToolSpanSampler" in warnings[0]
    kept = tmp_path / "kept"
    kept.mkdir()
    prologue = prologue.replace("sampler=ALWAYS_OFF", "sampler=tt.ToolSpanSampler(ALWAYS_OFF)")
    assert not [line for line in run_agent(kept, prologue, "", {}) if "may drop" in line]


# --- A2: one directory for spans and control state -----------------------------------


def test_zero_code_configure_with_another_dir_keeps_control_with_the_spans(
    tmp_path: Path, policy_file: Path
) -> None:
    zero_code_dir, asked_dir = tmp_path / "tooltrail-data", tmp_path / "z1"
    with ControlStore(zero_code_dir) as store:
        store.set_session_state("zc-run", "cancel", by="alice")
    prologue = f"""
    c = tt.configure(data_dir={str(asked_dir)!r}, policy={str(policy_file)!r}, enforce=True)
    print("data_dir", c.data_dir)
    """
    env = {
        "TOOLTRAIL_SESSION_ID": "zc-run",
        "TOOLTRAIL_DATA": str(zero_code_dir),
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "mcp",
    }
    lines = run_agent(tmp_path, prologue, "print(attempt(ls, 1))", env, zero_code=True)
    assert lines[:2] == [f"data_dir {zero_code_dir}", "denied session-canceled"]
    assert any(str(asked_dir) in line and str(zero_code_dir) in line for line in lines[2:])
    assert [(r["tool_name"], r["policy_rule"]) for r in rows(zero_code_dir)] == [
        ("ls", "session-canceled")
    ]
    assert not asked_dir.exists()


def test_a_second_configure_with_another_dir_keeps_the_first(
    tmp_path: Path, policy_file: Path
) -> None:
    o1, o2 = tmp_path / "o1", tmp_path / "o2"
    with ControlStore(o1) as store:
        store.set_session_state("s", "cancel", by="alice")
    prologue = f"""
    tt.configure(data_dir={str(o1)!r}, policy={str(policy_file)!r}, enforce=True)
    c = tt.configure(data_dir={str(o2)!r}, policy={str(policy_file)!r}, enforce=True)
    print("data_dir", c.data_dir)
    """
    lines = run_agent(tmp_path, prologue, "print(attempt(ls, 1))", {"TOOLTRAIL_SESSION_ID": "s"})
    assert lines[:2] == [f"data_dir {o1}", "denied session-canceled"]
    assert [r["policy_rule"] for r in rows(o1)] == ["session-canceled"]
    assert not o2.exists()


# --- A3: uninstrumenting MCP keeps @tool enforcement ----------------------------------


@tt.tool
def rm(path: str) -> str:
    return "deleted " + path


def test_mcp_uninstrument_keeps_the_enforcement_configure_set(policy_file: Path) -> None:
    with instrumented(enforce=True, policy=str(policy_file)) as exporter:
        with pytest.raises(tt.ToolCallDenied):
            rm("/x")
        mcp = tt.McpInstrumentor()
        mcp.uninstrument()
        with pytest.raises(tt.ToolCallDenied):
            rm("/x")
        mcp.instrument()  # no arguments: the settings in force stay
        with pytest.raises(tt.ToolCallDenied):
            rm("/x")
        assert _settings.settings().enforce
        assert [attrs(s)[TT_DECISION] for s in exporter.get_finished_spans()] == ["DENY"] * 3


# --- A4 / A5: exit paths ---------------------------------------------------------------


def test_exit_flush_lands_a_backed_up_batch_of_an_app_provider_without_exit_hook(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    prologue = f"""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider(shutdown_on_exit=False))
    tt.configure(data_dir={str(data)!r})
    """
    run_agent(tmp_path, prologue, "for i in range(600):\n    ls(i)", {})
    assert len(rows(data)) == 600


@pytest.mark.parametrize("zero_code", [False, True])
def test_multiprocessing_fork_children_land_their_calls(
    tmp_path: Path, policy_file: Path, zero_code: bool
) -> None:
    # A pool's workers are SIGTERMed on leaving `with Pool()`; a Process ends in os._exit.
    data = tmp_path / "data"
    prologue = "import multiprocessing as mp\n"
    env = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "mcp"}
    if zero_code:
        env.update(
            TOOLTRAIL_DATA=str(data), TOOLTRAIL_POLICY=str(policy_file), TOOLTRAIL_ENFORCE="1"
        )
    else:
        prologue += (
            f"tt.configure(data_dir={str(data)!r}, policy={str(policy_file)!r}, enforce=True)"
        )
    body = """
    def child(i):
        with tt.session(session_id=f"child-{i}"):
            ls(i)
            return attempt(rm, "/etc")

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            print(pool.map(child, range(4)))
        p = ctx.Process(target=child, args=(9,))
        p.start()
        p.join()
    """
    lines = run_agent(tmp_path, prologue, body, env, zero_code=zero_code)
    assert lines[0] == str(["denied no-rm"] * 4)
    landed = rows(data)
    assert sorted({r["session_id"] for r in landed}) == [f"child-{i}" for i in (0, 1, 2, 3, 9)]
    assert [(r["tool_name"], r["decision"]) for r in landed if r["session_id"] == "child-9"] == [
        ("ls", "ALLOW"),
        ("rm", "DENY"),
    ]
    assert len(landed) == 10


# --- A6: the environment's service name wins -----------------------------------------


def test_zero_code_keeps_the_service_name_of_otel_resource_attributes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "TOOLTRAIL_DATA": str(data),
        "TOOLTRAIL_AGENT_NAME": "za",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=payments-agent,deployment.environment=prod",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "mcp",
    }
    run_agent(tmp_path, "", "ls(1)", env, zero_code=True)
    assert [(r["service_name"], r["agent_name"]) for r in rows(data)] == [("payments-agent", "za")]


# --- A7: a resumed session ---------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with instrumented(enforce=False) as exporter:
        yield exporter


@tt.tool
def noop(i: int) -> int:
    return i


def test_a_session_resumed_by_its_own_id_is_not_its_own_parent(
    spans: InMemorySpanExporter,
) -> None:
    with tt.session(session_id="outer"):
        with tt.session(session_id="conv-1", trigger="api", agent_id="a1") as first:
            noop(1)
            with tt.session(session_id="conv-1") as resumed:
                noop(2)
        with tt.session(session_id="sub", parent_session_id="sub"):
            noop(3)
    assert (
        (resumed.parent_session_id, resumed.trigger, resumed.agent_id)
        == (
            first.parent_session_id,
            first.trigger,
            first.agent_id,
        )
        == ("outer", "api", "a1")
    )
    got = [attrs(s) for s in spans.get_finished_spans() if s.name != "tooltrail.session.end"]
    assert [(a.get(TT_PARENT_SESSION_ID), a.get(TT_TRIGGER)) for a in got] == [
        ("outer", "api"),
        ("outer", "api"),
        (None, "agent"),
    ]


# --- B3: a rewrite the function cannot take ---------------------------------------------

REWRITES = """
version: 1
default: ALLOW
rules:
  - id: unknown-param
    when: {tool: run}
    decision: REWRITE
    rewrite: {set: {nope: 1}}
  - id: drop-required
    when: {tool: need}
    decision: REWRITE
    rewrite: {remove: [a]}
  - id: fine
    when: {tool: ok}
    decision: REWRITE
    rewrite: {set: {x: 5}}
"""


@tt.tool
def run(x: int = 1) -> int:
    return x


@tt.tool
def need(a: int, b: int = 2) -> int:
    return a + b


@tt.tool(name="ok")
async def ok(x: int = 1) -> int:
    return x


def test_a_rewrite_the_function_cannot_take_lands_as_a_deny(tmp_path: Path) -> None:
    import asyncio

    policy = tmp_path / "rewrites.yaml"
    policy.write_text(REWRITES)
    data = tmp_path / "data"
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(
        SimpleSpanProcessor(TooltrailSpanExporter(data_dir=data, buffer_rows=0))
    )
    _settings.install(tracer_provider=provider, enforce=True, policy=str(policy))
    try:
        with pytest.raises(tt.ToolCallDenied) as unknown:
            run()
        with pytest.raises(tt.ToolCallDenied) as removed:
            need(1)
        assert asyncio.run(ok()) == 5  # a rewrite that applies still runs rewritten
    finally:
        _settings.reset()
        provider.shutdown()
    assert (unknown.value.decision, unknown.value.rule) == ("DENY", "unknown-param")
    assert "'nope'" in unknown.value.reason and "does not take" in unknown.value.reason
    assert (removed.value.decision, removed.value.rule) == ("DENY", "drop-required")
    assert "'a'" in removed.value.reason
    by_tool = {s.name: attrs(s) for s in memory.get_finished_spans()}
    for name in ("execute_tool run", "execute_tool need"):
        a = by_tool[name]
        assert a[TT_DECISION] == "DENY" and TT_ARGUMENTS_REWRITTEN not in a
        assert "could not be applied" in str(a[TT_POLICY_REASON])
    assert by_tool["execute_tool ok"][TT_DECISION] == "REWRITE"
    landed = {r["tool_name"]: r for r in rows(data)}
    assert [
        (t, landed[t]["decision"], landed[t]["policy_rule"]) for t in ("need", "ok", "run")
    ] == [
        ("need", "DENY", "drop-required"),
        ("ok", "REWRITE", "fine"),
        ("run", "DENY", "unknown-param"),
    ]
    assert landed["run"]["arguments_rewritten"] is None
    assert landed["ok"]["arguments_rewritten"] == '{"x":5}'
    assert by_tool["execute_tool run"][TT_POLICY_RULE] == "unknown-param"


# --- SIGTERM: how containers and service managers stop an agent --------------------------


@pytest.mark.parametrize("zero_code", [False, True], ids=["configure", "zero_code"])
def test_sigterm_lands_the_calls_that_ran_before_the_process_ends(
    tmp_path: Path, zero_code: bool
) -> None:
    import signal
    import time

    data = tmp_path / "data"
    prologue = "" if zero_code else f"tt.configure(data_dir={str(data)!r})"
    body = """
    import itertools
    log = open("calls.log", "w", buffering=1)
    for i in itertools.count():
        ls(i)
        log.write(f"{i}\\n")
    """
    script = tmp_path / "agent.py"
    script.write_text(AGENT.format(prologue=prologue, body=textwrap.dedent(body)))
    cmd = [sys.executable, str(script)]
    env = {"TOOLTRAIL_DATA": str(data)}
    if zero_code:
        cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
        env["OTEL_TRACES_EXPORTER"] = "tooltrail"
    proc = subprocess.Popen(
        cmd, env=clean_env(**env), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        log = tmp_path / "calls.log"
        deadline = time.monotonic() + 60
        # Well into a run whose last calls sit in the processor's queue (it lands every 0.5 s).
        while (not log.exists() or len(log.read_text().splitlines()) < 3000) and (
            time.monotonic() < deadline and proc.poll() is None
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM, err  # it still ends as SIGTERM ends it
    made = len(log.read_text().splitlines())
    landed = rows(data)
    # Every call that returned landed (and at most the one SIGTERM cut off after it ran).
    assert made >= 3000 and made <= len(landed) <= made + 1, (made, len(landed))
    assert [r["sequence"] for r in landed] == list(range(1, len(landed) + 1))


@pytest.mark.parametrize(("setting", "handled"), [(None, True), ("0", False)])
def test_sigterm_handling_can_be_left_to_the_default(
    tmp_path: Path, setting: str | None, handled: bool
) -> None:
    # TOOLTRAIL_SIGTERM_FLUSH=0: an agent whose main thread may sit in C code for long keeps
    # SIGTERM's immediate default instead of a handler that waits for Python code to run.
    script = (
        "import signal, tooltrail.instrumentation as tt\n"
        f"tt.configure(data_dir={str(tmp_path / 'data')!r})\n"
        "print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)\n"
    )
    env = {} if setting is None else {"TOOLTRAIL_SIGTERM_FLUSH": setting}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(handled)
