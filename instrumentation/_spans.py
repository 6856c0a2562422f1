"""The tool span and call-time enforcement, shared by the MCP client and ``@tool`` paths.

A tool call goes through three steps, and only ours are guarded:

1. Session control first (when a session gate is set up): a paused session's call waits
   here, before its span starts, until the session is resumed or canceled; a canceled
   session's call is denied (rule ``session-canceled``, reason "session canceled").
   ``begin``: number the action in its session, ask the policy (when enforcing), start the
   span with every attribute known up front. ``ask_approval`` / ``aask_approval`` then hand
   a REQUIRE_APPROVAL call to the broker; when it may proceed, its arguments are checked
   against the request's hash (changed while held: refused) and session control is checked
   again (the session may have been paused or canceled meanwhile).
2. The caller runs the wrapped call itself, exactly once, with the span current.
3. ``finish_result`` / ``finish_exception`` / ``finish_denied`` stamp the outcome and end
   the span. They never raise.

If our code fails in step 1 the call goes ahead untraced, except when enforcing: then a
failure to decide denies the call (rule ``policy-error``), and a session-control store that
cannot be read denies it too (rule ``session-control-error``). Settings (tracer, policy,
broker, result capture) live in one immutable ``Settings`` swapped whole by ``install``,
so a call always sees one consistent set; the policy is loaded once per ``install``.

One file past 600 lines for now: the call lifecycle, session control, approvals and JSON
shortening share the Settings and Invocation types; issue 15 splits it along those lines
as the gateway takes the span making into use.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

from tooltrail._json import compact_encoder
from tooltrail.config import (
    ENV_CAPTURE_RESULTS,
    ENV_COLLECTOR_TOKEN,
    ENV_COLLECTOR_URL,
    ENV_DATA,
    ENV_ENFORCE,
    ENV_POLICY,
    ENV_SESSION_CONTROL,
    env_flag,
)
from tooltrail.control import CANCELED, PAUSED, SESSION_CANCELED
from tooltrail.errors import TooltrailError
from tooltrail.instrumentation._scrub import Scrub, clean_scrub, scrub_start
from tooltrail.instrumentation._session import Session, current_session
from tooltrail.instrumentation.broker import (
    APPROVAL_REQUIRED_REASON,
    BROKER_ERROR,
    NO_BROKER,
    SYSTEM_ACTOR_PREFIX,
    ApprovalBroker,
    ApprovalOutcome,
    ApprovalRequest,
    default_broker,
)
from tooltrail.instrumentation.processor import backlog
from tooltrail.instrumentation.version import __version__
from tooltrail.redact import Redactor
from tooltrail.semconv import (
    ERROR_TYPE,
    ERROR_TYPE_TOOL_ERROR,
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    OP_EXECUTE_TOOL,
    SESSION_ID,
    TRUNCATION_MARK,
    TT_APPROVAL_DECIDED_BY,
    TT_APPROVAL_ID,
    TT_APPROVAL_STATUS,
    TT_APPROVAL_WAIT_MS,
    TT_ARGUMENTS_REWRITTEN,
    TT_BLAST_RADIUS,
    TT_DECISION,
    TT_ENFORCED,
    TT_PARENT_SESSION_ID,
    TT_POLICY_MATCHED,
    TT_POLICY_REASON,
    TT_POLICY_RULE,
    TT_POLICY_VERSION,
    TT_REDACTIONS,
    TT_SEQUENCE,
    TT_SESSION_ID,
    TT_TARGET_BRANCH,
    TT_TARGET_PATH,
    TT_TARGET_REPO,
    TT_TOOL_ANNOTATIONS,
    TT_TRIGGER,
    VERDICT_SESSION_CANCELED,
    VERDICT_SESSION_CONTROL_ERROR,
)

if TYPE_CHECKING:
    from tooltrail.policy import ApprovalSettings, Policy, ToolCall

_log = logging.getLogger("tooltrail.instrumentation")

# GenAI tool attributes and mcp.* names are in semconv 1.39.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.39.0"
# Arguments are the audit record, so they are kept whole up to a size that cannot swamp
# the export queue; the result is only a preview.
MAX_ARGUMENTS_CHARS: Final = 65_536
RESULT_PREVIEW_CHARS: Final = 1_024
ERROR_TYPE_DENIED: Final = "tool_call_denied"
POLICY_ERROR_RULE: Final = "policy-error"
SESSION_CANCELED_RULE: Final = VERDICT_SESSION_CANCELED
SESSION_CONTROL_ERROR_RULE: Final = VERDICT_SESSION_CONTROL_ERROR
ARGUMENTS_CHANGED_REASON: Final = (
    "the arguments changed after the approval request was made; what was approved is not"
    " what would run"
)
DENY: Final = "DENY"
REWRITE: Final = "REWRITE"
REQUIRE_APPROVAL: Final = "REQUIRE_APPROVAL"
_SCOPE_TOOL: Final = "tooltrail.instrumentation.decorator"
_SCOPE_MCP: Final = "tooltrail.instrumentation.mcp"


class ToolCallDenied(PermissionError, TooltrailError):
    """A tool call tooltrail refused: denied by policy, or held for an approval that
    was not given. The tool did not run.

    Attributes:
        tool: the tool's name.
        rule: the policy rule that decided (``policy-error`` when the policy failed).
        reason: why, in words an agent can act on.
        session_id: the session the call belonged to.
        decision: the policy's decision (``DENY`` or ``REQUIRE_APPROVAL``).
        approval_status: for held calls, how the approval ended.
        blast_radius: the call's blast radius (``Low`` … ``Critical``), None if unrated.
        approval_id: for held calls, the approval request's id (None if none was filed).
        approval_decided_by: for held calls, who approved or denied (None if nobody did).
    """

    def __init__(
        self,
        tool: str,
        rule: str,
        reason: str,
        session_id: str,
        decision: str = DENY,
        approval_status: str | None = None,
        *,
        blast_radius: str | None = None,
        approval_id: str | None = None,
        approval_decided_by: str | None = None,
    ) -> None:
        super().__init__(f"tool call {tool!r} denied by rule {rule!r}: {reason}")
        self.tool = tool
        self.rule = rule
        self.reason = reason
        self.session_id = session_id
        self.decision = decision
        self.approval_status = approval_status
        self.blast_radius = blast_radius
        self.approval_id = approval_id
        self.approval_decided_by = approval_decided_by


class DecisionLike(Protocol):
    """What the instrumentation reads from a ``tooltrail.policy.Decision``."""

    @property
    def decision(self) -> str: ...
    @property
    def policy_rule(self) -> str: ...
    @property
    def policy_matched(self) -> tuple[str, ...]: ...
    @property
    def policy_version(self) -> str: ...
    @property
    def blast_radius(self) -> str: ...
    @property
    def target_repo(self) -> str | None: ...
    @property
    def target_branch(self) -> str | None: ...
    @property
    def target_path(self) -> str | None: ...
    @property
    def arguments(self) -> Mapping[str, Any]: ...
    @property
    def arguments_rewritten(self) -> Mapping[str, Any] | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def approval(self) -> ApprovalSettings | None: ...


@dataclass(frozen=True, slots=True)
class _LocalDenial:
    """The fail-closed decision when even ``tooltrail.policy`` cannot produce one."""

    reason: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    decision: str = DENY
    policy_rule: str = POLICY_ERROR_RULE
    policy_matched: tuple[str, ...] = ()
    policy_version: str = ""
    blast_radius: str = "Low"
    target_repo: str | None = None
    target_branch: str | None = None
    target_path: str | None = None
    arguments_rewritten: Mapping[str, Any] | None = None
    approval: ApprovalSettings | None = None
    redactions: int = 0


Decide = Callable[
    [str, Mapping[str, Any], Session, "str | None", "Mapping[str, Any] | None"], DecisionLike
]


class SessionGate(Protocol):
    """Where session control (pause / resume / cancel) is read: ``StoreSessionGate``, or
    ``HttpSessionGate`` for remote agents. A gate that asks over the network may also have
    ``async astate(session_id)``, which async callers use instead of ``state``."""

    def state(self, session_id: str) -> str:
        """``running``, ``paused`` or ``canceled``."""
        ...

    def wait_while_paused(self, session_id: str) -> str:
        """Block until not paused; the state then (``running`` or ``canceled``)."""
        ...

    async def await_while_paused(self, session_id: str) -> str:
        """``wait_while_paused`` without blocking the event loop."""
        ...


@dataclass(frozen=True, slots=True)
class _Veto:
    """Session control refuses a call whatever the policy says."""

    rule: str
    reason: str


_CANCELED: Final = _Veto(SESSION_CANCELED_RULE, SESSION_CANCELED)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a tool call needs to know about how tooltrail is set up."""

    tool_tracer: Tracer
    mcp_tracer: Tracer
    enforce: bool
    decide: Decide
    broker: ApprovalBroker
    capture_results: bool
    policy: Policy | None = None
    policy_version: str | None = None
    policy_error: str | None = None
    session_gate: SessionGate | None = None
    data_dir: Path | None = None
    # Scrubs what spans record as it is set (None: ``$TOOLTRAIL_REDACT`` turned it off).
    redactor: Redactor | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused call, as the caller is told about it."""

    tool: str
    decision: str
    rule: str
    reason: str
    session_id: str
    blast_radius: str
    approval: ApprovalOutcome | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The structured error an agent receives (MCP: the text of an isError result)."""
        out: dict[str, Any] = {
            "error": ERROR_TYPE_DENIED,
            "message": f"tooltrail refused {self.tool}: {self.reason} (rule {self.rule})",
            "tool": self.tool,
            "decision": self.decision,
            "rule": self.rule,
            "reason": self.reason,
            "blast_radius": self.blast_radius,
            "session_id": self.session_id,
        }
        if self.approval is not None:
            out["approval"] = {
                "status": self.approval.status,
                "id": self.approval.approval_id,
                "decided_by": self.approval.decided_by,
            }
        return out

    def to_exception(self) -> ToolCallDenied:
        approval = self.approval
        return ToolCallDenied(
            self.tool,
            self.rule,
            self.reason,
            self.session_id,
            decision=self.decision,
            approval_status=approval.status if approval else None,
            blast_radius=self.blast_radius or None,
            approval_id=approval.approval_id if approval else None,
            approval_decided_by=approval.decided_by if approval else None,
        )


class Invocation:
    """One tool call in flight: its span, session, decision and effective arguments.
    ``call``: what the caller's ``rewrite`` hook made of a REWRITE's arguments.
    ``scrub`` scrubs the texts the span records later (result, messages);
    ``redactions`` is the span's ``tooltrail.redactions`` so far."""

    __slots__ = (
        "approval_outcome",
        "approval_request",
        "arguments",
        "call",
        "decision",
        "denial",
        "held",
        "redactions",
        "rewritten",
        "scrub",
        "server",
        "session",
        "settings",
        "span",
        "token",
        "tool",
    )

    def __init__(
        self,
        settings: Settings,
        span: Span,
        tool: str,
        session: Session,
        arguments: Mapping[str, Any],
        decision: DecisionLike | None,
        server: str | None = None,
    ) -> None:
        self.settings = settings
        self.server = server
        self.span = span
        self.tool = tool
        self.session = session
        self.arguments = arguments
        self.decision = decision
        self.rewritten = False
        # Approved after a hold: ``arguments`` are the checked ones and must be what is sent.
        self.held = False
        self.denial: Denial | None = None
        self.approval_request: ApprovalRequest | None = None
        self.approval_outcome: ApprovalOutcome | None = None
        self.token: object | None = None
        self.call: object | None = None
        self.scrub = clean_scrub(None)
        self.redactions = 0


# --- settings ----------------------------------------------------------------------------

_settings: Settings | None = None


def settings() -> Settings:
    """The active settings; built from the environment on first use if nobody installed any."""
    s = _settings
    return s if s is not None else install()


def install(
    *,
    tracer_provider: TracerProvider | None = None,
    policy: Any = None,
    enforce: bool | None = None,
    broker: ApprovalBroker | None = None,
    capture_results: bool | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    session_control: bool | None = None,
) -> Settings:
    """Replace the active settings; arguments left None come from the environment.

    ``policy`` (a path, a mapping or a loaded ``Policy``; default ``$TOOLTRAIL_POLICY``) is
    loaded here, once, and only when enforcing. A policy that cannot load does not raise:
    it is logged, and every call is then denied with rule ``policy-error``.

    ``data_dir`` (default ``$TOOLTRAIL_DATA``; none when neither is set) locates the
    control store: the default broker waits there, and session control reads it.
    ``session_control`` (default ``$TOOLTRAIL_SESSION_CONTROL``, else on when enforcing)
    checks pause / cancel before each call, in the control store, or through the
    collector when ``$TOOLTRAIL_COLLECTOR_URL`` is set (remote agents); it is off
    without either.
    """
    global _settings
    enforce = env_flag(ENV_ENFORCE, unrecognized=True) if enforce is None else enforce
    if capture_results is None:
        capture_results = env_flag(ENV_CAPTURE_RESULTS)
    root = _known_data_dir(data_dir)
    if session_control is None:
        session_control = env_flag(ENV_SESSION_CONTROL, default=enforce, unrecognized=True)
    decide, loaded, error = _policy_decider(policy, enforce)
    redactor = Redactor.from_env()
    new = Settings(
        tool_tracer=trace.get_tracer(
            _SCOPE_TOOL, __version__, tracer_provider, schema_url=SCHEMA_URL
        ),
        mcp_tracer=trace.get_tracer(
            _SCOPE_MCP, __version__, tracer_provider, schema_url=SCHEMA_URL
        ),
        enforce=enforce,
        decide=decide,
        broker=broker if broker is not None else default_broker(root),
        capture_results=capture_results,
        policy=loaded,
        policy_version=loaded.version if loaded is not None else None,
        policy_error=error,
        session_gate=_session_gate(root) if session_control else None,
        data_dir=root,
        redactor=redactor if redactor.enabled else None,
    )
    _settings = new
    return new


def _known_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is not None and str(data_dir):
        return Path(data_dir)
    env = os.environ.get(ENV_DATA)
    return Path(env) if env else None


def _session_gate(root: Path | None) -> SessionGate | None:
    url = os.environ.get(ENV_COLLECTOR_URL, "").strip()
    if url:
        return _http_session_gate(url)
    if root is None:
        return None
    from tooltrail.instrumentation.store_broker import StoreSessionGate

    return StoreSessionGate(root)


def _http_session_gate(url: str) -> SessionGate:
    """The collector's session control; one that cannot be built fails every check (so
    enforcing agents deny: fail closed) instead of raising into ``configure``."""
    try:
        from tooltrail.instrumentation.http_broker import HttpSessionGate

        return HttpSessionGate(url, token=os.environ.get(ENV_COLLECTOR_TOKEN) or None)
    except Exception as e:
        reason = f"session control for {ENV_COLLECTOR_URL}={url} is unavailable ({e})"
        _log.error("tooltrail: %s", reason)
        return _BrokenGate(reason)


class _BrokenGate:
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def state(self, session_id: str) -> str:
        raise ConnectionError(self.reason)

    def wait_while_paused(self, session_id: str) -> str:
        raise ConnectionError(self.reason)

    async def await_while_paused(self, session_id: str) -> str:
        raise ConnectionError(self.reason)


def is_installed() -> bool:
    return _settings is not None


def reset() -> None:
    """Forget installed settings; the next call rebuilds them from the environment."""
    global _settings
    _settings = None


def _policy_decider(policy: Any, enforce: bool) -> tuple[Decide, Policy | None, str | None]:
    """Load the policy once and close over it: (decide, the policy, load error)."""
    if not enforce:
        return _not_enforcing, None, None
    source = policy if policy is not None else (os.environ.get(ENV_POLICY) or None)
    if source is None:
        error = f"enforcement is on but no policy was given (set {ENV_POLICY} or policy=...)"
        _log.error("tooltrail: %s; every tool call will be denied", error)
        return _always_deny(error), None, error
    try:
        from tooltrail.policy import Policy, ToolCall, load_policy

        loaded: Policy = source if isinstance(source, Policy) else load_policy(source)
    except Exception as e:  # PolicyError, or anything unexpected: fail closed
        error = f"policy {source!r} could not be loaded: {e}"
        _log.error("tooltrail: %s; every tool call will be denied", error)
        return _always_deny(error), None, error
    new_call = _call_constructor(ToolCall)

    def decide(
        tool: str,
        arguments: Mapping[str, Any],
        session: Session,
        server: str | None,
        annotations: Mapping[str, Any] | None,
    ) -> DecisionLike:
        call = new_call(
            tool, arguments, session.agent_name, session.session_id, server, annotations
        )
        try:
            return loaded.decide(call)
        except Exception as e:  # the engine promises not to raise; fail closed if it does
            _log.exception("tooltrail: policy raised deciding %s", tool)
            return _error_decision(call, f"policy raised {type(e).__name__}: {e}")

    return decide, loaded, None


_CALL_FIELDS: Final = ("tool", "arguments", "agent", "session_id", "server", "annotations")


def _call_constructor(cls: type[ToolCall]) -> Callable[..., ToolCall]:
    """``cls(tool, arguments, agent, session_id, server, annotations)``, about twice as fast
    as the frozen dataclass ``__init__`` (which calls ``object.__setattr__`` per field): the
    slots are set directly, as ``tooltrail.policy.model.make_decision`` does for
    ``Decision``. The class itself when its shape is not the one this was written for."""
    names = tuple(f.name for f in fields(cls))
    if names != _CALL_FIELDS or hasattr(cls, "__post_init__"):
        return cls
    s0, s1, s2, s3, s4, s5 = (cls.__dict__[name].__set__ for name in names)
    new = object.__new__

    def make(
        tool: str,
        arguments: Mapping[str, Any],
        agent: str | None,
        session_id: str | None,
        server: str | None,
        annotations: Mapping[str, Any] | None,
    ) -> ToolCall:
        call: ToolCall = new(cls)
        s0(call, tool)
        s1(call, arguments)
        s2(call, agent)
        s3(call, session_id)
        s4(call, server)
        s5(call, annotations)
        return call

    return make


def _not_enforcing(
    tool: str,
    arguments: Mapping[str, Any],
    session: Session,
    server: str | None,
    annotations: Mapping[str, Any] | None,
) -> DecisionLike:
    raise AssertionError("decide() called while not enforcing")


def _always_deny(reason: str) -> Decide:
    def decide(
        tool: str,
        arguments: Mapping[str, Any],
        session: Session,
        server: str | None,
        annotations: Mapping[str, Any] | None,
    ) -> DecisionLike:
        try:
            from tooltrail.policy import ToolCall

            call = ToolCall(
                tool=tool,
                arguments=arguments,
                agent=session.agent_name,
                session_id=session.session_id,
                server=server,
                annotations=annotations,
            )
        except Exception:
            return _LocalDenial(reason, arguments)
        return _error_decision(call, reason)

    return decide


def _error_decision(call: Any, reason: str) -> DecisionLike:
    try:
        from tooltrail.policy import policy_error_decision

        decision: DecisionLike = policy_error_decision(call, reason)
        return decision
    except Exception:
        return _LocalDenial(reason, getattr(call, "arguments", {}))


# --- step 1: begin ----------------------------------------------------------------------


def begin(
    st: Settings,
    *,
    tool: str,
    arguments: Mapping[str, Any],
    mcp: bool,
    server: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    session: Session | None = None,
    veto: _Veto | None = None,
    rewrite: Rewrite | None = None,
) -> Invocation:
    """Number the call, decide (when enforcing), and start its span.

    ``veto``: session control refuses the call; it is recorded as a DENY by that rule
    (the policy's targets and blast radius are kept when enforcing).
    ``rewrite``: turns a REWRITE's arguments into the call to make (kept as ``inv.call``),
    before the span starts; if it raises, the rewrite cannot be carried out and the call is
    recorded as a DENY by the rewriting rule, as the engine does when it cannot rewrite.
    """
    sess = session if session is not None else current_session()
    decision: DecisionLike | None = None
    recorded = arguments
    if st.enforce:
        try:
            decision = st.decide(tool, arguments, sess, server, annotations)
        except Exception as e:  # our own glue failed: fail closed
            _log.exception("tooltrail: deciding %s failed", tool)
            decision = _LocalDenial(f"deciding failed: {type(e).__name__}: {e}", arguments)
        # The engine redacts secrets its rules name; the span records its copy, never ours.
        recorded = decision.arguments
    if veto is not None:
        decision = _vetoed(st, decision, veto, arguments)
    call: object | None = None
    if rewrite is not None and decision is not None and decision.decision == REWRITE:
        call, decision = _rewritten_call(rewrite, decision)
    # Every attribute known before the call goes in this one dict, handed to start_span:
    # each later set_attribute would take the span's lock and clean the value again.
    session_id = sess.session_id
    attrs: dict[str, Any] = {
        GEN_AI_OPERATION_NAME: OP_EXECUTE_TOOL,
        GEN_AI_TOOL_NAME: tool,
        GEN_AI_TOOL_CALL_ARGUMENTS: to_json(recorded, MAX_ARGUMENTS_CHARS),
        SESSION_ID: session_id,
        GEN_AI_CONVERSATION_ID: session_id,
        TT_SESSION_ID: session_id,
        TT_SEQUENCE: sess.next_sequence(),
    }
    if sess.agent_name is not None:
        attrs[GEN_AI_AGENT_NAME] = sess.agent_name
    if sess.agent_id is not None:
        attrs[GEN_AI_AGENT_ID] = sess.agent_id
    if sess.parent_session_id is not None:
        attrs[TT_PARENT_SESSION_ID] = sess.parent_session_id
    if sess.trigger is not None:
        attrs[TT_TRIGGER] = sess.trigger
    if annotations:
        attrs[TT_TOOL_ANNOTATIONS] = _annotations_json(annotations)
    if extra:
        attrs.update(extra)
    if decision is not None:
        _decision_attributes(decision, attrs)
    scrub, redactions = _scrub_attributes(st, attrs, recorded, decision, sess)
    if mcp:
        span = st.mcp_tracer.start_span(
            f"tools/call {tool}", kind=SpanKind.CLIENT, attributes=attrs
        )
    else:
        span = st.tool_tracer.start_span(
            f"execute_tool {tool}", kind=SpanKind.INTERNAL, attributes=attrs
        )
    inv = Invocation(st, span, tool, sess, arguments, decision, server)
    inv.scrub = scrub
    inv.redactions = redactions
    if decision is not None:
        inv.call = call
        _apply_decision(inv, decision)
    return inv


# Builds the call a REWRITE's arguments stand for; raises when they cannot be applied.
Rewrite = Callable[[Mapping[str, Any]], object]


def _rewritten_call(rewrite: Rewrite, d: DecisionLike) -> tuple[object | None, DecisionLike]:
    """``(call, d)``, or ``(None, a DENY by d's rule)`` when the rewrite cannot be applied:
    its arguments never run, so none are recorded as rewritten."""
    new = d.arguments_rewritten
    if new is None:
        return None, d  # _apply_decision refuses a REWRITE without arguments
    try:
        return rewrite(new), d
    except Exception as e:
        reason = f"the rewritten arguments could not be applied: {e}"
        return None, _refused_as(d, d.policy_rule, reason)


_ANNOTATIONS_JSON: dict[int, tuple[Mapping[str, Any], str]] = {}


def _annotations_json(annotations: Mapping[str, Any]) -> str:
    """The MCP tool annotations as JSON, recorded so that a replay or the exporter can
    decide ``readOnlyHint`` / ``destructiveHint`` rules exactly as the call did. The same
    mapping object comes back for every call of a tool: encode it once (the cache holds
    the object, so its id cannot be reused while cached)."""
    hit = _ANNOTATIONS_JSON.get(id(annotations))
    if hit is not None and hit[0] is annotations:
        return hit[1]
    text = json.dumps(dict(annotations), sort_keys=True, separators=(",", ":"), default=str)
    if len(_ANNOTATIONS_JSON) >= 1024:
        _ANNOTATIONS_JSON.clear()
    _ANNOTATIONS_JSON[id(annotations)] = (annotations, text)
    return text


def _vetoed(
    st: Settings, d: DecisionLike | None, veto: _Veto, arguments: Mapping[str, Any]
) -> DecisionLike:
    if d is None:
        return _LocalDenial(
            veto.reason,
            arguments,
            policy_rule=veto.rule,
            policy_version=st.policy_version or "",
        )
    return _refused_as(d, veto.rule, veto.reason)


def _refused_as(d: DecisionLike, rule: str, reason: str) -> DecisionLike:
    """A DENY by ``rule`` in place of ``d``, keeping what ``d`` found (matched rules,
    version, blast radius, targets, the redacted arguments and their redaction count)."""
    redactions = getattr(d, "redactions", 0)
    return _LocalDenial(
        reason,
        d.arguments,
        policy_rule=rule,
        policy_matched=tuple(d.policy_matched),
        policy_version=d.policy_version,
        blast_radius=d.blast_radius,
        target_repo=d.target_repo,
        target_branch=d.target_branch,
        target_path=d.target_path,
        redactions=redactions if isinstance(redactions, int) else 0,
    )


def _decision_attributes(d: DecisionLike, attrs: dict[str, Any]) -> None:
    attrs[TT_DECISION] = d.decision
    attrs[TT_POLICY_RULE] = d.policy_rule
    # A list, though the SDK stores a tuple: it checks a list faster than a tuple.
    attrs[TT_POLICY_MATCHED] = list(d.policy_matched)
    attrs[TT_POLICY_VERSION] = d.policy_version
    attrs[TT_ENFORCED] = True
    attrs[TT_BLAST_RADIUS] = d.blast_radius
    if d.target_repo is not None:
        attrs[TT_TARGET_REPO] = d.target_repo
    if d.target_branch is not None:
        attrs[TT_TARGET_BRANCH] = d.target_branch
    if d.target_path is not None:
        attrs[TT_TARGET_PATH] = d.target_path
    if d.reason is not None:
        attrs[TT_POLICY_REASON] = d.reason
    if d.decision == REWRITE and d.arguments_rewritten is not None:
        attrs[TT_ARGUMENTS_REWRITTEN] = to_json(d.arguments_rewritten, MAX_ARGUMENTS_CHARS)


def _scrub_attributes(
    st: Settings,
    attrs: dict[str, Any],
    recorded: Mapping[str, Any],
    d: DecisionLike | None,
    sess: Session,
) -> tuple[Scrub, int]:
    """Scrub the attributes the span starts with, as they enter it (``_scrub``), and set
    ``tooltrail.redactions``: the policy's redactions plus the scrubber's. Returns the
    call's ``Scrub`` (for its later texts) and that count."""
    redactions = getattr(d, "redactions", 0) if d is not None else 0
    if not isinstance(redactions, int) or redactions < 0:
        redactions = 0
    red = st.redactor
    if red is None:
        scrub = clean_scrub(None)
    else:
        rewritten = d.arguments_rewritten if TT_ARGUMENTS_REWRITTEN in attrs and d else None
        fields = (
            sess.session_id,
            sess.agent_name,
            sess.agent_id,
            sess.parent_session_id,
            sess.trigger,
        )
        scrub, n = scrub_start(red, attrs, recorded, rewritten, _record_json, fields)
        redactions += n
    if redactions:
        attrs[TT_REDACTIONS] = redactions
    return scrub, redactions


def _record_json(value: Any) -> str:
    return to_json(value, MAX_ARGUMENTS_CHARS)


def _count(inv: Invocation, n: int) -> None:
    """Add ``n`` removed values to the span's ``tooltrail.redactions``."""
    if n:
        inv.redactions += n
        inv.span.set_attribute(TT_REDACTIONS, inv.redactions)


def _scrubbed(inv: Invocation, text: str, *, counted: bool = True) -> str:
    """``text`` scrubbed for the span; counted unless it does not land (an exception
    event's copy of the status message)."""
    text, n = inv.scrub.text(text)
    if counted:
        _count(inv, n)
    return text


def _apply_decision(inv: Invocation, d: DecisionLike) -> None:
    if d.decision == DENY:
        inv.denial = _denial(inv, d, d.reason or f"denied by policy rule {d.policy_rule}")
    elif d.decision == REWRITE:
        if d.arguments_rewritten is None:  # an engine bug; never run unreviewed arguments
            inv.denial = _denial(inv, d, "REWRITE decision carried no rewritten arguments")
        else:
            inv.arguments = d.arguments_rewritten
            inv.rewritten = True
    elif d.decision == REQUIRE_APPROVAL:
        inv.approval_request = _approval_request(inv, d)
    elif d.decision != "ALLOW":
        inv.denial = _denial(inv, d, f"unknown decision {d.decision!r}")


def _denial(
    inv: Invocation, d: DecisionLike, reason: str, approval: ApprovalOutcome | None = None
) -> Denial:
    return Denial(
        tool=inv.tool,
        decision=d.decision,
        rule=d.policy_rule,
        reason=reason,
        session_id=inv.session.session_id,
        blast_radius=d.blast_radius,
        approval=approval,
    )


def _approval_request(inv: Invocation, d: DecisionLike) -> ApprovalRequest:
    ctx = inv.span.get_span_context()
    span = inv.span

    def on_filed(approval_id: str) -> None:
        # Stamped at once: if the agent abandons the held call, its span still names the
        # request (pending), and the approvals view follows its outcome in the store.
        span.set_attributes({TT_APPROVAL_ID: approval_id, TT_APPROVAL_STATUS: "pending"})

    return ApprovalRequest(
        on_filed=on_filed,
        tool=inv.tool,
        arguments=inv.arguments,
        shown_arguments=d.arguments,
        session_id=inv.session.session_id,
        agent_name=inv.session.agent_name,
        server=inv.server,
        trace_id=format(ctx.trace_id, "032x") if ctx.is_valid else None,
        span_id=format(ctx.span_id, "016x") if ctx.is_valid else None,
        rule=d.policy_rule,
        reason=d.reason,
        blast_radius=d.blast_radius,
        approval=d.approval,
    )


def fail_closed(st: Settings, tool: str, error: BaseException) -> Denial:
    """The denial when our own code failed before the call while enforcing."""
    _log.error("tooltrail: instrumentation failed before %s; denying it: %r", tool, error)
    try:
        session_id = current_session().session_id
    except Exception:
        session_id = ""
    return Denial(
        tool=tool,
        decision=DENY,
        rule=POLICY_ERROR_RULE,
        reason=f"tooltrail could not decide: {type(error).__name__}: {error}",
        session_id=session_id,
        blast_radius="Low",
    )


# --- step 1 as one guarded unit ---------------------------------------------------------


def prepare(
    st: Settings,
    tool: str,
    arguments_of: Callable[[], Mapping[str, Any]],
    *,
    mcp: bool,
    server: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rewrite: Rewrite | None = None,
) -> Invocation | Denial | None:
    """Begin the call and hold it for approval when needed (blocking).

    Returns the ``Invocation`` to run, a ``Denial`` (the call must not run; its span has
    ended), or None when our own code failed and the call should run untraced.
    """
    inv: Invocation | None = None
    try:
        sess = current_session()
        veto = session_veto(st, sess)  # may wait while the session is paused
        inv = begin(
            st,
            tool=tool,
            arguments=arguments_of(),
            mcp=mcp,
            server=server,
            annotations=annotations,
            extra=extra,
            session=sess,
            veto=veto,
            rewrite=rewrite,
        )
        if inv.approval_request is not None:
            ask_approval(inv)
            if inv.denial is None:
                # Session control first (it may wait): the arguments checked are then the
                # ones the call runs with right after.
                again = session_veto(st, sess)
                confirm_held(inv, arguments_of(), again)
    except Exception as e:
        return _prepare_failed(st, tool, inv, e)
    except BaseException as e:  # interrupted while held: end the span, let it through
        if inv is not None:
            finish_exception(inv, e)
        raise
    return _settled(inv)


async def aprepare(
    st: Settings,
    tool: str,
    arguments_of: Callable[[], Mapping[str, Any]],
    *,
    mcp: bool,
    server: str | None = None,
    annotations: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rewrite: Rewrite | None = None,
) -> Invocation | Denial | None:
    """``prepare`` for async callers: an approval wait does not block the event loop."""
    inv: Invocation | None = None
    try:
        waiting = backlog()
        if waiting is not None:  # the record is behind: this task waits, not the loop
            await waiting
        sess = current_session()
        veto = await asession_veto(st, sess)  # may wait while the session is paused
        inv = begin(
            st,
            tool=tool,
            arguments=arguments_of(),
            mcp=mcp,
            server=server,
            annotations=annotations,
            extra=extra,
            session=sess,
            veto=veto,
            rewrite=rewrite,
        )
        if inv.approval_request is not None:
            await aask_approval(inv)
            if inv.denial is None:
                again = await asession_veto(st, sess)  # before the check: it may wait
                confirm_held(inv, arguments_of(), again)
    except Exception as e:
        return _prepare_failed(st, tool, inv, e)
    except BaseException as e:  # cancelled while held: end the span, let it through
        if inv is not None:
            finish_exception(inv, e)
        raise
    return _settled(inv)


def _settled(inv: Invocation) -> Invocation | Denial:
    if inv.denial is not None:
        finish_denied(inv)
        return inv.denial
    return inv


def _prepare_failed(
    st: Settings, tool: str, inv: Invocation | None, error: Exception
) -> Denial | None:
    if inv is not None:  # the span started: end it rather than leak it
        finish_exception(inv, error)
    if st.enforce:
        return fail_closed(st, tool, error)
    _log.exception("tooltrail: instrumentation failed before %s; running it untraced", tool)
    return None


def refuse(inv: Invocation, reason: str) -> Denial:
    """Refuse a call after ``prepare`` (e.g. reviewed arguments that cannot be sent).

    A refused REWRITE is recorded as a DENY by its rule, with ``reason``: the rewrite did
    not run. (Its ``tooltrail.arguments.rewritten`` stays on the span: the SDK cannot take
    an attribute back. Callers that can check a rewrite first pass ``rewrite=`` to
    ``prepare``, which records none.)"""
    d = inv.decision
    decision = d.decision if d is not None else DENY
    if decision == REWRITE:
        decision = DENY
        try:
            inv.span.set_attributes({TT_DECISION: DENY, TT_POLICY_REASON: _scrubbed(inv, reason)})
        except Exception:
            _log.exception("tooltrail: could not mark the refused rewrite of %s", inv.tool)
    inv.denial = Denial(
        tool=inv.tool,
        decision=decision,
        rule=d.policy_rule if d is not None else POLICY_ERROR_RULE,
        reason=reason,
        session_id=inv.session.session_id,
        blast_radius=d.blast_radius if d is not None else "Low",
    )
    finish_denied(inv)
    return inv.denial


# --- session control ----------------------------------------------------------------------

_gate_warned = False


def session_veto(st: Settings, sess: Session) -> _Veto | None:
    """Check session control before a call (blocking while the session is paused)."""
    gate = st.session_gate
    if gate is None:
        return None
    try:
        state = gate.state(sess.session_id)
        if state == PAUSED:
            state = gate.wait_while_paused(sess.session_id)
    except Exception as e:
        return _gate_failed(st, e)
    return _CANCELED if state == CANCELED else None


async def asession_veto(st: Settings, sess: Session) -> _Veto | None:
    """``session_veto`` for async callers: a paused session does not block the event loop."""
    gate = st.session_gate
    if gate is None:
        return None
    try:
        # A gate that must ask over the network (the collector's) has an async check.
        astate = getattr(gate, "astate", None)
        state = await astate(sess.session_id) if astate else gate.state(sess.session_id)
        if state == PAUSED:
            state = await gate.await_while_paused(sess.session_id)
    except Exception as e:
        return _gate_failed(st, e)
    return _CANCELED if state == CANCELED else None


def _gate_failed(st: Settings, error: Exception) -> _Veto | None:
    """A store that cannot be read: deny when enforcing, else run the call (say so once)."""
    global _gate_warned
    reason = f"session control could not be checked: {type(error).__name__}: {error}"
    if st.enforce:
        _log.error("tooltrail: %s; denying the call", reason)
        return _Veto(SESSION_CONTROL_ERROR_RULE, reason)
    if not _gate_warned:
        _gate_warned = True
        _log.warning("tooltrail: %s; not enforcing, so calls go ahead", reason)
    return None


# --- approvals ----------------------------------------------------------------------------


def ask_approval(inv: Invocation) -> None:
    """Hold a REQUIRE_APPROVAL call at the broker (blocking); no-op for other calls."""
    req = inv.approval_request
    if req is None:
        return
    started = time.perf_counter()
    try:
        outcome = inv.settings.broker.request(req)
    except Exception as e:  # a broken broker is a refusal, never a pass
        outcome = _broker_failed(e)
    except BaseException:
        _stopped_waiting(inv)
        raise
    _apply_outcome(inv, req, outcome, started)


async def aask_approval(inv: Invocation) -> None:
    """``ask_approval`` for async callers: waits without blocking the event loop."""
    req = inv.approval_request
    if req is None:
        return
    started = time.perf_counter()
    try:
        outcome = await inv.settings.broker.arequest(req)
    except Exception as e:
        outcome = _broker_failed(e)
    except BaseException:  # cancelled (the caller gave up), interrupted
        _stopped_waiting(inv)
        raise
    _apply_outcome(inv, req, outcome, started)


def _stopped_waiting(inv: Invocation) -> None:
    """The caller stopped waiting before a decision (the broker marks the stored request
    abandoned): the span says so too, so store, span and views tell one story."""
    try:
        inv.span.set_attribute(TT_APPROVAL_STATUS, "abandoned")
    except Exception:
        _log.debug("tooltrail: could not mark the span abandoned", exc_info=True)


def _broker_failed(e: Exception) -> ApprovalOutcome:
    _log.exception("tooltrail: approval broker failed")
    return ApprovalOutcome(
        status="denied",
        decided_by=BROKER_ERROR,
        reason=f"the approval broker failed: {type(e).__name__}: {e}",
    )


def _apply_outcome(
    inv: Invocation, req: ApprovalRequest, outcome: ApprovalOutcome, started: float
) -> None:
    inv.approval_outcome = outcome
    wait_ms = outcome.wait_ms or (time.perf_counter() - started) * 1000.0
    attrs: dict[str, Any] = {TT_APPROVAL_STATUS: outcome.status, TT_APPROVAL_WAIT_MS: wait_ms}
    if outcome.approval_id is not None:
        attrs[TT_APPROVAL_ID] = outcome.approval_id
    if outcome.decided_by is not None:
        attrs[TT_APPROVAL_DECIDED_BY] = _scrubbed(inv, outcome.decided_by)
    inv.span.set_attributes(attrs)
    if outcome.proceeds(req):
        inv.arguments = req.arguments
        return
    assert inv.decision is not None
    inv.denial = _denial(inv, inv.decision, _refusal_reason(req, outcome), outcome)


def _refusal_reason(req: ApprovalRequest, outcome: ApprovalOutcome) -> str:
    """Why a held call does not run, in words naming who decided and why."""
    if outcome.refusal is not None:
        return outcome.refusal
    if outcome.decided_by == NO_BROKER:
        return APPROVAL_REQUIRED_REASON
    if outcome.decided_by and outcome.decided_by.startswith(SYSTEM_ACTOR_PREFIX):
        return outcome.reason or APPROVAL_REQUIRED_REASON  # tooltrail itself could not ask
    if outcome.status == "denied" and outcome.decided_by:
        return f"approval denied by {outcome.decided_by}" + (
            f": {outcome.reason}" if outcome.reason else ""
        )
    if outcome.status == "expired":
        on_timeout = req.approval.on_timeout if req.approval is not None else "DENY"
        return f"approval request expired without a decision (on_timeout: {on_timeout})"
    if outcome.status == "abandoned":
        return "approval request abandoned before a decision" + (
            f" ({outcome.reason})" if outcome.reason else ""
        )
    return outcome.reason or APPROVAL_REQUIRED_REASON


def confirm_held(inv: Invocation, live: Mapping[str, Any], veto: _Veto | None) -> None:
    """After an approval let a held call go: refuse it if its arguments changed while it
    was held, or if session control now refuses it; else mark it to send ``live``."""
    req = inv.approval_request
    assert req is not None and inv.decision is not None
    if not req.matches(live):
        inv.denial = _denial(inv, inv.decision, ARGUMENTS_CHANGED_REASON, inv.approval_outcome)
    elif veto is not None:
        inv.denial = Denial(
            tool=inv.tool,
            decision=inv.decision.decision,
            rule=veto.rule,
            reason=veto.reason,
            session_id=inv.session.session_id,
            blast_radius=inv.decision.blast_radius,
            approval=inv.approval_outcome,
        )
    else:
        inv.arguments = live
        inv.held = True


# --- step 2 helpers: make the span current around the call ----------------------------


def enter(inv: Invocation) -> None:
    """Make the call's span current (so child spans and propagation see it). Never raises."""
    try:
        inv.token = otel_context.attach(trace.set_span_in_context(inv.span))
    except Exception:
        _log.exception("tooltrail: could not make the span of %s current", inv.tool)


def _exit(inv: Invocation) -> None:
    token = inv.token
    if token is not None:
        inv.token = None
        otel_context.detach(token)  # type: ignore[arg-type]


# --- step 3: finish (never raises) ----------------------------------------------------


def _text_redaction(inv: Invocation) -> Any:
    """The decision's ``text_redaction`` (a ``tooltrail.policy.TextRedaction``), or None
    when nothing was decided or no matched rule redacts (the usual case)."""
    return getattr(inv.decision, "text_redaction", None)


def _policy_redacted(inv: Invocation, redaction: Any, texts: list[str]) -> list[str]:
    """``texts`` with the policy's redactions applied.

    The tool may have run with the real arguments (a REQUIRE_APPROVAL or ALLOW winning
    over a redacting rule), so its result or error can quote the secret the recorded
    arguments hide. The decision's ``text_redaction`` (``tooltrail.policy.TextRedaction``)
    is the same scrubber the exporter applies to landed rows. What it replaced in the
    first text (the one that lands: result preview or status message) is added to the
    span's ``tooltrail.redactions`` count."""
    out: list[str] = []
    for i, text in enumerate(texts):
        scrubbed, n = redaction.scrub(text)
        out.append(scrubbed)
        if i == 0:
            _count(inv, n)
    return out


def finish_result(inv: Invocation, preview: Callable[[], str] | None, is_error: bool) -> None:
    """End the span of a call that returned. ``preview`` renders the result (only called
    when result capture is on); ``is_error`` marks a tool-reported error."""
    try:
        _exit(inv)
        span = inv.span
        if preview is not None and inv.settings.capture_results:
            text = preview()
            redaction = _text_redaction(inv)
            if redaction is not None:  # before the cut, so no partial secret is left
                text = _policy_redacted(inv, redaction, [text])[0]
            span.set_attribute(GEN_AI_TOOL_CALL_RESULT, _result_preview(inv, text))
        if is_error:
            span.set_attribute(ERROR_TYPE, ERROR_TYPE_TOOL_ERROR)
            span.set_status(Status(StatusCode.ERROR, "tool reported an error"))
        else:
            _scrub_foreign_status(inv)
        span.end()
    except Exception:
        _log.exception("tooltrail: finishing the span of %s failed", inv.tool)


def _scrub_foreign_status(inv: Invocation) -> None:
    """Scrub a status message someone else set on our span while it was current: the
    MCP SDK sets the server's error message, a tool may set its own."""
    status = getattr(inv.span, "status", None)
    description = getattr(status, "description", None)
    if status is not None and isinstance(description, str) and description:
        scrubbed = _scrubbed(inv, description)
        if scrubbed != description:
            inv.span.set_status(Status(status.status_code, scrubbed))


def finish_exception(inv: Invocation, error: BaseException) -> None:
    """End the span of a call that raised (the caller re-raises ``error``)."""
    try:
        _exit(inv)
        span = inv.span
        message = f"{type(error).__name__}: {error}"
        redaction = _text_redaction(inv)
        if redaction is None and inv.scrub.redactor is None and inv.scrub.erase is None:
            span.record_exception(error)
        else:
            # The exception event's message and stack trace (which ends with the message)
            # are free text too; the SDK lets the attributes given replace its own.
            from opentelemetry.semconv.attributes.exception_attributes import (
                EXCEPTION_MESSAGE,
                EXCEPTION_STACKTRACE,
            )

            texts = [message, str(error), "".join(traceback.format_exception(error))]
            if redaction is not None:
                texts = _policy_redacted(inv, redaction, texts)
            # Only the status message lands (and is counted); the event goes to other
            # exporters, scrubbed alike.
            message = _scrubbed(inv, texts[0])
            span.record_exception(
                error,
                attributes={
                    EXCEPTION_MESSAGE: _scrubbed(inv, texts[1], counted=False),
                    EXCEPTION_STACKTRACE: _scrubbed(inv, texts[2], counted=False),
                },
            )
        span.set_attribute(ERROR_TYPE, type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, message))
        span.end()
    except Exception:
        _log.exception("tooltrail: finishing the span of %s failed", inv.tool)


def finish_denied(inv: Invocation) -> None:
    """End the span of a call that tooltrail refused (the tool did not run)."""
    try:
        _exit(inv)
        span = inv.span
        d = inv.denial
        span.set_attribute(ERROR_TYPE, ERROR_TYPE_DENIED)
        description = f"denied: {d.reason} (rule {d.rule})" if d else "denied"
        span.set_status(Status(StatusCode.ERROR, _scrubbed(inv, description)))
        span.end()
    except Exception:
        _log.exception("tooltrail: finishing the span of %s failed", inv.tool)


# A result is scrubbed on its first characters only (it is cut to the preview anyway), with
# a margin so that a secret straddling the cut is still seen whole.
_SCRUB_MARGIN: Final = 2048


def _result_preview(inv: Invocation, text: str) -> str:
    """The result preview as the span records it: scrubbed, then cut."""
    window = text[: RESULT_PREVIEW_CHARS + _SCRUB_MARGIN]
    if len(window) == len(text):
        scrubbed, n = inv.scrub.document(text)  # a whole JSON result: key names too
    else:
        scrubbed, n = inv.scrub.text(window)
    _count(inv, n)
    return truncate(scrubbed, RESULT_PREVIEW_CHARS)


# --- small helpers ------------------------------------------------------------------------


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER: Final = json.JSONEncoder(default=str, ensure_ascii=False, separators=(",", ":"))
# ``_ENCODER.encode`` without its per-call cost, built once and checked against json at
# import (tooltrail._json, shared with the collector). Without the circular-reference check:
# a circular structure ends in ``RecursionError`` instead of ``ValueError`` (``to_json``
# treats both alike) -- as long as the interpreter's recursion limit is low enough that the
# C stack outlasts it; ``to_json`` uses the checking encoder above ``_FAST_RECURSION_LIMIT``.
_encode: Final = compact_encoder(default=str)


# Above this recursion limit a cycle could overflow the C stack before RecursionError
# (a segfault of the host): the encoder with the circular-reference check is used then.
_FAST_RECURSION_LIMIT: Final = 4000


def to_json(value: Any, limit: int) -> str:
    """Compact JSON of ``value`` (``str()`` for what JSON cannot hold), at most ``limit``
    characters.

    Over the limit, the long strings inside are cut (each ending in ``TRUNCATION_MARK``)
    so the text stays a JSON object: the keys and the short values a policy matches on
    (``env: prod``) survive for after-the-fact decisions, replay and queries. Only when
    cutting strings cannot make it fit is the text itself cut (no longer valid JSON)."""
    try:
        if sys.getrecursionlimit() <= _FAST_RECURSION_LIMIT:
            text = _encode(value)
        else:
            text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):  # e.g. a circular structure
        text = json.dumps(repr(value), ensure_ascii=False)
    if len(text) <= limit:
        return text
    return _shortened(value, limit, len(text)) or truncate(text, limit)


# Strings are never cut shorter than this when shortening arguments to fit.
_MIN_KEPT_CHARS: Final = 32


def _shortened(value: Any, limit: int, length: int) -> str | None:
    """The JSON of ``value`` (``length`` characters) with every string longer than some
    cap cut to it, for a cap that makes it fit; None when no cap can.

    The cap is worked out from the strings' lengths (the text shrinks by what is cut off,
    less the marks added), so the value is encoded once or twice, not once per guess;
    bulk that is not strings (a long list of numbers) is known not to fit at once."""
    lengths = sorted(_string_lengths(value, 0), reverse=True)
    mark = len(TRUNCATION_MARK)
    cap = limit // 2
    while cap >= _MIN_KEPT_CHARS:
        saved = sum(n - cap - mark for n in lengths if n > cap + mark)
        if length - saved <= limit:
            try:
                text = _ENCODER.encode(_cut_strings(value, cap))
            except (TypeError, ValueError, RecursionError):
                return None
            if len(text) <= limit:
                return text
        cap //= 2
    return None


def _string_lengths(value: Any, depth: int) -> list[int]:
    """The lengths of the strings in ``value`` (keys aside) as the record writes them."""
    if isinstance(value, str):
        return [len(value)]
    if depth > _MAX_SHORTEN_DEPTH:
        return []
    if isinstance(value, dict):
        return [n for v in value.values() for n in _string_lengths(v, depth + 1)]
    if isinstance(value, list | tuple):
        # Numbers skipped inline: a long list of ids costs a type check per item, no call.
        return [n for v in value if type(v) not in _NUMBERS for n in _string_lengths(v, depth + 1)]
    if value is None or isinstance(value, bool | int | float):
        return []
    try:
        return [len(str(value))]
    except Exception:
        return []


_MAX_SHORTEN_DEPTH: Final = 200
_NUMBERS: Final = frozenset({int, float, bool, type(None)})


def _cut_strings(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= cap else value[:cap] + TRUNCATION_MARK
    # The containers the encoder writes as JSON; anything else it writes as str().
    if isinstance(value, dict):
        return {k: _cut_strings(v, cap) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cut_strings(v, cap) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _cut_strings(str(value), cap)  # what the encoder's default=str would write


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
