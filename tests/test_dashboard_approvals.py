"""Dashboard: the Overview and Approvals pages over data landed through the real exporter,
and approving / denying through them writing the real control store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dashboard_support import (
    APPROVED,
    DENIED,
    EXPIRED,
    HOTFIX,
    PENDING_ANYONE,
    PENDING_MANAGERS,
    Seeded,
    app_test,
    chart_data,
    goto,
    links,
    seed,
    select_rows,
    table,
    table_with,
    texts,
)

from tooltrail.control import ControlStore


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return seed(tmp_path / "data")


def _app(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> Any:
    return app_test(seeded.root, seeded.policy_path, monkeypatch)


def _metrics(at: Any) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _status(seeded: Seeded, approval_id: str) -> tuple[str, str | None, str | None]:
    with ControlStore(seeded.root) as store:
        record = store.get(approval_id)
    return record.status, record.decided_by, record.decision_reason


def test_overview_shows_kpis_decisions_and_the_oldest_pending_first(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(seeded, monkeypatch)
    assert not at.exception
    exp = seeded.expected
    assert _metrics(at) == {
        "Active sessions": str(exp.active),
        "Actions": str(exp.actions_24h),
        "Denied": str(exp.denies_24h),
        "Rewritten": str(exp.rewrites_24h),
        "Pending approvals": str(exp.pending),
    }
    assert any("2 pending approvals" in m for m in texts(at.sidebar.markdown))
    cards = [c for c in texts(at.caption) if c.startswith("rule ")]
    # oldest first: the hotfix commit was requested 20 minutes ago, the branch 12
    assert [PENDING_ANYONE in cards[0], PENDING_MANAGERS in cards[1]] == [True, True]
    assert "Release repositories change under supervision" in cards[0]
    assert links(at)[:1] == [f"Session {HOTFIX}"]
    assert len(at.get("vega_lite_chart")) == 2  # decisions over time, blast mix
    decided = chart_data(at, 0).groupby("decision")["actions"].sum().to_dict()
    assert decided == {"ALLOW": 11, "DENY": 1, "REWRITE": 2, "REQUIRE_APPROVAL": 1}
    mix = chart_data(at, 1).set_index("radius")["actions"].to_dict()
    # Low: 3 release + 2 tests + 2 triage + 2 hotfix + 1 branch; Medium: add, commit, branch
    assert mix == {"Low": 10, "Medium": 3, "High": 1, "Critical": 1}

    at.selectbox(key="overview_range").set_value("All time").run()
    assert _metrics(at)["Actions"] == str(exp.sessions + 12)  # 49 actions in all
    assert _metrics(at)["Denied"] == "1"


def test_deciding_needs_the_operators_name(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(seeded, monkeypatch)
    approve = at.button(key=f"overview-approve-{PENDING_ANYONE}")
    assert approve.disabled
    assert "Enter your name" in str(approve.help)
    # A click that reaches the callback after the name was cleared records nothing.
    at.sidebar.text_input(key="operator").input("alice").run()
    at.sidebar.text_input(key="operator").input("  ")
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert _status(seeded, PENDING_ANYONE) == ("pending", None, None)
    assert any("Enter your name" in e for e in texts(at.error))


def test_approve_on_the_overview_writes_the_store_and_the_page_shows_it(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(seeded, monkeypatch)
    at.sidebar.text_input(key="operator").input("alice").run()
    at.text_input(key=f"overview-reason-{PENDING_ANYONE}").input("hotfix is fine")
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert _status(seeded, PENDING_ANYONE) == ("approved", "alice", "hotfix is fine")
    assert f"Approved {PENDING_ANYONE} as alice" in texts(at.toast)
    assert _metrics(at)["Pending approvals"] == "1"
    assert any("1 pending approval" in m for m in texts(at.sidebar.markdown))
    assert not [b for b in at.button if b.key == f"overview-approve-{PENDING_ANYONE}"]
    # The history shows the decision with who made it.
    goto(at, "approvals")
    history = table_with(at, "decided_by", "wait_s")
    row = history[history["approval_id"] == PENDING_ANYONE].iloc[0]
    assert (list(row["outcome"]), row["decided_by"]) == (["approved"], "alice")


def test_only_listed_approvers_may_decide(seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(seeded, monkeypatch)
    at.sidebar.text_input(key="operator").input("alice").run()
    deny = at.button(key=f"overview-deny-{PENDING_MANAGERS}")
    assert deny.disabled and "Only dana, lee may decide" in str(deny.help)
    assert not at.button(key=f"overview-deny-{PENDING_ANYONE}").disabled

    at.sidebar.text_input(key="operator").input("dana").run()
    at.text_input(key=f"overview-reason-{PENDING_MANAGERS}").input("branch from develop")
    at.button(key=f"overview-deny-{PENDING_MANAGERS}").click().run()
    assert _status(seeded, PENDING_MANAGERS) == ("denied", "dana", "branch from develop")


def test_a_request_decided_elsewhere_meanwhile_is_reported_not_overwritten(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = _app(seeded, monkeypatch)
    at.sidebar.text_input(key="operator").input("alice").run()
    with ControlStore(seeded.root) as store:  # someone on the CLI is faster
        store.decide(PENDING_ANYONE, "denied", "bob", "no")
    at.button(key=f"overview-approve-{PENDING_ANYONE}").click().run()
    assert _status(seeded, PENDING_ANYONE) == ("denied", "bob", "no")
    assert any("already denied by bob" in e for e in texts(at.error))


def test_approvals_page_lists_pending_history_and_statistics(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(_app(seeded, monkeypatch), "approvals")
    assert not at.exception
    pending = table(at, "pending_table").value
    assert list(pending["approval_id"]) == [PENDING_ANYONE, PENDING_MANAGERS]
    assert list(pending["approvers"].map(list)) == [["*"], ["dana", "lee"]]
    assert "git_commit repo=/srv/release/payments" in pending["summary"].iloc[0]

    history = table_with(at, "decided_by", "wait_s").set_index("approval_id")
    assert list(history.index) == [PENDING_MANAGERS, PENDING_ANYONE, APPROVED, EXPIRED, DENIED]
    assert list(history.loc[APPROVED, "outcome"]) == ["approved"]
    assert history.loc[APPROVED, "decided_by"] == "alice"
    assert history.loc[APPROVED, "wait_s"] == pytest.approx(42.0)
    assert history.loc[DENIED, "reason"] == "not during the freeze"
    assert bool(history.loc[EXPIRED, "expired"]) and not bool(history.loc[DENIED, "expired"])

    at.segmented_control(key="approvals_out").set_value("expired").run()
    assert list(table_with(at, "decided_by", "wait_s")["approval_id"]) == [EXPIRED]

    by_rule = table_with(at, "rule", "requests").set_index("rule")
    release = by_rule.loc["release-repos-need-approval"]
    assert (release["requests"], release["approved"], release["expired"]) == (3, 1, 1)
    assert release["pending"] == 1
    by_approver = table_with(at, "approver", "requests").set_index("approver")
    assert by_approver.loc["alice", "approved"] == 1
    assert by_approver.loc["dana", "denied"] == 1


def test_bulk_decisions_are_offered_only_when_valid_for_every_selected_request(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = goto(_app(seeded, monkeypatch), "approvals")
    at.sidebar.text_input(key="operator").input("alice").run()
    select_rows(at, "pending_table", [0, 1])
    assert not [b for b in at.button if b.key == "approvals-bulk-deny"]
    assert any("Only dana, lee may decide" in c for c in texts(at.caption))

    at.sidebar.text_input(key="operator").input("dana").run()
    at.text_input(key="approvals-bulk-reason").input("freeze")
    at.button(key="approvals-bulk-deny").click().run()
    assert _status(seeded, PENDING_ANYONE) == ("denied", "dana", "freeze")
    assert _status(seeded, PENDING_MANAGERS) == ("denied", "dana", "freeze")
    assert "Nothing is waiting for a decision." in texts(at.caption)


def test_a_span_citing_a_pending_request_for_another_call_cannot_decide_it(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from conftest import _make_row

    from tooltrail.collector.writer import ParquetSpanWriter
    from tooltrail.control import ApprovalRequest

    with ControlStore(seeded.root) as store:
        real = store.file_request(
            ApprovalRequest(
                tool_name="git_push",
                arguments={"force": True},
                session_id="sess-ok",
                span_id="1" * 16,
                timeout_s=3600,
            )
        ).approval_id
    # Another agent's span claims the request was filed for its own reset --hard.
    copy = _make_row(
        decision="REQUIRE_APPROVAL",
        tool_name="git_reset_hard",
        session_id="sess-other",
        span_id="2" * 16,
        approval_id=real,
        approval_status="pending",
        start_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
    )
    ParquetSpanWriter(seeded.root).write([copy])
    at = _app(seeded, monkeypatch)
    assert not at.exception  # the Overview lists both without a clash
    at.sidebar.text_input(key="operator").input("alice").run()
    at = goto(at, "approvals")
    assert not at.exception
    # Its card is its own, and it cannot approve the request it cites.
    fake = at.button(key=f"approvals-approve-span-{'2' * 16}")
    assert fake.disabled and "not in the control store" in str(fake.help)
    at.button(key=f"approvals-approve-{real}").click().run()  # the real one can
    assert _status(seeded, real)[:2] == ("approved", "alice")


def test_a_request_whose_agent_is_gone_shows_so_and_offers_no_approve(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A real agent process files a request and dies; the card that offered Approve while
    it waited says it is gone (no buttons), and a click from a page loaded before is
    refused, not recorded as approved."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tooltrail.control import ApprovalRequest, ControlStore\n"
        "with ControlStore(sys.argv[1]) as store:\n"
        "    rec = store.file_request(ApprovalRequest(tool_name='git_push',"
        " arguments={'force': True}, session_id='s-gone', agent_name='push-bot',"
        " timeout_s=600, lease_s=60))\n"
        "print(rec.approval_id, flush=True)\n"
        "sys.stdin.read()\n"  # waits (alive) until told to go
    )
    agent = subprocess.Popen(
        [sys.executable, "-c", script, str(seeded.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        approval_id = agent.stdout.readline().strip()
        at = goto(_app(seeded, monkeypatch), "approvals")
        at.sidebar.text_input(key="operator").input("alice").run()
        assert not at.button(key=f"approvals-approve-{approval_id}").disabled
        agent.kill()
        agent.wait(timeout=30)
        at.button(key=f"approvals-approve-{approval_id}").click().run()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=30)
    assert _status(seeded, approval_id)[0] == "abandoned"
    assert any("abandoned" in e and "never ran" in e for e in texts(at.error))
    at.run()
    assert not at.exception
    keys = {b.key for b in at.button}
    assert f"approvals-approve-{approval_id}" not in keys
    assert f"approvals-gone-approve-{approval_id}" not in keys
    gone = [w for w in texts(at.warning) if "Agent gone" in w]
    assert gone and "has exited" in gone[0]
    assert approval_id not in list(table(at, "pending_table").value["approval_id"])
    history = table_with(at, "decided_by", "wait_s").set_index("approval_id")
    assert list(history.loc[approval_id, "outcome"]) == ["abandoned"]
