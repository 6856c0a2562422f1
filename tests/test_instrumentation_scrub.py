"""Scrubbing where values enter the span: what other exporters on the provider receive,
what the policy and the tool still see, and how the redactions are counted (once).

Every test runs the real SDK provider with the tooltrail exporter landing Parquet and the
SDK's in-memory exporter side by side, as an application fanning out to a second backend
would have it."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from secret_shapes import GITHUB_TOKEN, PASSWORD, SHAPES, URL_PASSWORD

import tooltrail.instrumentation as tt
import tooltrail.redact as redact
from tooltrail.collector.exporter import TooltrailSpanExporter
from tooltrail.instrumentation import _settings
from tooltrail.redact import Redactor
from tooltrail.semconv import (
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    TT_ARGUMENTS_REWRITTEN,
    TT_DECISION,
    TT_REDACTIONS,
    TT_SESSION_ID,
)

POLICY = """
version: 1
default: ALLOW
rules:
  - id: no-bot-token
    when: {tool: push, args: {token: {regex: "^ghp_"}}}
    decision: DENY
    reason: bot tokens may not push
  - id: staging-only
    when: {tool: deploy}
    decision: REWRITE
    rewrite: {set: {stage: staging}}
"""


@dataclass
class Agent:
    memory: InMemorySpanExporter
    data: Path
    provider: TracerProvider

    def spans(self) -> list[ReadableSpan]:
        return [s for s in self.memory.get_finished_spans() if s.name.startswith("execute_tool")]

    def everything(self) -> str:
        """All that the second exporter received, as text."""
        return "\n".join(s.to_json() for s in self.memory.get_finished_spans())

    def landed(self) -> list[dict[str, Any]]:
        self.provider.force_flush()
        con = duckdb.connect()
        try:
            cur = con.execute(
                "SELECT * FROM read_parquet(?, hive_partitioning=true) ORDER BY start_time",
                [str(self.data / "spans" / "date=*" / "*.parquet")],
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        finally:
            con.close()


def _agent(tmp_path: Path, **settings: Any) -> Iterator[Agent]:
    data = tmp_path / "data"
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TooltrailSpanExporter(data_dir=data)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = tt.McpInstrumentor()
    instrumentor.instrument(tracer_provider=provider, data_dir=data, **settings)
    try:
        yield Agent(memory, data, provider)
    finally:
        instrumentor.uninstrument()
        _settings.reset()
        provider.shutdown()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    yield from _agent(tmp_path, policy=policy, enforce=True, capture_results=True)


def test_the_policy_decides_on_the_real_token_and_the_record_holds_none(agent: Agent) -> None:
    ran: list[dict[str, Any]] = []

    @tt.tool
    def push(branch: str, token: str) -> str:
        ran.append({"branch": branch, "token": token})
        return "pushed"

    @tt.tool
    def deploy(stage: str, password: str) -> str:
        ran.append({"stage": stage, "password": password})
        return "deployed"

    with pytest.raises(tt.ToolCallDenied) as denied:
        push("main", GITHUB_TOKEN)  # the DENY rule matches the real value
    assert denied.value.rule == "no-bot-token"
    assert push("main", "not-a-bot-token") == "pushed"
    deploy("prod", PASSWORD)
    # The tools got the caller's values (and the rewrite's): only the record is scrubbed.
    assert ran == [
        {"branch": "main", "token": "not-a-bot-token"},
        {"stage": "staging", "password": PASSWORD},
    ]
    denied_span, _, rewritten = agent.spans()
    assert denied_span.attributes[TT_DECISION] == "DENY"
    assert json.loads(str(denied_span.attributes[GEN_AI_TOOL_CALL_ARGUMENTS])) == {
        "branch": "main",
        "token": "[REDACTED:key]",
    }
    assert json.loads(str(rewritten.attributes[TT_ARGUMENTS_REWRITTEN])) == {
        "stage": "staging",
        "password": "[REDACTED:key]",
    }
    text = agent.everything()
    assert GITHUB_TOKEN not in text and PASSWORD not in text


def test_results_and_errors_are_scrubbed_and_counted_once(agent: Agent) -> None:
    @tt.tool
    def login(user: str, password: str) -> str:
        # Quotes the credential-named value (no known shape) and a GitHub token.
        return f"logged in {user} with {password}; token {GITHUB_TOKEN}"

    @tt.tool
    def clone(remote: str) -> None:
        raise RuntimeError(f"cannot reach {remote}")

    login("alice", PASSWORD)
    with pytest.raises(RuntimeError):
        clone(f"https://bot:{URL_PASSWORD}@git.example.com/a.git")
    ok, failed = agent.spans()
    assert ok.attributes[GEN_AI_TOOL_CALL_RESULT] == (
        "logged in alice with [REDACTED]; token [REDACTED:github_token]"
    )
    # password (argument) + password and token (result)
    assert ok.attributes[TT_REDACTIONS] == 3
    assert failed.status.description == (
        "RuntimeError: cannot reach https://bot:[REDACTED:url_password]@git.example.com/a.git"
    )
    (event,) = failed.events
    assert URL_PASSWORD not in json.dumps(dict(event.attributes or {}))
    # The argument and the status message; the exception event does not land.
    assert failed.attributes[TT_REDACTIONS] == 2
    text = agent.everything()
    assert PASSWORD not in text and GITHUB_TOKEN not in text and URL_PASSWORD not in text
    # The exporter, receiving scrubbed values, lands the same count: not one more.
    rows = agent.landed()
    assert [r["redactions"] for r in rows] == [3, 2]
    assert all(PASSWORD not in json.dumps(r, default=str) for r in rows)


def test_session_fields_are_scrubbed_alike_everywhere(agent: Agent) -> None:
    @tt.tool
    def noop() -> None:
        return None

    raw = f"nightly-{GITHUB_TOKEN}"
    with tt.session(session_id=raw, agent_name="bot"):
        noop()
    (span,) = agent.spans()
    assert span.attributes[TT_SESSION_ID] == "nightly-[REDACTED:github_token]"
    assert GITHUB_TOKEN not in agent.everything()
    row, end = sorted(agent.landed(), key=lambda r: r["span_type"] != "tool")
    assert row["session_id"] == end["session_id"] == "nightly-[REDACTED:github_token]"
    assert end["name"] == "tooltrail.session.end"  # the session's end, scrubbed alike
    assert row["redactions"] == 3  # session.id, gen_ai.conversation.id, tooltrail.session.id


def test_redaction_off_records_values_as_they_are(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TOOLTRAIL_REDACT", "0")
    for agent in _agent(tmp_path, enforce=False):

        @tt.tool
        def login(password: str) -> None:
            return None

        login(PASSWORD)
        (span,) = agent.spans()
        assert PASSWORD in str(span.attributes[GEN_AI_TOOL_CALL_ARGUMENTS])
        assert TT_REDACTIONS not in (span.attributes or {})


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in [k, *_texts(v)]]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_a_scrubbed_value_is_a_fixed_point(shape: Any) -> None:
    """What the instrumentation records, the exporter scrubs again at landing: it must
    neither change nor count it a second time (the redactions column counts once), and the
    control store's session key must be the same from the raw and the landed id."""
    red = Redactor()
    document = json.dumps(shape.arguments)
    for text in [document, *_texts(shape.arguments), f"x {document} y"]:
        once, n = redact.scrub_stable(red.scrub_text, text)
        assert red.scrub_text(once) == (once, 0), text
    obj, n = redact.scrub_stable(red.scrub_obj, shape.arguments)
    assert n > 0 and red.scrub_obj(obj) == (obj, 0)
    as_json = json.dumps(obj)
    assert red.scrub_json(as_json)[1] == 0


@pytest.mark.parametrize(
    "text",
    [
        f'{{"password": "{PASSWORD}", "cut": "…',  # a JSON result cut short: plain text
        f"password: '{PASSWORD}'",
        f"https://bot:{URL_PASSWORD}@git.example.com/a.git",
    ],
    ids=["json-cut-short", "quoted-key", "url-password"],
)
def test_a_marker_is_not_counted_again(text: str) -> None:
    red = Redactor()
    once, n = red.scrub_text(text)
    assert n == 1
    assert red.scrub_text(once) == (once, 0)


class _LeakyBroker:
    """A broker whose failure quotes the arguments it could not file."""

    def request(self, request: Any) -> Any:
        raise RuntimeError(f"cannot file {dict(request.arguments)}")

    async def arequest(self, request: Any) -> Any:
        return self.request(request)


def test_logged_errors_are_scrubbed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndefault: ALLOW\nrules:\n"
        "  - {id: hold, when: {tool: publish}, decision: REQUIRE_APPROVAL}\n"
    )
    for agent in _agent(tmp_path, policy=policy, enforce=True, broker=_LeakyBroker()):

        @tt.tool
        def publish(note: str) -> None:
            return None

        with caplog.at_level("DEBUG", logger="tooltrail"), pytest.raises(tt.ToolCallDenied):
            publish(f"use {GITHUB_TOKEN}")
        assert "approval broker failed" in caplog.text  # the error was logged...
        assert GITHUB_TOKEN not in caplog.text  # ...scrubbed, traceback included
        assert GITHUB_TOKEN not in agent.everything()


@contextlib.contextmanager
def _root_handler() -> Iterator[io.StringIO]:
    """A real handler on the root logger, as a host application has one: what it writes."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


def test_every_tooltrail_loggers_records_are_scrubbed_before_a_handler_sees_them() -> None:
    """A child logger's records never pass its parent's filters: the HTTP broker's logger
    (``tooltrail.instrumentation.http_broker``) and any other ``tooltrail.*`` logger are
    scrubbed all the same, message and traceback, and the host's own records are not
    touched."""
    import tooltrail.instrumentation.http_broker as http_broker

    loggers = [
        http_broker._log,
        logging.getLogger("tooltrail.instrumentation.http_broker"),
        logging.getLogger("tooltrail.collector.made_later"),
        logging.getLogger("tooltrail"),
    ]
    with _root_handler() as out:
        for log in loggers:
            log.warning("tooltrail: approval poll failed: %s", f"Bearer {GITHUB_TOKEN}")
            try:
                raise RuntimeError(f"the collector said no to {GITHUB_TOKEN}")
            except RuntimeError:
                log.exception("tooltrail: approval refused")
        logging.getLogger("hostapp").warning("its own record: %s", GITHUB_TOKEN)
    written = out.getvalue()
    ours = [line for line in written.splitlines() if not line.startswith("hostapp ")]
    assert all(GITHUB_TOKEN not in line for line in ours), written
    assert len([line for line in ours if "approval poll failed" in line]) == len(loggers)
    assert len([line for line in ours if line.startswith("RuntimeError: ")]) == len(loggers)
    assert "[REDACTED" in written
    assert f"hostapp WARNING its own record: {GITHUB_TOKEN}" in written


def test_a_status_set_by_the_tool_on_our_span_is_scrubbed(agent: Agent) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import StatusCode

    @tt.tool
    def lookup(name: str) -> str:
        # Tool code annotating the current span (ours), as the MCP SDK does with a
        # server's error message.
        trace.get_current_span().set_status(StatusCode.ERROR, f"auth failed for {GITHUB_TOKEN}")
        return "none"

    lookup("x")
    (span,) = agent.spans()
    assert span.status.description == "auth failed for [REDACTED:github_token]"
    assert GITHUB_TOKEN not in agent.everything()
    (row,) = agent.landed()
    assert row["status_message"] == "auth failed for [REDACTED:github_token]"
    assert row["redactions"] == 1
