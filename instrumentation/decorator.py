"""``@tool``: one span (and, when enforcing, one policy decision) per call of a Python function.

For agents whose tools are local functions. The span is ``execute_tool {name}`` (kind
INTERNAL) with the same attributes as an MCP tool span. Under enforcement a DENY raises
``ToolCallDenied`` (a ``PermissionError``) before the function runs, a REWRITE calls it
with the rewritten arguments, and a REQUIRE_APPROVAL waits at the approval broker (the
default broker refuses, so the call is denied with reason "approval required").

The policy sees the arguments by parameter name, defaults applied, ``self`` / ``cls``
left out, and ``**kwargs`` spread into the top level.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

from tooltrail.instrumentation._call import Invocation, enter, finish_exception, finish_result
from tooltrail.instrumentation._decision import Denial, ToolCallDenied
from tooltrail.instrumentation._plain import plain_arguments
from tooltrail.instrumentation._prepare import aprepare, prepare, refuse
from tooltrail.instrumentation._settings import settings
from tooltrail.instrumentation._shorten import RESULT_PREVIEW_CHARS, to_json

__all__ = ["ToolCallDenied", "tool"]

_log = logging.getLogger("tooltrail.instrumentation")

P = ParamSpec("P")
R = TypeVar("R")

_RECEIVERS: Final = ("self", "cls")
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@overload
def tool(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def tool(
    *, name: str | None = None, annotations: Mapping[str, Any] | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def tool(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    annotations: Mapping[str, Any] | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Trace (and, when enforcing, gate) every call of a sync or async function.

    Args:
        name: the tool name in spans and policy rules (default the function's ``__name__``).
        annotations: MCP-style hints the policy may match, e.g. ``{"readOnlyHint": True}``.

    Raises:
        TypeError: ``fn`` is a generator function (sync or async). Its body runs only when
            the caller iterates, after the call returned: the span would record nothing of
            the work, and a decision made at the call would not cover it.
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        if inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f):
            raise TypeError(
                f"@tool cannot trace generator function {getattr(f, '__qualname__', f)!r}:"
                " its body runs while the caller iterates, after the call returned. Decorate"
                " a function that returns the results (e.g. as a list) instead."
            )
        return _instrument(f, name or str(getattr(f, "__name__", "tool")), annotations)

    return decorate(fn) if fn is not None else decorate


class _Binder:
    """Maps a call's ``(args, kwargs)`` to ``{parameter: value}``, cheaply.

    The common case (positional-or-keyword parameters, no ``*args``) is a zip plus the
    defaults, computed once; anything else goes through ``Signature.bind``.
    """

    __slots__ = ("defaults", "fast", "positional", "signature", "skip_first")

    def __init__(self, fn: Callable[..., Any]) -> None:
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins and C callables have none
            self.signature = None
        params = list(self.signature.parameters.values()) if self.signature else []
        self.positional = tuple(p.name for p in params if p.kind in _POSITIONAL)
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}
        self.skip_first = bool(self.positional) and self.positional[0] in _RECEIVERS
        self.fast = self.signature is not None and all(
            p.kind in _POSITIONAL or p.kind is inspect.Parameter.KEYWORD_ONLY for p in params
        )

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.fast and len(args) <= len(self.positional):
            # zip's default is strict=False; spelling it out costs a keyword parse per call.
            out = dict(zip(self.positional, args))  # noqa: B905
            if kwargs:
                out.update(kwargs)
            if self.defaults:
                for k, v in self.defaults.items():
                    out.setdefault(k, v)
        else:
            out = self._bound(args, kwargs)
        if self.skip_first:
            out.pop(self.positional[0], None)
        return out

    def _bound(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.signature is None:
            return {"args": list(args), **kwargs}
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError:  # the call itself will raise the same error; record what came in
            return {"args": list(args), **kwargs}
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for pname, value in bound.arguments.items():
            kind = self.signature.parameters[pname].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                out[pname] = list(value)
            else:
                out[pname] = value
        return out

    def rebind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], new: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's ``(args, kwargs)`` rebuilt from ``new`` (a REWRITE's arguments).

        ``new`` is the whole truth: a parameter it sets is swapped in, a parameter it
        leaves out (``remove:``) falls back to its default, ``**kwargs`` hold exactly its
        other keys. Only the receiver (``self`` / ``cls``) comes from the original call.

        Raises:
            ValueError: ``new`` names a parameter the function does not take, or removes
                one the function requires.
        """
        if self.signature is None:
            raise ValueError("the function has no inspectable signature")
        bound = self.signature.bind(*args, **kwargs)
        params = self.signature.parameters
        receiver = self.positional[0] if self.skip_first else None
        var_kw: str | None = None
        for pname, p in params.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = pname
            elif pname == receiver:
                continue
            elif pname in new:
                value = new[pname]
                bound.arguments[pname] = (
                    tuple(value) if p.kind is inspect.Parameter.VAR_POSITIONAL else value
                )
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments.pop(pname, None)
            elif p.default is not p.empty:
                bound.arguments.pop(pname, None)  # removed by the rewrite: the default runs
            else:
                raise ValueError(f"the rewrite removes {pname!r}, which the function requires")
        extra = {k: v for k, v in new.items() if k not in params}
        if extra and var_kw is None:
            key = next(iter(extra))
            raise ValueError(f"the rewrite sets {key!r}, which the function does not take")
        if var_kw is not None:
            bound.arguments.pop(var_kw, None)
            if extra:
                bound.arguments[var_kw] = extra
        return bound.args, bound.kwargs


def _preview(result: Any) -> Callable[[], str]:
    return lambda: result if isinstance(result, str) else to_json(result, RESULT_PREVIEW_CHARS)


_Call = tuple[tuple[Any, ...], dict[str, Any]]


def _rewritten(
    binder: _Binder, args: tuple[Any, ...], kwargs: dict[str, Any], new: Mapping[str, Any]
) -> _Call:
    """The ``(args, kwargs)`` a REWRITE's arguments ``new`` stand for.

    Raises:
        ValueError: ``new`` cannot be applied to the function's parameters (``prepare``
            then records and refuses the call as a DENY by the rewriting rule).
    """
    # The policy rewrote the JSON form of the arguments: a value it left as it was goes
    # to the function as the caller's own object (a Path stays a Path).
    raw = binder.arguments(args, kwargs)
    seen = plain_arguments(raw)
    wanted = {k: raw[k] if k in raw and k in seen and seen[k] == v else v for k, v in new.items()}
    return binder.rebind(args, kwargs, wanted)


def _runnable(prep: Invocation, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
    """The ``(args, kwargs)`` to call the function with, its span made current; shared by
    the sync and async wrappers.

    Raises:
        ToolCallDenied: the call was rewritten but no rewritten call was prepared (a call
            never runs unrewritten).
    """
    call: _Call = (args, kwargs)
    if prep.rewritten:
        if prep.call is None:
            reason = "the rewritten arguments were not applied"
            raise refuse(prep, reason).to_exception() from None
        call = cast(_Call, prep.call)
    enter(prep)
    return call


def _instrument(
    fn: Callable[P, R], name: str, annotations: Mapping[str, Any] | None
) -> Callable[P, R]:
    binder = _Binder(fn)
    # An object with `async def __call__` is async too: a sync wrapper would wait for
    # approval on the event loop's thread and end the span before the work ran.
    call_method = type(fn).__dict__.get("__call__") if not inspect.isfunction(fn) else None
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call_method):
        return cast(Callable[P, R], _async_wrapper(cast(Any, fn), name, annotations, binder))

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        st = settings()
        prep = prepare(
            st,
            name,
            lambda: plain_arguments(binder.arguments(args, kwargs)),
            mcp=False,
            annotations=annotations,
            rewrite=lambda new: _rewritten(binder, args, kwargs, new),
        )
        if prep is None:
            return fn(*args, **kwargs)
        if isinstance(prep, Denial):
            raise prep.to_exception()
        call_args, call_kwargs = _runnable(prep, args, kwargs)
        try:
            result = fn(*call_args, **call_kwargs)
        except BaseException as e:
            finish_exception(prep, e)
            raise
        finish_result(prep, _preview(result) if st.capture_results else None, is_error=False)
        return result

    return wrapper


def _async_wrapper(
    fn: Callable[..., Awaitable[Any]],
    name: str,
    annotations: Mapping[str, Any] | None,
    binder: _Binder,
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        st = settings()
        prep = await aprepare(
            st,
            name,
            lambda: plain_arguments(binder.arguments(args, kwargs)),
            mcp=False,
            annotations=annotations,
            rewrite=lambda new: _rewritten(binder, args, kwargs, new),
        )
        if prep is None:
            return await fn(*args, **kwargs)
        if isinstance(prep, Denial):
            raise prep.to_exception()
        call_args, call_kwargs = _runnable(prep, args, kwargs)
        try:
            result = await fn(*call_args, **call_kwargs)
        except BaseException as e:
            finish_exception(prep, e)
            raise
        finish_result(prep, _preview(result) if st.capture_results else None, is_error=False)
        return result

    return wrapper
