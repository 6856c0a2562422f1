"""Dashboard: the Sessions list (filters, paging, bulk control) and the Session detail page
(header, actions, inspection, tree, tokens, Pause / Resume / Cancel) over data landed
through the real exporter."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from dashboard_support import (
    BRANCH,
    FAILED,
    HOTFIX,
    RELEASE,
    TESTS,
    TRIAGE,
    Seeded,
    app_test,
    goto,
    links,
    seed,
    select_rows,
    table,
    table_with,
    texts,
)

from tooltrail.collector.writer import ParquetSpanWriter
from tooltrail.control import ControlStore
from tooltrail.schema import empty_row


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """One seeded directory for the tests that only read."""
    return seed(tmp_path_factory.mktemp("dash") / "data")


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


def _sessions(at: Any) -> Any:
    return table(at, "sessions_table_").value


def _ids(at: Any) -> list[str]:
    return list(_sessions(at)["session_id"])


def _git_status(trace_id: str, span_id: str, session_id: str, agent: str) -> dict[str, Any]:
    """One allowed ``git_status`` call landing now, outside the seeded sessions."""
    row = empty_row()
    now = dt.datetime.now(dt.UTC)
    row.update(
        trace_id=trace_id,
        span_id=span_id,
        span_type="tool",
        name="execute_tool git_status",
        start_time=now,
        end_time=now,
        session_id=session_id,
        agent_name=agent,
        tool_name="git_status",
        decision="ALLOW",
        status_code="OK",
    )
    return row


def _state(seeded: Seeded, session_id: str) -> str:
    with ControlStore(seeded.root) as store:
        return store.session_state(session_id)


# --- the list ------------------------------------------------------------------------------


def test_sessions_are_listed_most_recent_first_with_their_aggregates(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    assert not at.exception
    assert any(f"**{shared.expected.sessions}** sessions" in m for m in texts(at.markdown))
    frame = _sessions(at)
    assert len(frame) == shared.expected.sessions
    assert list(frame["session_id"][:3]) == [TRIAGE, BRANCH, HOTFIX]
    release = frame.set_index("session_id").loc[RELEASE]
    assert (release["agent_name"], release["action_count"]) == ("release-bot", 7)
    assert (release["allows"], release["denies"], release["rewrites"], release["approvals"]) == (
        3,
        1,
        2,
        1,
    )
    assert list(release["status"]) == ["completed"]
    assert list(release["max_blast_radius"]) == ["Critical"]
    assert sorted(release["repos"]) == ["/srv/release/payments", "/srv/repos/payments"]
    assert list(frame.set_index("session_id").loc[HOTFIX, "status"]) == ["waiting_approval"]


@pytest.mark.parametrize(
    ("widget", "value", "expected"),
    [
        ("sessions_status", "failed", {FAILED}),
        ("sessions_agent", "release-bot", {RELEASE, HOTFIX}),
        ("sessions_repo", "/srv/repos/web", {BRANCH, FAILED}),
        ("sessions_decision", "DENY", {RELEASE}),
        ("sessions_radius", "Critical", {RELEASE}),
        ("sessions_range", "Last 24 hours", {RELEASE, TESTS, TRIAGE, HOTFIX, BRANCH}),
    ],
)
def test_each_filter_changes_the_table(
    shared: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    widget: str,
    value: str,
    expected: set[str],
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    at.selectbox(key=widget).set_value(value).run()
    assert not at.exception
    assert set(_ids(at)) == expected
    assert any(f"**{len(expected)}** session" in m for m in texts(at.markdown))


def test_search_by_session_id_and_no_match(shared: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    at.text_input(key="sessions_search").input("7F3A").run()
    assert _ids(at) == [RELEASE]
    at.text_input(key="sessions_search").input("no-such-session").run()
    assert "No session matches these filters." in texts(at.info)


def test_paging_walks_every_session_once(shared: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    at.selectbox(key="sessions_size").set_value(10).run()
    pager = at.get("pagination")[0]
    seen = []
    for page in range(1, 5):
        pager.set_value(page).run()
        pager = at.get("pagination")[0]
        seen.extend(_ids(at))
    assert len(seen) == shared.expected.sessions == len(set(seen))
    assert len(_ids(at)) == 7  # the last page of 37 in tens
    assert any("showing 31–37" in m for m in texts(at.markdown))


def test_selecting_one_session_opens_it(shared: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    key = table(at, "sessions_table_").key
    position = _ids(at).index(RELEASE)
    select_rows(at, key, [position])
    at.button(key="sessions_open").click().run()
    assert texts(at.title) == [f"Session {RELEASE}"]
    assert at.query_params["session"] == RELEASE


def test_bulk_pause_then_only_common_actions_are_offered(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "sessions")
    at.sidebar.text_input(key="operator").input("carol").run()
    key = table(at, "sessions_table_").key
    ids = _ids(at)
    select_rows(at, key, [ids.index(TRIAGE), ids.index(HOTFIX)])
    assert {b.key for b in at.button} >= {"sessions-pause", "sessions-cancel"}
    assert "sessions_open" not in {b.key for b in at.button}  # several selected
    at.text_input(key="sessions-control-reason").input("incident 42")
    at.button(key="sessions-pause").click().run()
    assert (_state(seeded, TRIAGE), _state(seeded, HOTFIX)) == ("paused", "paused")
    with ControlStore(seeded.root) as store:
        (event,) = store.control_history(TRIAGE)
    assert (event.action, event.actor, event.reason) == ("pause", "carol", "incident 42")
    frame = _sessions(at).set_index("session_id")
    assert list(frame.loc[TRIAGE, "status"]) == ["paused"]

    # One paused and one running session: only Cancel is valid for both.
    key = table(at, "sessions_table_").key
    ids = _ids(at)
    select_rows(at, key, [ids.index(TRIAGE), ids.index(RELEASE)])
    offered = {b.key for b in at.button if b.key and b.key.startswith("sessions-")}
    assert offered == {"sessions-cancel"}


# --- one session ---------------------------------------------------------------------------


def test_session_detail_header_actions_and_inspection(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "session", session=RELEASE)
    assert not at.exception
    assert texts(at.title) == [f"Session {RELEASE}"]
    metrics = {m.label: m.value for m in at.metric}
    assert {k: metrics[k] for k in ("Actions", "Allowed", "Denied", "Rewritten", "Approvals")} == {
        "Actions": "7",
        "Allowed": "3",
        "Denied": "1",
        "Rewritten": "2",
        "Approvals": "1",
    }
    actions = table(at, f"actions_table_{RELEASE}").value
    assert list(actions["sequence"]) == [1, 2, 3, 4, 5, 6, 7]
    assert list(actions["tool_name"]) == [
        "git_status",
        "git_diff",
        "git_checkout",
        "git_add",
        "git_add",
        "git_commit",
        "git_log",
    ]
    assert [d[0] for d in actions["decision"]] == [
        "ALLOW",
        "ALLOW",
        "REWRITE",
        "ALLOW",
        "DENY",
        "REQUIRE_APPROVAL",
        "REWRITE",
    ]
    assert list(actions["blast_radius"].iloc[4]) == ["Critical"]
    assert actions["policy_rule"].iloc[4] == "no-secrets-staged"

    # Selecting the checkout row inspects it: the rewrite as a diff, the matched rule.
    select_rows(at, f"actions_table_{RELEASE}", [2])
    diff = [c.value for c in at.code if c.language == "diff"]
    assert len(diff) == 1
    assert '-  "branch_name": "main",' in diff[0]
    assert f'+  "branch_name": "agent/{RELEASE}",' in diff[0]
    changed = table_with(at, "argument", "before", "after")
    assert changed.to_dict("records") == [
        {"argument": "branch_name", "before": '"main"', "after": f'"agent/{RELEASE}"'}
    ]
    rules = [m for m in texts(at.markdown) if "checkout-default-branch" in m]
    assert any("verdict" in m and "Agents work on their own branch" in m for m in rules)

    # The held commit shows its approval record.
    at.selectbox(key=f"inspect_action_{RELEASE}").set_value(5).run()
    record = next(m for m in texts(at.markdown) if "apr-rel-0001" in m)
    assert "approved" in record and "alice" in record and "42.0 s" in record
    assert "release window" in record


def test_session_tree_links_parent_and_sub_agents_and_shows_tokens(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "session", session=RELEASE)
    labels = links(at)
    assert any(TESTS in label and "test-runner" in label for label in labels)
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Input tokens"], metrics["Output tokens"], metrics["LLM calls"]) == (
        "1,800",
        "420",
        "1",
    )
    usage = table_with(at, "model", "calls")
    assert usage.to_dict("records") == [
        {"model": "claude-sonnet-4", "calls": 1, "input_tokens": 1800, "output_tokens": 420}
    ]
    # From the sub-agent, the parent is a link and this session is marked.
    goto(at, "session", session=TESTS)
    assert any(RELEASE in label for label in links(at))
    assert any(f"**{TESTS}**" in m and "(this session)" in m for m in texts(at.markdown))


def test_pause_resume_cancel_write_the_store_and_show_the_history(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "session", session=TRIAGE)
    prefix = f"session-{TRIAGE}"
    # Never controlled: not shown as "running" (it may well have ended).
    assert any("**Session control** never paused or canceled" in m for m in texts(at.markdown))
    assert at.button(key=f"{prefix}-pause").disabled  # no operator yet
    at.sidebar.text_input(key="operator").input("carol").run()
    at.text_input(key=f"{prefix}-control-reason").input("looks wrong")
    at.button(key=f"{prefix}-pause").click().run()
    assert _state(seeded, TRIAGE) == "paused"
    assert any(":orange-badge[paused]" in m for m in texts(at.markdown))
    assert any(
        m.startswith("**pause** by carol") and "looks wrong" in m for m in texts(at.markdown)
    )
    assert {b.key for b in at.button if b.key and b.key.startswith(prefix)} == {
        f"{prefix}-resume",
        f"{prefix}-cancel",
    }
    at.button(key=f"{prefix}-resume").click().run()
    assert _state(seeded, TRIAGE) == "running"
    at.button(key=f"{prefix}-cancel").click().run()
    assert _state(seeded, TRIAGE) == "canceled"
    assert not [b for b in at.button if b.key and b.key.startswith(prefix)]
    assert any(
        c == "No control action applies to this session: canceled is final."
        for c in texts(at.caption)
    )
    with ControlStore(seeded.root) as store:
        actions = [e.action for e in store.control_history(TRIAGE)]
    assert actions == ["pause", "resume", "cancel"]


def test_deep_link_from_the_root_url_opens_the_session(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = app_test(shared.root, shared.policy_path, monkeypatch)
    at.query_params["session"] = HOTFIX
    at.run()
    assert texts(at.title) == [f"Session {HOTFIX}"]


def test_unknown_session_and_picker(shared: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "session", session="nope")
    assert any("No session `nope`" in w for w in texts(at.warning))
    at.selectbox(key="session_pick").set_value(FAILED).run()
    assert texts(at.title) == [f"Session {FAILED}"]


def test_new_spans_show_up_on_the_next_run_despite_the_cache(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(seeded.root, seeded.policy_path, monkeypatch), "sessions")
    assert "sess-late" not in _ids(at)
    ParquetSpanWriter(seeded.root).write([_git_status("f" * 32, "e" * 16, "sess-late", "late-bot")])
    at.run()
    assert _ids(at)[0] == "sess-late"


def test_auto_refresh_toggle_keeps_the_page_and_offers_intervals(
    shared: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(app_test(shared.root, shared.policy_path, monkeypatch), "sessions")
    assert not [s for s in at.sidebar.selectbox if s.key == "refresh_every"]
    at.sidebar.toggle(key="auto_refresh").set_value(True).run()
    assert not at.exception
    every = at.sidebar.selectbox(key="refresh_every")
    assert (every.value, list(every.options)) == (
        10,
        ["5 seconds", "10 seconds", "30 seconds", "60 seconds"],
    )
    assert len(_ids(at)) == shared.expected.sessions  # the page itself is unchanged


def test_landed_values_are_shown_literally_not_as_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session ids and agent names come from agents: a link or an image in them must not
    render (an image would call out to its server from every viewer's browser)."""
    evil = "x](https://evil.example)![p](https://evil.example/p.png"
    root = tmp_path / "data"
    ParquetSpanWriter(root).write([_git_status("a" * 32, "b" * 16, evil, "**boss**")])
    at = goto(app_test(root, None, monkeypatch), "session", session=evil)
    (title,) = at.title
    assert "](" not in title.value.replace("\\]\\(", "")  # every bracket is escaped
    assert texts(at.title) == [f"Session {evil}"]
    assert any("\\*\\*boss\\*\\*" in m.value for m in at.markdown)
