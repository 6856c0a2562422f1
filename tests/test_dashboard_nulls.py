"""Dashboard over data from another instrumentation: tool spans without an agent name, a
repository or a decision (one without a tool name), an LLM call without a model, landed
through the real exporter beside the tooltrail-seeded sessions. Every page renders; a
null group is named ("(unknown agent)"), and no table, chart or text shows "None"."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import pytest
from dashboard_support import (
    FOREIGN_TOOL,
    Seeded,
    app_test,
    chart_data,
    goto,
    seed_with_foreign,
    table,
    table_with,
    texts,
)

from tooltrail.dashboard.page_blast_radius import CHART_GROUPS

GROUPS = {"agent": "(unknown agent)", "tool": "(unknown tool)", "repo": "(no repository)"}
_NONE = re.compile(r"\bNone\b")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seeded, str]:
    return seed_with_foreign(tmp_path_factory.mktemp("dash-nulls") / "data")


def _assert_readable(at: Any, where: str) -> None:
    """No exception, no error, and nothing a reader sees says "None"."""
    assert not at.exception, (where, [e.value for e in at.exception])
    assert not at.error, (where, texts(at.error))
    shown = [
        *texts(at.markdown),
        *texts(at.caption),
        *texts(at.get("title")),
        *(str(m.value) for m in at.metric),
        *(str(s.value) for s in at.selectbox if s.value is not None),  # None: placeholder
    ]
    assert not [t for t in shown if _NONE.search(t)], (where, [t for t in shown if "None" in t])
    for frame in at.dataframe:
        # A missing cell shows the placeholder (Streamlit's default is the word "None").
        assert frame.proto.placeholder in ("–", "NULL"), (where, frame.proto.placeholder)
        cells = frame.value.astype(str)
        assert not cells.isin(["None"]).any().any(), (where, list(frame.value.columns))
    for i, _ in enumerate(at.get("vega_lite_chart")):
        data = chart_data(at, i)
        for column in data.columns:  # text a tooltip or an axis shows is never null
            if data[column].dtype == object or pd.api.types.is_string_dtype(data[column]):
                assert data[column].notna().all(), (where, column)


def test_every_page_renders_null_groups_with_a_label(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, session_id = foreign
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    for page in ("overview", "sessions", "approvals", "policy", "sql"):
        goto(at, page)
        _assert_readable(at, page)

    goto(at, "blast_radius")
    at.selectbox(key="blast_range").set_value("All time").run()
    for by, label in GROUPS.items():
        at.segmented_control(key="blast_by").set_value(by).run()
        _assert_readable(at, f"blast radius by {by}")
        groups = list(table_with(at, by, "critical")[by])
        assert label in groups, by
        if len(groups) <= CHART_GROUPS:  # else it may be summed into "others"
            assert label in set(chart_data(at, 0)[by]), by
    at.segmented_control(key="blast_by").set_value("day").run()
    _assert_readable(at, "blast radius by day")

    goto(at, "session", session=session_id)
    _assert_readable(at, "session detail")
    actions = table(at, f"actions_table_{session_id}").value
    assert set(actions["tool_name"].explode()) >= {FOREIGN_TOOL, "(unknown tool)"}
    timeline = chart_data(at, 0)
    assert "(unknown tool)" in set(timeline["tool_name"])
    models = table_with(at, "model", "calls")
    assert list(models["model"]) == ["(unknown model)"]
    picked = at.selectbox(key=f"inspect_action_{session_id}")
    picked.set_value(1).run()  # the call without a tool name
    _assert_readable(at, "inspected action")
    assert any("(unknown tool)" in m for m in texts(at.markdown))

    goto(at, "sessions")
    sessions = table(at, "sessions_table").value.set_index("session_id")
    assert sessions.loc[session_id, "agent_name"] == "(unknown agent)"

    goto(at, "session")  # the picker lists the foreign session
    assert any(session_id in str(o) for o in at.selectbox(key="session_pick").options)
    _assert_readable(at, "session picker")


def test_sql_shows_null_as_null(
    foreign: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = foreign
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "sql")
    at.text_area(key="sql_text").input("SELECT agent_name FROM actions WHERE agent_name IS NULL")
    at.button(key="sql_run").click().run()
    result = table_with(at, "agent_name")
    assert result["agent_name"].isna().all() and len(result) > 0
    assert at.dataframe[0].proto.placeholder == "NULL"
