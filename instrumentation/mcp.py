"""``McpInstrumentor``: one span, and call-time enforcement, per MCP ``tools/call``.

Patches the MCP Python SDK client (``mcp >= 2.0, < 3``):

* ``ClientSession.call_tool`` becomes a ``tools/call {tool}`` CLIENT span carrying the
  GenAI / MCP / tooltrail attributes (SPEC §2). W3C trace context is injected into the
  request's ``params._meta`` so an instrumented server joins the trace. Under enforcement a
  DENY never reaches the server: the caller gets ``CallToolResult(isError=True)`` whose text
  is a JSON object naming the rule and the reason.
* ``ClientSession.list_tools`` is observed (no extra round trip) to remember each tool's
  annotations (``readOnlyHint``, ``destructiveHint``, ...) per session, for the policy.
* mcp 2.x opens its own ``MCP send tools/call`` CLIENT span for each request (through
  ``mcp.shared.jsonrpc_dispatcher.otel_span``). Inside our span that would be a second
  span for the same call, one every span consumer reads as another tool call (it carries
  ``mcp.method.name=tools/call``). So for the ``tools/call`` of our invocation the hook hands
  the SDK our span instead of a new one: the SDK stamps its JSON-RPC attributes
  (``jsonrpc.request.id``, error codes) on our span and injects our span's context, so the
  server's parent is our span. Every other request keeps the SDK's own span.

``instrument(**kwargs)`` accepts ``tracer_provider``, ``policy``, ``enforce``, ``broker``,
``capture_results``, ``data_dir`` and ``session_control``; they apply to every tooltrail
span in the process (``@tool`` too). Missing ones come from the environment
(``TOOLTRAIL_ENFORCE``, ``TOOLTRAIL_POLICY``, ``TOOLTRAIL_CAPTURE_RESULTS``,
``TOOLTRAIL_DATA``), which is what ``opentelemetry-instrument`` relies on; with no arguments
and settings already installed (by ``configure()``), those stay. ``uninstrument()`` removes
the MCP patches only: the settings, and so enforcement of ``@tool`` functions, stay in force.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import importlib
import json
import logging
import weakref
from collections.abc import Collection, Mapping
from typing import Any, Final

from opentelemetry import propagate
from opentelemetry import trace as otel_trace

# The module is marked `# type: ignore` upstream, so mypy sees BaseInstrumentor as Any.
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from tooltrail.instrumentation import _settings
from tooltrail.instrumentation._call import Invocation, enter, finish_exception, finish_result
from tooltrail.instrumentation._decision import Denial
from tooltrail.instrumentation._plain import plain_arguments
from tooltrail.instrumentation._prepare import aprepare, fail_closed, refuse
from tooltrail.instrumentation._shorten import RESULT_PREVIEW_CHARS, to_json
from tooltrail.instrumentation.package import _instruments
from tooltrail.semconv import (
    JSONRPC_REQUEST_ID,
    MCP_METHOD_NAME,
    MCP_METHOD_TOOLS_CALL,
    MCP_SERVER_NAME,
)

__all__ = ["McpInstrumentor"]

_log = logging.getLogger("tooltrail.instrumentation")

_SESSION_MODULE: Final = "mcp.client.session"
_DISPATCHER_MODULE: Final = "mcp.shared.jsonrpc_dispatcher"
_SDK_SPAN_HOOK: Final = "otel_span"
_SETTINGS_KWARGS: Final = (
    "tracer_provider",
    "policy",
    "enforce",
    "broker",
    "capture_results",
    "data_dir",
    "session_control",
)

# The tools/call invocation in flight in this context, until its request is sent.
_ACTIVE: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "tooltrail_mcp_call", default=None
)
# Tool annotations per ClientSession, from its tools/list results (weak: sessions come and go).
_ANNOTATIONS: weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


class McpInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An instrumentor for the MCP Python SDK client (``ClientSession``).

    See the module docstring; ``McpInstrumentor().instrument()`` with no arguments does
    exactly what ``opentelemetry-instrument`` does.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        # configure() installs settings first and then instruments with no arguments; an
        # argument-less instrument() must not clobber them with the environment's.
        if any(k in kwargs for k in _SETTINGS_KWARGS) or not _settings.is_installed():
            _settings.install(
                tracer_provider=kwargs.get("tracer_provider"),
                policy=kwargs.get("policy"),
                enforce=kwargs.get("enforce"),
                broker=kwargs.get("broker"),
                capture_results=kwargs.get("capture_results"),
                data_dir=kwargs.get("data_dir"),
                session_control=kwargs.get("session_control"),
            )
        wrap_function_wrapper(_SESSION_MODULE, "ClientSession.call_tool", _wrap_call_tool)
        wrap_function_wrapper(_SESSION_MODULE, "ClientSession.list_tools", _wrap_list_tools)
        dispatcher = importlib.import_module(_DISPATCHER_MODULE)
        if callable(getattr(dispatcher, _SDK_SPAN_HOOK, None)):  # mcp >= 2.x with OTel spans
            wrap_function_wrapper(dispatcher, _SDK_SPAN_HOOK, _wrap_sdk_span)

    def _uninstrument(self, **kwargs: Any) -> None:
        from mcp.client.session import ClientSession

        unwrap(ClientSession, "call_tool")
        unwrap(ClientSession, "list_tools")
        unwrap(importlib.import_module(_DISPATCHER_MODULE), _SDK_SPAN_HOOK)
        # The settings stay: they are the process's, shared with @tool functions and often
        # installed by configure(). Forgetting them here would silently stop enforcing a
        # DENY on functions that have nothing to do with MCP (fail open).


async def _wrap_call_tool(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    st = _settings.settings()
    try:
        name = args[0] if args else kwargs["name"]
        if not isinstance(name, str):
            raise TypeError(f"tool name is {type(name).__name__}, not str")
        server = _server_name(instance)
        extra: dict[str, Any] = {MCP_METHOD_NAME: MCP_METHOD_TOOLS_CALL}
        if server is not None:
            extra[MCP_SERVER_NAME] = server
        annotations = _ANNOTATIONS.get(instance, {}).get(name)
    except Exception as e:
        if st.enforce:
            return denied_result(fail_closed(st, "<unknown>", e))
        _log.exception("tooltrail: could not read the tools/call; running it untraced")
        return await wrapped(*args, **kwargs)

    prep = await aprepare(
        st,
        name,
        lambda: _arguments(args, kwargs),
        mcp=True,
        server=server,
        annotations=annotations,
        extra=extra,
    )
    if prep is None:
        return await wrapped(*args, **kwargs)
    if isinstance(prep, Denial):
        return denied_result(prep)
    try:
        call_args, call_kwargs = _request(prep, args, kwargs)
    except Exception as e:
        if prep.rewritten or prep.held:  # never send arguments nobody reviewed
            return denied_result(refuse(prep, f"the reviewed arguments could not be sent: {e}"))
        _log.exception("tooltrail: could not inject trace context into %s", name)
        call_args, call_kwargs = args, kwargs

    enter(prep)
    token = _ACTIVE.set(prep)
    try:
        result = await wrapped(*call_args, **call_kwargs)
    except BaseException as e:
        _forget(token)
        finish_exception(prep, e)
        raise
    _forget(token)
    finish_result(prep, lambda: _result_text(result), is_error=_is_error(result))
    return result


def _forget(token: contextvars.Token[Invocation | None]) -> None:
    try:
        _ACTIVE.reset(token)
    except ValueError:  # a different context than the one that set it; nothing to undo
        _ACTIVE.set(None)


async def _wrap_list_tools(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    result = await wrapped(*args, **kwargs)
    try:
        _remember_annotations(instance, result)
    except Exception:
        _log.debug("tooltrail: could not read tool annotations", exc_info=True)
    return result


def _wrap_sdk_span(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``otel_span(name, *, kind, attributes, ...)``: our span for our tools/call request."""
    inv = _ACTIVE.get()
    if inv is None:
        return wrapped(*args, **kwargs)
    try:
        attributes = kwargs.get("attributes")
        if not isinstance(attributes, Mapping):
            return wrapped(*args, **kwargs)
        if attributes.get(MCP_METHOD_NAME) != MCP_METHOD_TOOLS_CALL:
            return wrapped(*args, **kwargs)
        _ACTIVE.set(None)  # only the first tools/call of this invocation is ours
        request_id = attributes.get(JSONRPC_REQUEST_ID)
        if request_id is not None:
            inv.span.set_attribute(JSONRPC_REQUEST_ID, str(request_id))
        # Not ended on exit: our wrapper ends it once call_tool returns.
        return contextlib.nullcontext(inv.span)
    except Exception:
        _log.debug("tooltrail: could not adopt the SDK's request span", exc_info=True)
        return wrapped(*args, **kwargs)


def _server_name(session: Any) -> str | None:
    info = getattr(session, "server_info", None)
    name = getattr(info, "name", None)
    return name if isinstance(name, str) else None


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
    arguments = args[1] if len(args) > 1 else kwargs.get("arguments")
    # Decided (and recorded) in their JSON form, the form the server receives.
    return plain_arguments(dict(arguments)) if arguments else {}


def _request(
    inv: Invocation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with our trace context in ``meta`` and any rewrite applied.

    A call approved after a hold sends a private copy of the arguments that were checked
    against the approval, so nothing the caller still holds can change them in flight.
    """
    kwargs = dict(kwargs)
    meta: dict[str, Any] = dict(kwargs.get("meta") or {})
    propagate.inject(meta, context=otel_trace.set_span_in_context(inv.span))
    kwargs["meta"] = meta
    if inv.rewritten or inv.held:
        sent = copy.deepcopy(dict(inv.arguments)) if inv.held else dict(inv.arguments)
        if len(args) > 1:
            args = (args[0], sent, *args[2:])
        else:
            kwargs["arguments"] = sent
    return args, kwargs


def _remember_annotations(session: Any, result: Any) -> None:
    known = _ANNOTATIONS.setdefault(session, {})
    for t in getattr(result, "tools", None) or ():
        ann = getattr(t, "annotations", None)
        if ann is not None:
            known[t.name] = ann.model_dump(by_alias=True, exclude_none=True)


def _is_error(result: Any) -> bool:
    try:
        return getattr(result, "is_error", False) is True
    except Exception:  # an exotic result type; not ours to break on
        return False


def _result_text(result: Any) -> str:
    parts: list[str] = []
    for block in getattr(result, "content", None) or ():
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')}]")
    structured = getattr(result, "structured_content", None)
    if not parts and structured is not None:
        return to_json(structured, RESULT_PREVIEW_CHARS)
    return "\n".join(parts)


def denied_result(denial: Denial) -> Any:
    """The ``CallToolResult`` a refused call returns: isError, text = the JSON denial."""
    from mcp.types import CallToolResult, TextContent

    text = json.dumps(denial.to_json_dict(), ensure_ascii=False)
    return CallToolResult(content=[TextContent(text=text)], is_error=True)
