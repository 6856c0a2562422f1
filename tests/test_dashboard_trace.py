"""Dashboard: the session page's activity trace (LLM steps, tool calls, control events,
final output, filters) and end line, and the Sessions list's tag filter, over sessions
landed by real agent processes (tests/agents/ending_agent.py) through the exporter."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_support import app_test, goto, table, texts
from ending_support import run_agent, run_trace_agent


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("trace") / "data"
    run_trace_agent(data, "s-trace")
    run_agent(data, "ok", "s-ok")
    run_agent(data, "raise", "s-raise")
    return data


def _entries(at: object) -> list[str]:
    """The trace's entry lines (each starts with the entry's kind in bold)."""
    words = ("**LLM step**", "**agent**", "**tool call**", "**final output**")
    words += ("**session control**", "**session end**")
    return [t for t in texts(at.markdown) if any(w in t for w in words)]  # type: ignore[attr-defined]


def test_the_trace_tab_orders_steps_and_filters(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(root, None, monkeypatch), "session", session="s-trace")
    assert not at.exception
    lines = _entries(at)
    kinds = [line.split("**")[1] for line in lines]
    assert kinds == [
        "agent",
        "LLM step",
        "tool call",
        "session control",
        "session control",
        "LLM step",
        "tool call",
        "session end",
        "final output",
        "session end",
    ]
    assert "gpt-4o" in lines[1] and "101 in / 11 out tokens" in lines[1]
    assert "by ops" in lines[3]
    all_text = texts(at.markdown)
    assert "session paused" in all_text and "session resumed" in all_text
    assert [c.value for c in at.code if c.value == "user: what is 1 + 2?"]
    assert [c.value for c in at.code if c.value == "The answer is 3."]

    at.segmented_control(key="trace_filter_s-trace").set_value("Tool calls").run()
    kinds = [line.split("**")[1] for line in _entries(at)]
    assert kinds == [
        "tool call",
        "session control",
        "session control",
        "tool call",
        "session end",
        "session end",
    ]
    at.segmented_control(key="trace_filter_s-trace").set_value("Reasoning").run()
    kinds = [line.split("**")[1] for line in _entries(at)]
    assert "tool call" not in kinds and kinds.count("LLM step") == 2


def test_the_header_says_how_the_session_ended(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(root, None, monkeypatch), "session", session="s-raise")
    assert not at.exception
    caption = [c for c in texts(at.caption) if c.startswith("Ended")]
    assert len(caption) == 1 and "the session's code raised RuntimeError" in caption[0]
    header = next(t for t in texts(at.markdown) if "tags" in t)
    assert "nightly" in header and "release" in header


def test_the_sessions_list_filters_by_tag(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(root, None, monkeypatch), "sessions")
    assert not at.exception
    frame = table(at, "sessions_table_").value
    assert sorted(frame["session_id"]) == ["s-ok", "s-raise", "s-trace"]
    at.multiselect(key="sessions_tags").set_value(["nightly"]).run()
    frame = table(at, "sessions_table_").value
    assert sorted(frame["session_id"]) == ["s-ok", "s-raise"]
    assert [list(t) for t in frame["tags"]] == [["nightly", "release"]] * 2
