"""How tooltrail is set up for tool calls: one immutable ``Settings`` (tracers, policy,
broker, session gate, result capture, scrubber), swapped whole by ``install`` so a call
always sees one consistent set. The policy is loaded once per ``install`` and closed over
by the ``decide`` it builds; a policy that cannot load makes a decider that denies every
call (rule ``policy-error``) instead of raising.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider

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
from tooltrail.instrumentation._decision import DecisionLike, LocalDenial
from tooltrail.instrumentation._session import Session
from tooltrail.instrumentation.broker import ApprovalBroker, default_broker
from tooltrail.instrumentation.version import __version__
from tooltrail.redact import Redactor

if TYPE_CHECKING:
    from tooltrail.policy import Policy, ToolCall

__all__ = [
    "SCHEMA_URL",
    "Decide",
    "SessionGate",
    "Settings",
    "install",
    "is_installed",
    "policy_decider",
    "reset",
    "settings",
]

_log = logging.getLogger("tooltrail.instrumentation")

# GenAI tool attributes and mcp.* names are in semconv 1.39.
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.39.0"
_SCOPE_TOOL: Final = "tooltrail.instrumentation.decorator"
_SCOPE_MCP: Final = "tooltrail.instrumentation.mcp"


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


_active: Settings | None = None


def settings() -> Settings:
    """The active settings; built from the environment on first use if nobody installed any."""
    s = _active
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
    global _active
    enforce = env_flag(ENV_ENFORCE, unrecognized=True) if enforce is None else enforce
    if capture_results is None:
        capture_results = env_flag(ENV_CAPTURE_RESULTS)
    root = _known_data_dir(data_dir)
    if session_control is None:
        session_control = env_flag(ENV_SESSION_CONTROL, default=enforce, unrecognized=True)
    decide, loaded, error = policy_decider(policy, enforce)
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
    _active = new
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
    return _active is not None


def reset() -> None:
    """Forget installed settings; the next call rebuilds them from the environment."""
    global _active
    _active = None


def policy_decider(policy: Any, enforce: bool) -> tuple[Decide, Policy | None, str | None]:
    """Load the policy once and close over it: (decide, the policy, load error).

    ``policy`` as for ``install`` (None: ``$TOOLTRAIL_POLICY``). Never raises: a policy
    that cannot load gives a ``decide`` that denies every call (rule ``policy-error``) and
    the error. Not enforcing, ``decide`` must not be called. A caller that needs settings
    with another policy (the gateway, per server) swaps them into a copy of
    ``Settings`` (``decide``, ``policy``, ``policy_version``, ``policy_error``)."""
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
            return LocalDenial(reason, arguments)
        return _error_decision(call, reason)

    return decide


def _error_decision(call: Any, reason: str) -> DecisionLike:
    try:
        from tooltrail.policy import policy_error_decision

        decision: DecisionLike = policy_error_decision(call, reason)
        return decision
    except Exception:
        return LocalDenial(reason, getattr(call, "arguments", {}))
