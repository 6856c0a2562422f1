"""Signed webhooks delivered to a real HTTP receiver on loopback (issue 17, "Live").

The receiver is a stdlib HTTP server in the test that checks ``Tooltrail-Signature`` the
way docs/EVENTS.md tells receivers to (HMAC-SHA256 over "<t>.<body>", timestamp fresh).
Events come from the real stores and the real exporter; the deliverer retries with
backoff, records each delivery, and an agent never waits on a receiver.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collect_support import wait_until
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from webhook_support import Receiver

from tooltrail import semconv as sc
from tooltrail.cli import cli
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.control import ApprovalRequest, ControlStore
from tooltrail.gateway.pins import PinStore
from tooltrail.webhooks import Deliverer, WebhookStore

BIN = Path(sys.executable).parent


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def land_action(data: Path, decision: str, radius: str, session: str = "s-1") -> None:
    """One tool span through the real SDK and the real exporter."""
    provider = TracerProvider()
    exporter = TooltrailSpanExporter(data)
    attrs = {
        sc.GEN_AI_OPERATION_NAME: sc.OP_EXECUTE_TOOL,
        sc.GEN_AI_TOOL_NAME: "git_reset",
        sc.TT_SESSION_ID: session,
        sc.GEN_AI_AGENT_NAME: "bot-a",
        sc.TT_DECISION: decision,
        sc.TT_BLAST_RADIUS: radius,
    }
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("execute_tool", attributes=attrs):
        pass
    provider.shutdown()


def test_each_topic_is_delivered_signed_and_recorded(tmp_path: Path, receiver: Receiver) -> None:
    data = tmp_path / "data"
    with WebhookStore(data) as store:
        hook, secret = store.add(receiver.url)
        _, slack_secret = store.add(receiver.url, ["session.paused"], slack=True)
    receiver.secrets += [secret, slack_secret]
    deliverer = Deliverer(data, poll_s=0.05)
    deliverer.start()
    try:
        with ControlStore(data) as control:
            asked = control.file_request(
                ApprovalRequest("git_push", {"remote": "x"}, session_id="s-1")
            )
            control.decide(asked.approval_id, "approved", "alice")
            control.set_session_state("s-1", "pause", "olga")
            control.set_session_state("s-1", "resume", "olga")  # no topic
            control.set_session_state("s-1", "cancel", "olga")
        pins = PinStore(data)
        pins.observe("git", [{"name": "push", "description": "a"}])  # first pin: no topic
        pins.observe("git", [{"name": "push", "description": "b"}])
        pins.close()
        land_action(data, "DENY", "High")
        land_action(data, "DENY", "Low")  # not high: no topic
        land_action(data, "ALLOW", "Critical")  # not a deny: no topic
        wanted = [
            "approval.requested",
            "approval.decided",
            "session.paused",
            "session.canceled",
            "tool.changed",
            "deny.high",
        ]
        wait_until(lambda: len(receiver.received) >= len(wanted) + 1, what="seven deliveries")
        time.sleep(0.5)
    finally:
        deliverer.close()
    assert receiver.bad_signatures == 0
    slack_docs = [d for d in receiver.received if "text" in d]
    assert [d["text"] for d in slack_docs] == [
        "[tooltrail] session.paused: session paused by olga (session s-1)"
    ]
    assert sorted(d["topic"] for d in receiver.received if "topic" in d) == sorted(wanted)
    deny = next(d for d in receiver.received if d.get("topic") == "deny.high")["event"]
    assert (deny["decision"], deny["blast_radius"], deny["session"]) == ("DENY", "High", "s-1")
    with WebhookStore(data) as store:
        rows = store.deliveries(hook.hook_id)
    assert len(rows) == 6 and {(r["status"], r["attempts"]) for r in rows} == {("delivered", 1)}


def test_a_failing_receiver_is_retried_with_backoff_then_given_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    flaky = Receiver(statuses=(500, 503))
    try:
        with WebhookStore(data) as store:
            ok_hook, secret = store.add(flaky.url, ["session.paused"])
            flaky.secrets.append(secret)
            # A port nobody listens on: refused at once, every time.
            with socket_closed_port() as port:
                dead, _ = store.add(f"http://127.0.0.1:{port}/x", ["session.paused"], slack=True)
        deliverer = Deliverer(data, poll_s=0.05, backoff_s=0.2, max_attempts=3)
        deliverer.start()
        try:
            with ControlStore(data) as control:
                control.set_session_state("s-1", "pause", "olga")

            def settled() -> bool:
                with WebhookStore(data) as store:
                    rows = store.deliveries()
                    return len(rows) == 2 and all(r["status"] != "pending" for r in rows)

            started = time.monotonic()
            wait_until(settled, what="both deliveries settled")
            took = time.monotonic() - started
        finally:
            deliverer.close()
        with WebhookStore(data) as store:
            good = store.deliveries(ok_hook.hook_id)[0]
            bad = store.deliveries(dead.hook_id)[0]
        assert (good["status"], good["attempts"], good["last_code"]) == ("delivered", 3, 200)
        assert (bad["status"], bad["attempts"]) == ("failed", 3)
        assert "Connection refused" in bad["last_error"]
        assert took >= 0.2 + 0.4  # the backoff doubled between attempts
        assert len(flaky.received) == 1
    finally:
        flaky.close()


class socket_closed_port:
    """A loopback port that was just bound and released (nothing listens on it)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = int(s.getsockname()[1])
        s.close()
        return self.port

    def __exit__(self, *exc: object) -> None:
        pass


AGENT = """
import sys, time
import tooltrail.instrumentation as tt

tt.configure(data_dir=sys.argv[1], policy=sys.argv[2], enforce=True, agent_name="bot")

@tt.tool
def git_reset(repo_path: str) -> str:
    return repo_path

slowest = 0.0
with tt.session(session_id="s-1"):
    for i in range(20):
        start = time.perf_counter()
        try:
            git_reset("/src/app")
        except Exception:
            pass
        slowest = max(slowest, time.perf_counter() - start)
print(slowest)
"""

POLICY = """
version: 1
name: deny-resets
default: ALLOW
blast_radius:
  - {tools: [git_reset], radius: High}
rules:
  - id: no-reset
    when: {tool: git_reset}
    decision: DENY
    reason: no resets
"""


def test_a_receiver_that_never_answers_never_slows_an_agent(tmp_path: Path) -> None:
    data = tmp_path / "data"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    hanging = Receiver(hang=True)
    try:
        with WebhookStore(data) as store:
            store.add(hanging.url, ["deny.high"])
        runner = subprocess.Popen(
            [str(BIN / "tooltrail"), "webhooks", "run", "--data", str(data), "--poll", "0.05"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert runner.stderr is not None
            assert "delivering webhooks" in runner.stderr.readline()
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(AGENT), str(data), str(policy)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            agent_s = time.monotonic() - started
            assert done.returncode == 0, done.stderr
            slowest_call = float(done.stdout.split()[-1])

            def attempted() -> bool:
                with WebhookStore(data) as store:
                    return len(store.deliveries()) == 20

            wait_until(attempted, what="20 deliveries queued")
            wait_until(lambda: hanging.hits >= 1, what="a delivery held by the receiver")
        finally:
            runner.send_signal(signal.SIGTERM)
            hanging.released.set()
            runner.wait(timeout=30)
            runner.stderr.close()  # type: ignore[union-attr]
        # Twenty DENY High calls, each a delivery to a receiver that holds every request
        # for 30 s (the deliverer gives up on each after 5 s): the agent never waits on one.
        assert slowest_call < 1.0, slowest_call
        assert agent_s < 20, agent_s
        assert runner.returncode == 0
    finally:
        hanging.close()


def test_cli_add_list_remove_and_deliveries(tmp_path: Path) -> None:
    from click.testing import CliRunner

    data = str(tmp_path / "data")
    runner = CliRunner()
    added = runner.invoke(
        cli,
        [
            "webhooks",
            "add",
            "https://hooks.example.com/x",
            "--data",
            data,
            "--events",
            "approval.requested,deny.high",
            "--slack",
        ],
    )
    assert added.exit_code == 0, added.output
    secret = added.stdout.splitlines()[-1]
    assert secret.startswith("whsec_") and len(secret) > 40
    listed = runner.invoke(cli, ["webhooks", "list", "--data", data, "--format", "json"])
    (hook,) = json.loads(listed.stdout)
    assert hook["topics"] == ["approval.requested", "deny.high"] and hook["slack"] is True
    assert secret not in listed.stdout  # shown once, at add
    bad = runner.invoke(cli, ["webhooks", "add", "ftp://x", "--data", data])
    assert bad.exit_code == 2 and "http" in bad.stderr
    bad = runner.invoke(cli, ["webhooks", "add", "https://x", "--events", "nope", "--data", data])
    assert bad.exit_code == 2 and "'nope'" in bad.stderr
    gone = runner.invoke(cli, ["webhooks", "remove", hook["hook_id"], "--data", data])
    assert gone.exit_code == 0
    again = runner.invoke(cli, ["webhooks", "remove", hook["hook_id"], "--data", data])
    assert again.exit_code == 2 and hook["hook_id"] in again.stderr
    shown = runner.invoke(cli, ["webhooks", "deliveries", "--data", data, "--format", "json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout) == []


def test_the_documented_receiver_check_runs_and_accepts_our_signatures() -> None:
    from tooltrail.webhooks import sign, verify

    doc = (Path(__file__).resolve().parents[1] / "docs" / "EVENTS.md").read_text()
    (example,) = [
        block.split("```", 1)[0] for block in doc.split("```python\n")[1:] if "def verify" in block
    ]
    namespace: dict[str, Any] = {}
    exec(compile(example, "docs/EVENTS.md", "exec"), namespace)  # its own asserts run
    body = b'{"topic": "tool.changed", "event": {}}'
    header = sign("whsec_x", body, int(time.time()))
    assert namespace["verify"]("whsec_x", header, body)
    assert not namespace["verify"]("whsec_y", header, body)
    assert verify("whsec_x", header, body) and not verify("whsec_x", header, body + b"!")
    old = sign("whsec_x", body, int(time.time()) - 600)
    assert not verify("whsec_x", old, body)


def test_a_claimed_deny_pages_no_one_a_verified_one_does() -> None:
    """Provenance: a DENY an unauthenticated OTLP sender claims (verified false) is not
    tooltrail's decision, so deny.high does not fire for it."""
    from tooltrail.events import Event
    from tooltrail.webhooks import topic_of

    def deny(verified: bool | None) -> Event:
        detail = {"blast_radius": "Critical", "verified": verified}
        return Event(
            kind="action",
            time=0.0,
            session="s",
            agent="a",
            decision="DENY",
            summary="x",
            detail=detail,
        )

    assert topic_of(deny(True)) == "deny.high"
    assert topic_of(deny(None)) == "deny.high"  # landed before provenance: as before
    assert topic_of(deny(False)) is None
