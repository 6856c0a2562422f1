"""The tool span: one call's span from start to end, shared by the MCP client, ``@tool``
and the gateway.

A tool call goes through three steps, and only ours are guarded:

1. ``prepare`` / ``aprepare`` (``_prepare``) run step 1 as one guarded unit. Session
   control first (``_gate``): a paused session's call waits there, before its span starts,
   until the session is resumed or canceled; a canceled session's call is denied (rule
   ``session-canceled``). ``begin``: number the action in its session, ask the policy (when
   enforcing), start the span with every attribute known up front. ``ask_approval`` /
   ``aask_approval`` (``_approvals``) then hand a REQUIRE_APPROVAL call to the broker; when
   it may proceed, its arguments are checked against the request's hash (changed while
   held: refused) and session control is checked again (the session may have been paused
   or canceled meanwhile).
2. The caller runs the wrapped call itself, exactly once, with the span current
   (``enter``).
3. ``finish_result`` / ``finish_exception`` / ``finish_denied`` stamp the outcome and end
   the span. They never raise.

What the span records is scrubbed as it enters it (``_scrub``): the attributes it starts
with in ``begin``, and later texts (result preview, status and exception messages)
through the call's ``Scrub``; ``tooltrail.redactions`` counts both with the policy's.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tooltrail.instrumentation._decision import (
    DENY,
    ERROR_TYPE_DENIED,
    REQUIRE_APPROVAL,
    REWRITE,
    DecisionLike,
    Denial,
    LocalDenial,
    refused_as,
)
from tooltrail.instrumentation._gate import Veto
from tooltrail.instrumentation._scrub import Scrub, clean_scrub, scrub_start
from tooltrail.instrumentation._session import Session, current_session
from tooltrail.instrumentation._settings import Settings
from tooltrail.instrumentation._shorten import (
    MAX_ARGUMENTS_CHARS,
    RESULT_PREVIEW_CHARS,
    to_json,
    truncate,
)
from tooltrail.instrumentation.broker import ApprovalOutcome, ApprovalRequest
from tooltrail.semconv import (
    ERROR_TYPE,
    ERROR_TYPE_TOOL_ERROR,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_CALL_ARGUMENTS,
    GEN_AI_TOOL_CALL_RESULT,
    GEN_AI_TOOL_NAME,
    OP_EXECUTE_TOOL,
    TT_APPROVAL_ID,
    TT_APPROVAL_STATUS,
    TT_ARGUMENTS_REWRITTEN,
    TT_BLAST_RADIUS,
    TT_DECISION,
    TT_ENFORCED,
    TT_POLICY_MATCHED,
    TT_POLICY_REASON,
    TT_POLICY_RULE,
    TT_POLICY_VERSION,
    TT_REDACTIONS,
    TT_SEQUENCE,
    TT_SESSION_ENDS,
    TT_TARGET_BRANCH,
    TT_TARGET_PATH,
    TT_TARGET_REPO,
    TT_TOOL_ANNOTATIONS,
)

__all__ = [
    "Invocation",
    "Rewrite",
    "begin",
    "denial_of",
    "enter",
    "finish_denied",
    "finish_exception",
    "finish_result",
    "scrub_text",
]

_log = logging.getLogger("tooltrail.instrumentation")


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


# --- step 1: begin ---------------------------------------------------------------------


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
    veto: Veto | None = None,
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
            decision = LocalDenial(f"deciding failed: {type(e).__name__}: {e}", arguments)
        # The engine redacts secrets its rules name; the span records its copy, never ours.
        recorded = decision.arguments
    if veto is not None:
        decision = _vetoed(st, decision, veto, arguments)
    call: object | None = None
    if rewrite is not None and decision is not None and decision.decision == REWRITE:
        call, decision = _rewritten_call(rewrite, decision)
    # Every attribute known before the call goes in this one dict, handed to start_span:
    # each later set_attribute would take the span's lock and clean the value again.
    attrs: dict[str, Any] = {
        GEN_AI_OPERATION_NAME: OP_EXECUTE_TOOL,
        GEN_AI_TOOL_NAME: tool,
        GEN_AI_TOOL_CALL_ARGUMENTS: to_json(recorded, MAX_ARGUMENTS_CHARS),
        TT_SEQUENCE: sess.next_sequence(),
    }
    sess.add_identity(attrs)
    if sess.records_end:
        attrs[TT_SESSION_ENDS] = True
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
        return None, refused_as(d, d.policy_rule, reason)


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
    st: Settings, d: DecisionLike | None, veto: Veto, arguments: Mapping[str, Any]
) -> DecisionLike:
    if d is None:
        return LocalDenial(
            veto.reason,
            arguments,
            policy_rule=veto.rule,
            policy_version=st.policy_version or "",
        )
    return refused_as(d, veto.rule, veto.reason)


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


def scrub_text(inv: Invocation, text: str, *, counted: bool = True) -> str:
    """``text`` scrubbed for the span; counted unless it does not land (an exception
    event's copy of the status message)."""
    text, n = inv.scrub.text(text)
    if counted:
        _count(inv, n)
    return text


def _apply_decision(inv: Invocation, d: DecisionLike) -> None:
    if d.decision == DENY:
        inv.denial = denial_of(inv, d, d.reason or f"denied by policy rule {d.policy_rule}")
    elif d.decision == REWRITE:
        if d.arguments_rewritten is None:  # an engine bug; never run unreviewed arguments
            inv.denial = denial_of(inv, d, "REWRITE decision carried no rewritten arguments")
        else:
            inv.arguments = d.arguments_rewritten
            inv.rewritten = True
    elif d.decision == REQUIRE_APPROVAL:
        inv.approval_request = _approval_request(inv, d)
    elif d.decision != "ALLOW":
        inv.denial = denial_of(inv, d, f"unknown decision {d.decision!r}")


def denial_of(
    inv: Invocation, d: DecisionLike, reason: str, approval: ApprovalOutcome | None = None
) -> Denial:
    """The call refused as decided by ``d`` (its decision, rule and blast radius), with
    ``reason`` and, for a held call, how its approval ended."""
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
        policy_version=d.policy_version or None,
    )


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
        scrubbed = scrub_text(inv, description)
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
            message = scrub_text(inv, texts[0])
            span.record_exception(
                error,
                attributes={
                    EXCEPTION_MESSAGE: scrub_text(inv, texts[1], counted=False),
                    EXCEPTION_STACKTRACE: scrub_text(inv, texts[2], counted=False),
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
        span.set_status(Status(StatusCode.ERROR, scrub_text(inv, description)))
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
