"""Dashboard: sessions governed through the MCP gateway are told apart (Sessions list badge
and filter, the session page's header) and calls to a tool whose definition changed are
marked (session page, and the Overview's list of changed tools), over data landed through
the real exporter with the gateway's own attribute names and pins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dashboard_support import (
    CHANGED_TOOL,
    GATEWAY_CLIENT,
    GATEWAY_SERVER,
    GATEWAY_SESSION,
    RELEASE,
    Seeded,
    app_test,
    goto,
    seed,
    seed_with_gateway,
    table,
    table_with,
    texts,
)

from tooltrail.gateway.pins import PinStore


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seeded, str]:
    return seed_with_gateway(tmp_path_factory.mktemp("dash-gw") / "data")


def _sessions(at: Any) -> Any:
    return table(at, "sessions_table_").value.set_index("session_id")


def test_the_sessions_list_badges_gateway_sessions(
    shared: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, _ = shared
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "sessions")
    assert not at.exception
    frame = _sessions(at)
    assert list(frame.loc[GATEWAY_SESSION, "governed_by"]) == ["gateway"]
    assert frame.loc[GATEWAY_SESSION, "mcp_client_name"] == GATEWAY_CLIENT[0]
    assert list(frame.loc[RELEASE, "governed_by"]) == ["instrumentation"]
    assert len(frame) == seeded.expected.sessions + 1


@pytest.mark.parametrize(
    ("value", "expected"), [("gateway", 1), ("instrumentation", None), ("other", 0)]
)
def test_the_governed_by_filter(
    shared: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch, value: str, expected: int | None
) -> None:
    seeded, _ = shared
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "sessions")
    at.selectbox(key="sessions_governed").set_value(value).run()
    assert not at.exception
    if expected == 0:
        assert any("No session matches" in i.value for i in at.info)
        return
    frame = _sessions(at)
    if value == "gateway":
        assert list(frame.index) == [GATEWAY_SESSION]
    else:
        assert GATEWAY_SESSION not in frame.index
        assert len(frame) == seeded.expected.sessions
        assert all(list(g) == [value] for g in frame["governed_by"])


def test_the_session_page_says_through_the_gateway_and_marks_changed_tool_calls(
    shared: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, changed_hash = shared
    app = app_test(seeded.root, seeded.policy_path, monkeypatch)
    at = goto(app, "session", session=GATEWAY_SESSION)
    assert not at.exception
    name, version = GATEWAY_CLIENT
    assert any(f"through the gateway (client {name} {version})" in m for m in texts(at.markdown))
    assert any("2 calls to a tool whose definition changed" in w.value for w in at.warning)
    actions = table(at, f"actions_table_{GATEWAY_SESSION}").value
    marks = {
        (row["tool_name"], row["decision"][0]): list(row["tool_changed"])
        for _, row in actions.iterrows()
    }
    assert marks == {
        ("list_directory", "ALLOW"): [],
        (CHANGED_TOOL, "REQUIRE_APPROVAL"): ["changed"],
        (CHANGED_TOOL, "DENY"): ["changed"],
    }
    # inspecting a changed call names the definition the server serves now
    at.selectbox(key=f"inspect_action_{GATEWAY_SESSION}").set_value(1).run()
    assert not at.exception
    assert any(changed_hash in w.value for w in at.warning)
    # an instrumented session says so, and has no changed-tool warning
    at = goto(app, "session", session=RELEASE)
    assert any("instrumented in process" in m for m in texts(at.markdown))
    assert not any("definition changed" in w.value for w in at.warning)


def test_the_overview_lists_changed_tools_with_what_their_calls_got(
    shared: tuple[Seeded, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded, changed_hash = shared
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert not at.exception
    assert "Tool definitions changed" in [s.value for s in at.subheader]
    (row,) = table_with(at, "server", "tool", "got").to_dict("records")
    assert (row["server"], row["tool"], row["calls"]) == (GATEWAY_SERVER, CHANGED_TOOL, 2)
    assert row["got"] == "1 held for approval, 1 denied"
    assert row["definition_hash"] == changed_hash
    assert list(row["pin_status"]) == ["changed"]
    assert list(row["clients"]) == [GATEWAY_CLIENT[0]]


def test_an_accepted_change_reads_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded, _ = seed_with_gateway(tmp_path / "data")
    store = PinStore(seeded.root)
    try:
        (pin,) = [r for r in store.rows(GATEWAY_SERVER) if r.tool == CHANGED_TOOL]
        store.accept(GATEWAY_SERVER, CHANGED_TOOL, pin.changed_to or "")
    finally:
        store.close()
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert not at.exception
    (row,) = table_with(at, "server", "tool", "got").to_dict("records")
    assert list(row["pin_status"]) == ["accepted"]


def test_no_changed_tools_no_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = seed(tmp_path / "data", batch=2)
    at = app_test(seeded.root, seeded.policy_path, monkeypatch)
    assert not at.exception
    assert "Tool definitions changed" not in [s.value for s in at.subheader]
