"""Sessions: ids, nesting, env defaults, and sequence numbers across tasks and threads."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from instrumentation_support import attrs, instrumented
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tooltrail.instrumentation as tt
from tooltrail.errors import BadInputError
from tooltrail.instrumentation import _session
from tooltrail.semconv import (
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    SESSION_END_NAME,
    SESSION_ID,
    TT_PARENT_SESSION_ID,
    TT_SEQUENCE,
    TT_SESSION_ID,
    TT_TRIGGER,
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with instrumented(enforce=False) as exporter:
        yield exporter
    _session.set_default_agent_name(None)


def tool_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    """The tool spans (a session left also records its end: a span of its own)."""
    return [s for s in spans.get_finished_spans() if s.name != SESSION_END_NAME]


@tt.tool
def noop(i: int) -> int:
    return i


@tt.tool
async def anoop(i: int) -> int:
    await asyncio.sleep(0)
    return i


def test_session_stamps_every_span_with_all_session_keys(spans: InMemorySpanExporter) -> None:
    with tt.session(agent_name="reviewer", trigger="api", agent_id="agent-7") as s:
        noop(1)
        noop(2)
    a1, a2 = (attrs(x) for x in tool_spans(spans))
    for a in (a1, a2):
        assert a[SESSION_ID] == a[GEN_AI_CONVERSATION_ID] == a[TT_SESSION_ID] == s.session_id
        assert a[GEN_AI_AGENT_NAME] == "reviewer"
        assert a[GEN_AI_AGENT_ID] == "agent-7"
        assert a[TT_TRIGGER] == "api"
        assert TT_PARENT_SESSION_ID not in a
    assert (a1[TT_SEQUENCE], a2[TT_SEQUENCE]) == (1, 2)


def test_fresh_ids_and_explicit_id() -> None:
    with tt.session() as a, tt.session(session_id="fixed") as b:
        assert b.session_id == "fixed"
    with tt.session() as c:
        pass
    assert a.session_id != c.session_id
    assert len(a.session_id) == 32


def test_nested_session_records_parent_and_inherits_agent(spans: InMemorySpanExporter) -> None:
    with tt.session(agent_name="planner") as outer:
        noop(1)
        with tt.session(agent_name="coder") as inner:
            noop(2)
        with tt.session() as anonymous:
            pass
        noop(3)
    assert inner.parent_session_id == outer.session_id
    assert inner.trigger == "agent"
    assert anonymous.agent_name == "planner"
    by_seq = [(attrs(x)[TT_SESSION_ID], attrs(x)[TT_SEQUENCE]) for x in tool_spans(spans)]
    # The sub-agent numbers its own actions; the outer session continues where it was.
    assert by_seq == [(outer.session_id, 1), (inner.session_id, 1), (outer.session_id, 2)]
    sub = attrs(tool_spans(spans)[1])
    assert sub[TT_PARENT_SESSION_ID] == outer.session_id
    assert sub[GEN_AI_AGENT_NAME] == "coder"


def test_unknown_trigger_is_rejected_with_the_value() -> None:
    with pytest.raises(BadInputError, match="'cron'"):
        tt.session(trigger="cron")


def test_session_closes_on_exit_even_after_an_error() -> None:
    with pytest.raises(RuntimeError), tt.session(session_id="s1"):
        assert tt.current_session().session_id == "s1"
        raise RuntimeError("boom")
    assert tt.current_session().session_id != "s1"


def test_asyncio_tasks_share_one_counter_and_keep_their_session(
    spans: InMemorySpanExporter,
) -> None:
    async def worker(n: int) -> None:
        for i in range(n):
            await anoop(i)

    async def main() -> tuple[str, str]:
        with tt.session(agent_name="a") as a:
            # Tasks copy the context at creation: all of them see session a.
            await asyncio.gather(*(worker(25) for _ in range(4)))
        with tt.session(agent_name="b") as b:
            await asyncio.gather(worker(5), worker(5))
        return a.session_id, b.session_id

    sid_a, sid_b = asyncio.run(main())
    seqs: dict[object, list[object]] = {}
    for span in tool_spans(spans):
        a = attrs(span)
        seqs.setdefault(a[TT_SESSION_ID], []).append(a[TT_SEQUENCE])
    assert sorted(seqs[sid_a]) == list(range(1, 101))  # type: ignore[type-var]
    assert sorted(seqs[sid_b]) == list(range(1, 11))  # type: ignore[type-var]


def test_threads_share_one_counter_unique_and_ordered(spans: InMemorySpanExporter) -> None:
    barrier = threading.Barrier(8)

    def worker(s: tt.Session) -> None:
        barrier.wait()
        with tt.use_session(s):
            for i in range(50):
                noop(i)

    with tt.session(agent_name="threads") as s:
        threads = [threading.Thread(target=worker, args=(s,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # A copied context carries the session into pool threads too.
        with ThreadPoolExecutor(2) as pool:
            ctx = contextvars.copy_context()
            list(pool.map(lambda i: ctx.copy().run(noop, i), range(20)))
    finished = tool_spans(spans)
    assert {attrs(x)[TT_SESSION_ID] for x in finished} == {s.session_id}
    seq = [attrs(x)[TT_SEQUENCE] for x in finished]
    assert sorted(seq) == list(range(1, 421))  # type: ignore[type-var]


def test_per_thread_order_follows_call_order(spans: InMemorySpanExporter) -> None:
    order: dict[int, list[int]] = {}

    def worker(s: tt.Session, k: int) -> None:
        with tt.use_session(s):
            for i in range(30):
                noop(k * 1000 + i)

    with tt.session() as s:
        threads = [threading.Thread(target=worker, args=(s, k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for span in tool_spans(spans):
        a = attrs(span)
        value = json.loads(str(a[GEN_AI_TOOL_CALL_ARGUMENTS]))["i"]
        order.setdefault(value // 1000, []).append(int(a[TT_SEQUENCE]))  # type: ignore[call-overload]
    for k, seqs in order.items():
        assert len(seqs) == 30, k
        assert seqs == sorted(seqs), f"thread {k} numbered out of call order"


def test_reopening_a_session_id_goes_on_counting(spans: InMemorySpanExporter) -> None:
    # A session resumed under its id (a second request of one conversation) must not
    # number its actions from 1 again: `show` orders a session by sequence.
    sid = f"resumed-{os.getpid()}-{id(spans)}"
    with tt.session(session_id=sid):
        noop(1)
        noop(2)
    with tt.session(session_id=sid, agent_name="other-agent"):
        noop(3)
    with tt.session(session_id=f"{sid}-other"):
        noop(4)
    got = [(a[SESSION_ID], a[TT_SEQUENCE]) for a in map(attrs, tool_spans(spans))]
    assert got == [(sid, 1), (sid, 2), (sid, 3), (f"{sid}-other", 1)]


def test_implicit_session_rebuilt_by_configure_goes_on_counting(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLTRAIL_SESSION_ID", f"implicit-{os.getpid()}-{id(spans)}")
    _session.set_default_agent_name("first")
    noop(1)
    _session.set_default_agent_name("second")  # rebuilds the implicit session object
    noop(2)
    got = [(a[GEN_AI_AGENT_NAME], a[TT_SEQUENCE]) for a in map(attrs, tool_spans(spans))]
    assert got == [("first", 1), ("second", 2)]


def test_counters_are_bounded_least_recently_opened_first_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_session, "MAX_COUNTED_SESSIONS", 2)
    monkeypatch.setattr(_session, "_counters", _session.OrderedDict())
    a, b = _session.Session("a"), _session.Session("b")
    assert (a.next_sequence(), b.next_sequence()) == (1, 1)
    assert _session.Session("a").next_sequence() == 2  # reopening "a" makes "b" the oldest
    _session.Session("c")
    assert list(_session._counters) == ["a", "c"]
    assert _session.Session("b").next_sequence() == 1  # forgotten: counts afresh
    assert a.next_sequence() == 3  # live objects keep their counter


def test_implicit_session_from_environment() -> None:
    code = (
        "import tooltrail.instrumentation as tt\n"
        "s = tt.current_session()\n"
        "assert s is tt.current_session()\n"
        "print(s.session_id, s.agent_name, s.next_sequence(), s.next_sequence())\n"
    )
    env = {**os.environ, "TOOLTRAIL_SESSION_ID": "env-session", "TOOLTRAIL_AGENT_NAME": "env-agent"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["env-session", "env-agent", "1", "2"]


def test_implicit_session_without_environment_is_one_fresh_session_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOOLTRAIL_SESSION_ID", raising=False)
    monkeypatch.delenv("TOOLTRAIL_AGENT_NAME", raising=False)
    _session.set_default_agent_name(None)  # rebuilds the implicit session
    first = tt.current_session()
    assert first is tt.current_session()
    _session.set_default_agent_name("named")
    renamed = tt.current_session()
    assert renamed.agent_name == "named"
    _session.set_default_agent_name(None)


def test_a_forked_child_goes_on_counting_for_open_and_reopened_sessions() -> None:
    sid = f"forked-{os.getpid()}"
    s = _session.Session(sid)
    assert (s.next_sequence(), s.next_sequence()) == (1, 2)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        try:
            got = (s.next_sequence(), _session.Session(sid).next_sequence())
            os.write(write, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read()) == [3, 4]
    assert status == 0
