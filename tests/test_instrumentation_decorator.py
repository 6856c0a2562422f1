"""``@tool`` on sync and async functions: spans, errors, never breaking the host, and
call-time enforcement (DENY / REWRITE / REQUIRE_APPROVAL through the broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from instrumentation_support import attrs, instrument, instrumented
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tooltrail.instrumentation as tt
from tooltrail.instrumentation import _prepare, _shorten
from tooltrail.instrumentation.broker import ApprovalOutcome, ApprovalRequest
from tooltrail.semconv import (
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    TT_APPROVAL_DECIDED_BY,
    TT_APPROVAL_ID,
    TT_APPROVAL_STATUS,
    TT_APPROVAL_WAIT_MS,
    TT_ARGUMENTS_REWRITTEN,
    TT_BLAST_RADIUS,
    TT_DECISION,
    TT_ENFORCED,
    TT_POLICY_MATCHED,
    TT_POLICY_RULE,
    TT_POLICY_VERSION,
    TT_SEQUENCE,
    TT_TARGET_BRANCH,
    TT_TARGET_REPO,
)

POLICY = textwrap.dedent(
    """
    version: 1
    default: ALLOW
    targets:
      - tools: ["deploy*"]
        repo: "{repo}"
        branch: "{branch}"
    blast_radius:
      - {tools: ["deploy*"], branch: ["main"], radius: Critical}
    rules:
      - id: no-prod
        when: {tool: deploy, args: {env: prod}}
        decision: DENY
        reason: Agents do not deploy to production
      - id: staging-instead
        when: {tool: deploy, args: {env: dev}}
        decision: REWRITE
        rewrite: {set: {env: staging}}
      - id: main-needs-a-human
        when: {tool: deploy, branch: ["main"]}
        decision: REQUIRE_APPROVAL
        approval: {timeout: 1m, on_timeout: DENY, approvers: ["*"]}
      - id: expiring-allows
        when: {tool: deploy, branch: ["release"]}
        decision: REQUIRE_APPROVAL
        approval: {timeout: 1s, on_timeout: ALLOW}
    """
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with instrumented(enforce=False) as exporter:
        yield exporter


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def enforce(spans: InMemorySpanExporter, policy: Any, **kwargs: Any) -> None:
    """Re-instrument with enforcement on, keeping the test's span exporter."""
    instrument(spans, enforce=True, policy=policy, **kwargs)


def only_span(spans: InMemorySpanExporter) -> ReadableSpan:
    """The one tool span (a session left records its end too: tooltrail.session.end)."""
    finished = [s for s in spans.get_finished_spans() if s.name != "tooltrail.session.end"]
    assert len(finished) == 1, [s.name for s in finished]
    return finished[0]


calls: list[tuple[str, str]] = []


@tt.tool
def deploy(repo: str, branch: str, env: str = "dev") -> str:
    calls.append((branch, env))
    return f"deployed {branch} to {env}"


@tt.tool(name="adeploy")
async def adeploy(repo: str, branch: str, env: str = "dev") -> dict[str, str]:
    await asyncio.sleep(0)
    calls.append((branch, env))
    return {"branch": branch, "env": env}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


# --- tracing ------------------------------------------------------------------------------


def test_sync_call_is_one_internal_span_with_named_arguments(
    spans: InMemorySpanExporter,
) -> None:
    assert deploy("/r", "feature", env="qa") == "deployed feature to qa"
    span = only_span(spans)
    assert span.name == "execute_tool deploy"
    assert span.kind is SpanKind.INTERNAL
    a = attrs(span)
    assert a[GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[GEN_AI_TOOL_NAME] == "deploy"
    assert json.loads(a[GEN_AI_TOOL_CALL_ARGUMENTS]) == {
        "repo": "/r",
        "branch": "feature",
        "env": "qa",
    }
    assert a[TT_SEQUENCE] >= 1
    assert TT_DECISION not in a  # not enforcing: the exporter decides after the fact
    assert span.status.status_code is StatusCode.UNSET
    assert calls == [("feature", "qa")]


def test_defaults_are_part_of_the_recorded_arguments(spans: InMemorySpanExporter) -> None:
    deploy("/r", "feature")
    assert json.loads(attrs(only_span(spans))[GEN_AI_TOOL_CALL_ARGUMENTS])["env"] == "dev"


def test_async_call_is_traced_and_returns(spans: InMemorySpanExporter) -> None:
    assert asyncio.run(adeploy("/r", "b")) == {"branch": "b", "env": "dev"}
    span = only_span(spans)
    assert span.name == "execute_tool adeploy"
    assert attrs(span)[GEN_AI_TOOL_NAME] == "adeploy"


def test_decorator_keeps_the_function_metadata() -> None:
    assert deploy.__name__ == "deploy"
    assert asyncio.iscoroutinefunction(adeploy)


def test_exception_is_recorded_and_reraised_once(spans: InMemorySpanExporter) -> None:
    attempts: list[int] = []

    @tt.tool
    def flaky(n: int) -> int:
        attempts.append(n)
        raise ValueError("bad n")

    with pytest.raises(ValueError, match="bad n"):
        flaky(3)
    assert attempts == [3]
    span = only_span(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert attrs(span)[ERROR_TYPE] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]


def test_span_is_current_inside_the_tool(spans: InMemorySpanExporter) -> None:
    from opentelemetry import trace

    seen: list[int] = []

    @tt.tool
    def inner() -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)

    inner()
    assert seen == [only_span(spans).context.span_id]


def test_methods_do_not_record_self(spans: InMemorySpanExporter) -> None:
    class Repo:
        @tt.tool
        def push(self, branch: str) -> str:
            return branch

    assert Repo().push("x") == "x"
    assert json.loads(attrs(only_span(spans))[GEN_AI_TOOL_CALL_ARGUMENTS]) == {"branch": "x"}


def test_var_keyword_arguments_are_spread(spans: InMemorySpanExporter) -> None:
    @tt.tool
    def run(*cmd: str, **options: Any) -> int:
        return len(cmd)

    assert run("git", "push", force=True) == 2
    recorded = json.loads(attrs(only_span(spans))[GEN_AI_TOOL_CALL_ARGUMENTS])
    assert recorded == {"cmd": ["git", "push"], "force": True}


@pytest.mark.parametrize("capture", [False, True])
def test_result_preview_is_opt_in_and_truncated(spans: InMemorySpanExporter, capture: bool) -> None:
    instrument(spans, capture_results=capture)

    @tt.tool
    def big() -> str:
        return "x" * 5000

    big()
    a = attrs(only_span(spans))
    if not capture:
        assert GEN_AI_TOOL_CALL_RESULT not in a
    else:
        preview = a[GEN_AI_TOOL_CALL_RESULT]
        assert len(preview) == _shorten.RESULT_PREVIEW_CHARS
        assert preview.endswith(_shorten.TRUNCATION_MARK)


# --- never break the host -----------------------------------------------------------------


def test_instrumentation_failure_runs_the_call_once_untraced(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("instrumentation bug")

    monkeypatch.setattr(_prepare, "current_session", broken)
    with caplog.at_level(logging.ERROR, logger="tooltrail.instrumentation"):
        assert deploy("/r", "feature") == "deployed feature to dev"
    assert calls == [("feature", "dev")]
    assert spans.get_finished_spans() == ()
    assert "instrumentation bug" in caplog.text


def test_failure_while_finishing_does_not_touch_the_result(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    instrument(spans, capture_results=True)

    def broken(value: Any, limit: int) -> str:
        raise RuntimeError("preview bug")

    monkeypatch.setattr("tooltrail.instrumentation.decorator.to_json", broken)
    assert asyncio.run(adeploy("/r", "b")) == {"branch": "b", "env": "dev"}
    assert calls == [("b", "dev")]


def test_instrumentation_failure_while_enforcing_fails_closed(
    spans: InMemorySpanExporter, policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enforce(spans, policy_file)

    def broken() -> None:
        raise RuntimeError("instrumentation bug")

    monkeypatch.setattr(_prepare, "current_session", broken)
    with pytest.raises(tt.ToolCallDenied) as info:
        deploy("/r", "feature")
    assert info.value.rule == "policy-error"
    assert "instrumentation bug" in info.value.reason
    assert calls == []


# --- enforcement ----------------------------------------------------------------------------


def test_deny_raises_before_the_function_runs(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    enforce(spans, policy_file)
    with tt.session(agent_name="deployer") as s, pytest.raises(tt.ToolCallDenied) as info:
        deploy("/r", "feature", env="prod")
    assert calls == []
    denied = info.value
    assert isinstance(denied, PermissionError)
    assert (denied.tool, denied.rule, denied.session_id) == ("deploy", "no-prod", s.session_id)
    assert denied.reason == "Agents do not deploy to production"
    span = only_span(spans)
    a = attrs(span)
    assert a[TT_DECISION] == "DENY"
    assert a[TT_POLICY_RULE] == "no-prod"
    assert list(a[TT_POLICY_MATCHED]) == ["no-prod"]
    assert a[TT_ENFORCED] is True
    assert a[TT_POLICY_VERSION]
    assert a[TT_TARGET_REPO] == "/r"
    assert a[TT_TARGET_BRANCH] == "feature"
    assert a[ERROR_TYPE] == "tool_call_denied"
    assert span.status.status_code is StatusCode.ERROR


def test_async_deny_raises_too(spans: InMemorySpanExporter, policy_file: Path) -> None:
    enforce(spans, policy_file)
    with pytest.raises(tt.ToolCallDenied, match="no-prod"):
        asyncio.run(adeploy_named_deploy("/r", "feature", env="prod"))
    assert calls == []


@tt.tool(name="deploy")
async def adeploy_named_deploy(repo: str, branch: str, env: str = "dev") -> str:
    calls.append((branch, env))
    return env


def test_rewrite_runs_with_the_rewritten_arguments_and_records_both(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    enforce(spans, policy_file)
    assert deploy("/r", "feature", "dev") == "deployed feature to staging"
    assert calls == [("feature", "staging")]
    a = attrs(only_span(spans))
    assert a[TT_DECISION] == "REWRITE"
    assert a[TT_POLICY_RULE] == "staging-instead"
    assert json.loads(a[GEN_AI_TOOL_CALL_ARGUMENTS])["env"] == "dev"
    assert json.loads(a[TT_ARGUMENTS_REWRITTEN])["env"] == "staging"


def test_allow_runs_and_is_stamped(spans: InMemorySpanExporter, policy_file: Path) -> None:
    enforce(spans, policy_file)
    deploy("/r", "feature", env="qa")
    a = attrs(only_span(spans))
    assert (a[TT_DECISION], a[TT_POLICY_RULE], a[TT_BLAST_RADIUS]) == ("ALLOW", "pass", "Low")
    assert calls == [("feature", "qa")]


def test_require_approval_without_a_broker_fails_closed(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    enforce(spans, policy_file)
    with pytest.raises(tt.ToolCallDenied) as info:
        deploy("/r", "main", env="qa")
    assert calls == []
    assert info.value.reason == "approval required"
    assert info.value.decision == "REQUIRE_APPROVAL"
    assert info.value.rule == "main-needs-a-human"
    a = attrs(only_span(spans))
    assert a[TT_DECISION] == "REQUIRE_APPROVAL"
    assert a[TT_BLAST_RADIUS] == "Critical"
    assert a[TT_APPROVAL_STATUS] == "denied"
    assert a[TT_APPROVAL_DECIDED_BY] == "tooltrail:no-broker"


class ScriptedBroker:
    """A broker that answers from a script and records what it was asked."""

    def __init__(self, answer: Callable[[ApprovalRequest], ApprovalOutcome]) -> None:
        self.answer = answer
        self.requests: list[ApprovalRequest] = []

    def request(self, request: ApprovalRequest) -> ApprovalOutcome:
        self.requests.append(request)
        return self.answer(request)

    async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
        await asyncio.sleep(0)
        return self.request(request)


def test_approved_call_runs_with_the_arguments_shown(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    broker = ScriptedBroker(
        lambda r: ApprovalOutcome("approved", approval_id="ap-1", decided_by="alice", wait_ms=42.0)
    )
    enforce(spans, policy_file, broker=broker)
    with tt.session(agent_name="deployer") as s:
        assert deploy("/r", "main", env="qa") == "deployed main to qa"
    assert calls == [("main", "qa")]
    (req,) = broker.requests
    assert (req.tool, req.rule, req.session_id, req.agent_name) == (
        "deploy",
        "main-needs-a-human",
        s.session_id,
        "deployer",
    )
    assert dict(req.arguments) == {"repo": "/r", "branch": "main", "env": "qa"}
    assert req.approval is not None and req.approval.timeout_s == 60
    assert req.expires_at == pytest.approx(req.requested_at + 60)
    span = only_span(spans)
    assert req.span_id == format(span.context.span_id, "016x")
    a = attrs(span)
    assert (a[TT_APPROVAL_STATUS], a[TT_APPROVAL_ID], a[TT_APPROVAL_DECIDED_BY]) == (
        "approved",
        "ap-1",
        "alice",
    )
    assert a[TT_APPROVAL_WAIT_MS] == 42.0
    assert span.status.status_code is StatusCode.UNSET


def test_async_approval_waits_on_the_async_broker(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    broker = ScriptedBroker(lambda r: ApprovalOutcome("denied", decided_by="bob", reason="no"))
    enforce(spans, policy_file, broker=broker)
    with pytest.raises(tt.ToolCallDenied) as info:
        asyncio.run(adeploy_named_deploy("/r", "main"))
    assert calls == []
    assert info.value.reason == "approval denied by bob: no"
    assert info.value.approval_status == "denied"
    # What the MCP caller's JSON says, the exception carries as attributes too.
    a = attrs(only_span(spans))
    assert (info.value.approval_decided_by, info.value.approval_id) == (
        "bob",
        a.get(TT_APPROVAL_ID),
    )
    assert info.value.blast_radius == a[TT_BLAST_RADIUS] is not None


def test_expiry_applies_on_timeout(spans: InMemorySpanExporter, policy_file: Path) -> None:
    broker = ScriptedBroker(lambda r: ApprovalOutcome("expired"))
    enforce(spans, policy_file, broker=broker)
    with pytest.raises(tt.ToolCallDenied, match="expired"):
        deploy("/r", "main")  # main-needs-a-human: on_timeout DENY
    deploy("/r", "release")  # expiring-allows: on_timeout ALLOW
    assert calls == [("release", "dev")]


def test_broken_broker_is_a_denial(spans: InMemorySpanExporter, policy_file: Path) -> None:
    def explode(r: ApprovalRequest) -> ApprovalOutcome:
        raise ConnectionError("store down")

    enforce(spans, policy_file, broker=ScriptedBroker(explode))
    with pytest.raises(tt.ToolCallDenied):
        deploy("/r", "main")
    assert calls == []


def test_unloadable_policy_denies_everything(
    spans: InMemorySpanExporter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: x\n    decision: MAYBE\n")
    with caplog.at_level(logging.ERROR, logger="tooltrail.instrumentation"):
        enforce(spans, bad)
    assert "bad.yaml" in caplog.text
    with pytest.raises(tt.ToolCallDenied) as info:
        deploy("/r", "feature", env="qa")
    assert info.value.rule == "policy-error"
    assert "bad.yaml" in info.value.reason
    assert attrs(only_span(spans))[TT_DECISION] == "DENY"
    assert calls == []


def test_enforcing_without_any_policy_denies(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOOLTRAIL_POLICY", raising=False)
    enforce(spans, None)
    with pytest.raises(tt.ToolCallDenied, match="no policy"):
        deploy("/r", "feature", env="qa")
    assert calls == []


def test_a_policy_that_raises_fails_closed(
    spans: InMemorySpanExporter, policy_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tooltrail.policy import load_policy

    policy = load_policy(policy_file)

    def explode(call: Any) -> Any:
        raise KeyError("engine bug")

    monkeypatch.setattr(type(policy), "decide", lambda self, call: explode(call))
    enforce(spans, policy)
    with pytest.raises(tt.ToolCallDenied) as info:
        deploy("/r", "feature", env="qa")
    assert info.value.rule == "policy-error"
    assert "engine bug" in info.value.reason
    assert calls == []


def test_rewrite_naming_an_unknown_parameter_is_refused(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nrules:\n  - id: add-flag\n    when: {tool: deploy}\n"
        "    decision: REWRITE\n    rewrite: {set: {force: true}}\n"
    )
    enforce(spans, path)
    with pytest.raises(tt.ToolCallDenied, match="force"):
        deploy("/r", "feature")
    assert calls == []


def test_cancelled_while_held_ends_the_span_and_never_runs(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    class Forever:
        def request(self, request: ApprovalRequest) -> ApprovalOutcome:
            raise AssertionError("async callers use arequest")

        async def arequest(self, request: ApprovalRequest) -> ApprovalOutcome:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    enforce(spans, policy_file, broker=Forever())

    async def main() -> None:
        task = asyncio.create_task(adeploy_named_deploy("/r", "main"))
        await asyncio.sleep(0.01)
        assert not task.done()  # held, and the event loop is free
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert calls == []
    span = only_span(spans)
    assert attrs(span)[ERROR_TYPE] == "CancelledError"
    assert span.end_time is not None


REMOVE_POLICY = (
    "version: 1\nrules:\n  - id: no-force\n    when: {tool: [push, push_any, tag]}\n"
    "    decision: REWRITE\n    rewrite: {remove: [force]}\n"
)


def test_rewrite_remove_really_removes_the_argument(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    seen: list[dict[str, Any]] = []

    @tt.tool
    def push(branch: str, force: bool = False) -> str:
        seen.append({"branch": branch, "force": force})
        return "ok"

    @tt.tool
    def push_any(branch: str, **extra: Any) -> str:
        seen.append({"branch": branch, **extra})
        return "ok"

    path = tmp_path / "p.yaml"
    path.write_text(REMOVE_POLICY)
    enforce(spans, path)
    push("main", force=True)
    push("main", True)
    push_any("main", force=True, note="x")
    assert seen == [
        {"branch": "main", "force": False},
        {"branch": "main", "force": False},
        {"branch": "main", "note": "x"},
    ]
    recorded = [
        json.loads(str(s.attributes[TT_ARGUMENTS_REWRITTEN])) for s in spans.get_finished_spans()
    ]  # type: ignore[index]
    assert all("force" not in r for r in recorded)


def test_rewrite_removing_a_required_argument_is_refused(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    ran: list[bool] = []

    @tt.tool
    def tag(name: str, force: bool) -> str:
        ran.append(force)
        return name

    path = tmp_path / "p.yaml"
    path.write_text(REMOVE_POLICY)
    enforce(spans, path)
    with pytest.raises(tt.ToolCallDenied, match="requires"):
        tag("v1", True)
    assert ran == []


def test_an_object_with_async_call_gets_the_async_wrapper(spans: InMemorySpanExporter) -> None:
    class Deployer:
        async def __call__(self, service: str) -> str:
            await asyncio.sleep(0.05)
            return f"deployed {service}"

    wrapped = tt.tool(name="deploy_service")(Deployer())
    assert asyncio.run(wrapped("api")) == "deployed api"
    (span,) = spans.get_finished_spans()
    assert span.name == "execute_tool deploy_service"
    assert span.end_time is not None and span.start_time is not None
    assert span.end_time - span.start_time >= 40_000_000  # the span covers the awaited work


# --- oversized arguments, landed -------------------------------------------------------------

BIG_POLICY = textwrap.dedent(
    """
    version: 1
    rules:
      - id: deploy-prod
        when: {tool: release, args: {env: prod}}
        decision: DENY
    """
)


@tt.tool
def release(service: str, env: str = "dev", notes: str = "") -> str:
    calls.append(("release", env))
    return service


@pytest.mark.parametrize("enforcing", [False, True])
def test_oversized_arguments_land_as_an_object_and_are_decided_on_them(
    tmp_path: Path, enforcing: bool
) -> None:
    # The notes push the arguments past MAX_ARGUMENTS_CHARS: the landed arguments must
    # still be an object, so the exporter's after-the-fact decision and a replay of the
    # producing policy see env=prod (they judged an empty object before).
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tooltrail import analytics
    from tooltrail.collector.exporter import TooltrailSpanExporter
    from tooltrail.policy import load_policy
    from tooltrail.policy.replay import replay

    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(BIG_POLICY)
    data = tmp_path / "data"
    exporter = TooltrailSpanExporter(data_dir=data, policy=policy_path, buffer_rows=0)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = tt.McpInstrumentor()
    instrumentor.instrument(tracer_provider=provider, enforce=enforcing, policy=policy_path)
    try:
        with tt.session(session_id="big"):
            if enforcing:
                with pytest.raises(tt.ToolCallDenied):
                    release("api", env="prod", notes="n" * 70_000)
            else:
                release("api", env="prod", notes="n" * 70_000)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert calls == ([] if enforcing else [("release", "prod")])
    con = analytics.connect(data)
    try:
        got = con.execute(
            "SELECT decision, policy_rule, enforced, json_type(arguments),"
            " arguments->>'env', length(arguments->>'notes') FROM actions"
        ).fetchall()
    finally:
        con.close()
    assert len(got) == 1
    decision, rule, was_enforced, kind, env, notes_chars = got[0]
    assert (decision, rule, was_enforced) == ("DENY", "deploy-prod", enforcing)
    assert (kind, env) == ("OBJECT", "prod")
    assert 1000 < notes_chars < _shorten.MAX_ARGUMENTS_CHARS
    report = replay(load_policy(policy_path), data, since_s=None)
    assert (report.actions, report.changed) == (1, 0)


def test_generator_functions_are_refused_at_decoration() -> None:
    # Their body runs while the caller iterates, after the call returned: a span (and a
    # decision) around the call would cover none of the work.
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    async def anumbers(n: int) -> Any:
        for i in range(n):
            yield i

    for fn in (numbers, anumbers):
        with pytest.raises(TypeError, match=r"generator function.*after the call returned"):
            tt.tool(fn)
        with pytest.raises(TypeError, match="generator function"):
            tt.tool(name="streamed")(fn)


# --- policy redactions reach the result preview and the error message ---------------------

SCRUB_POLICY = textwrap.dedent(
    """
    version: 1
    rules:
      - id: scrub
        when: {tool: "login*"}
        decision: REWRITE
        rewrite: {redact: [pin, {regex: "SEKRIT[0-9]+"}]}
      - id: hold
        when: {tool: "login*"}
        decision: REQUIRE_APPROVAL
    """
)


def test_a_held_call_that_runs_with_the_secret_records_no_secret(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    """REQUIRE_APPROVAL outranks the redacting REWRITE: the tool runs with the real pin,
    so its result and its error quote it; the span must not."""
    from tooltrail.semconv import TT_REDACTIONS

    policy = tmp_path / "scrub.yaml"
    policy.write_text(SCRUB_POLICY)
    broker = ScriptedBroker(lambda r: ApprovalOutcome("approved", approval_id="ap-1"))
    enforce(spans, policy, broker=broker, capture_results=True)

    @tt.tool
    def login(user: str, pin: str, path: str = "/home/SEKRIT42/x") -> str:
        return f"logged in {user} with pin {pin} at {path}"

    @tt.tool
    def login_fails(user: str, pin: str, path: str = "/home/SEKRIT42/x") -> str:
        raise ValueError(f"bad pin {pin} at {path}")

    assert login("bob", "9876") == "logged in bob with pin 9876 at /home/SEKRIT42/x"
    with pytest.raises(ValueError, match="bad pin 9876"):
        login_fails("bob", "9876")
    ok, failed = spans.get_finished_spans()
    a = attrs(ok)
    assert a[TT_DECISION] == "REQUIRE_APPROVAL"
    assert a[GEN_AI_TOOL_CALL_RESULT] == "logged in bob with pin [REDACTED] at /home/[REDACTED]/x"
    assert a[TT_REDACTIONS] == 2 + 2  # the arguments, then the result
    assert failed.status.description == "ValueError: bad pin [REDACTED] at /home/[REDACTED]/x"
    (event,) = failed.events
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "bad pin [REDACTED] at /home/[REDACTED]/x"
    assert event.attributes["exception.type"] == "ValueError"
    for span in (ok, failed):
        recorded = json.dumps(
            [attrs(span), span.status.description, [dict(e.attributes or {}) for e in span.events]]
        )
        assert "9876" not in recorded and "SEKRIT" not in recorded


def test_without_a_redacting_rule_results_and_errors_are_recorded_as_they_are(
    spans: InMemorySpanExporter, policy_file: Path
) -> None:
    enforce(spans, policy_file, capture_results=True)

    @tt.tool
    def echo(text: str) -> str:
        raise ValueError(f"echo {text}")

    with pytest.raises(ValueError):
        echo("SEKRIT42")
    span = only_span(spans)
    assert span.status.description == "ValueError: echo SEKRIT42"
    assert span.events[0].attributes is not None
    assert "SEKRIT42" in str(span.events[0].attributes["exception.stacktrace"])


_OBSERVE_ONLY_AGENT = """
import sys
import tooltrail.instrumentation as tt

tt.configure(data_dir=sys.argv[1], policy=sys.argv[2], enforce=False, capture_results=True)


@tt.tool
def login(user, pin, path="/home/SEKRIT42/x"):
    return f"logged in {user} with pin {pin}"


@tt.tool
def login_fails(user, pin, path="/home/SEKRIT42/x"):
    raise ValueError(f"bad pin {pin}")


login("bob", "9876")
try:
    login_fails("bob", "9876")
except ValueError:
    pass
"""


def test_observe_only_redactions_reach_every_landed_column(tmp_path: Path) -> None:
    """The security review's reproducer: the exporter decides after the fact, and no
    column of the landed actions may keep the pin or a SEKRIT<digits>."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from tooltrail.cli import cli

    policy = tmp_path / "scrub.yaml"
    policy.write_text(
        'version: 1\nrules:\n  - id: scrub\n    when: {tool: "login*"}\n'
        '    decision: REWRITE\n    rewrite: {redact: [pin, {regex: "SEKRIT[0-9]+"}]}\n'
    )
    agent = tmp_path / "agent.py"
    agent.write_text(_OBSERVE_ONLY_AGENT)
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(agent), str(data), str(policy)], check=True, timeout=120)
    sql = (
        "select tool_name, arguments, action_summary, result_preview, status_message,"
        " target_repo, target_branch, target_path, redactions from actions order by tool_name"
    )
    result = CliRunner().invoke(cli, ["query", "--data", str(data), "--format", "json", sql])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["tool_name"] for r in rows] == ["login", "login_fails"]
    ok, failed = rows
    assert ok["action_summary"] == "login path=/home/[REDACTED]/x"
    assert ok["result_preview"] == "logged in bob with pin [REDACTED]"
    assert failed["status_message"] == "ValueError: bad pin [REDACTED]"
    assert "9876" not in result.output and "SEKRIT" not in result.output
