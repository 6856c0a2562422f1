"""The normalizer: any span, from any instrumentation, becomes one SPEC §3 row.

Input is either a live SDK ``ReadableSpan`` (the exporter's hot path,
:meth:`Normalizer.normalize_readable`) or a source-neutral :class:`SpanRecord` (OTLP/JSON
ingest, tests). Both go through the same core, so a span lands identically either way.

Mapping rules:

* tooltrail's own ``tooltrail.*`` attributes, plain GenAI / MCP semconv, OpenInference and
  OpenLLMetry names all map to the same columns (SPEC §2). Where several conventions name
  one column, the first present wins, in a fixed precedence (for the session key exactly
  SPEC §2's: ``tooltrail.session.id``, ``session.id``, ``gen_ai.conversation.id``,
  ``mcp.session.id``, the OpenLLMetry association property, else the trace id).
* An attribute whose value landed in a column is not repeated in the ``attributes`` JSON;
  every other attribute is kept there, including a lower-precedence synonym whose value
  differs from the winner's, and a value that does not fit its column's type or vocabulary
  (``tooltrail.decision = "MAYBE"``). Nothing is lost, and no column holds a bad value.
* ``governed_by`` says who made the span and enforced its decision: ``gateway`` for the
  MCP gateway's spans (``tooltrail.gateway = true``), ``instrumentation`` for spans of
  tooltrail's in-process instrumentation (which numbers every call it records:
  ``tooltrail.sequence``), null for third-party spans.
* Decision columns come from span attributes only and stay null when absent: the
  normalizer never invents a decision.
* Secrets never reach disk: every free-form column and the attributes / resource JSON go
  through the :class:`~tooltrail.redact.Redactor`, and ``redactions`` counts what it
  removed.

Speed: the exporter calls this for every span on the host's export thread, so the work per
span is kept to the attributes actually present. Which mapping applies to which attribute
depends only on the attribute *names*, and a process emits the same few name sets over and
over; that resolution is cached per name set (:class:`_Plan`).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from tooltrail import semconv as sc
from tooltrail._json import compact_encoder, dumps_iterative, loads_iterative
from tooltrail.redact import Redactor
from tooltrail.schema import BLAST_RADII, COLUMNS, DECISIONS, Row

# --- vocabulary ------------------------------------------------------------------------

SPAN_TYPE_TOOL: Final = "tool"
SPAN_TYPE_LLM: Final = "llm"
SPAN_TYPE_AGENT: Final = "agent"
SPAN_TYPE_OTHER: Final = "other"

# openinference.span.kind values (upper case in that convention).
OI_KIND_TOOL: Final = "TOOL"
OI_KINDS_LLM: Final = frozenset({"LLM", "EMBEDDING"})
OI_KIND_AGENT: Final = "AGENT"
# traceloop.span.kind values (lower case in that convention).
TL_KIND_TOOL: Final = "tool"
TL_KINDS_AGENT: Final = frozenset({"agent", "workflow"})
# OpenLLMetry names tool spans "{tool}.tool".
TL_TOOL_NAME_SUFFIX: Final = ".tool"
# Span-name prefixes that carry the tool name (SPEC §2).
_NAME_PREFIXES: Final = (sc.OP_EXECUTE_TOOL + " ", sc.MCP_METHOD_TOOLS_CALL + " ")
# OpenLLMetry wraps a task's inputs as {"args": [...], "kwargs": {...}}.
_TL_ARGS: Final = "args"
_TL_KWARGS: Final = "kwargs"
_TL_TOOL_NAME: Final = "tool_name"
_TL_ARGUMENTS: Final = "arguments"

RESULT_PREVIEW_CHARS: Final = 1000
# Results are scrubbed on a window this much longer than the preview before being cut, so
# a secret straddling the cut is still recognized whole (a PEM block cut short is caught
# by the redactor itself).
_SCRUB_MARGIN: Final = 2048
_SUMMARY_VALUE_CHARS: Final = 60
_SUMMARY_MAX_ARGS: Final = 3
_ELLIPSIS: Final = "…"
# Argument names worth showing in a derived action summary, best first, with their labels.
_SUMMARY_KEYS: Final = (
    ("repo_path", "repo"),
    ("repo", "repo"),
    ("repository", "repo"),
    ("branch_name", "branch"),
    ("branch", "branch"),
    ("target", "target"),
    ("path", "path"),
    ("file_path", "path"),
    ("files", "files"),
    ("command", "command"),
    ("url", "url"),
    ("query", "query"),
    ("message", "message"),
)
_SUMMARY_RANKS: Final = {key: rank for rank, (key, _) in enumerate(_SUMMARY_KEYS)}
_SUMMARY_LABELS: Final = dict(_SUMMARY_KEYS)

_KIND_NAMES: Final = {k: k.name for k in SpanKind}
_STATUS_NAMES: Final = {c: c.name for c in StatusCode}
_EMPTY_JSON: Final = "{}"
_PLAN_CACHE_MAX: Final = 1024


# --- input -----------------------------------------------------------------------------


@dataclass(slots=True)
class SpanRecord:
    """A span from any source, before normalization.

    Ids are lower-case hex (32 digits for the trace, 16 for spans); times are integer
    nanoseconds since the epoch; ``kind`` and ``status_code`` are OTel enum names
    (``"CLIENT"``, ``"ERROR"``); ``events`` are ``(name, attributes)`` pairs.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str = "INTERNAL"
    start_ns: int = 0
    end_ns: int | None = None
    status_code: str = "UNSET"
    status_message: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    resource: Mapping[str, Any] = field(default_factory=dict)
    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)


def from_readable_span(span: ReadableSpan) -> SpanRecord:
    """The source-neutral record of an SDK span."""
    ctx = span.context
    if ctx is None:
        raise ValueError(f"span {span.name!r} has no span context")
    parent = span.parent
    return SpanRecord(
        trace_id=format(ctx.trace_id, "032x"),
        span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None else None,
        name=span.name,
        kind=_KIND_NAMES[span.kind],
        start_ns=span.start_time or 0,
        end_ns=span.end_time,
        status_code=_STATUS_NAMES[span.status.status_code],
        status_message=span.status.description,
        attributes=dict(span.attributes or {}),
        resource=dict(span.resource.attributes),
        events=[(e.name, dict(e.attributes or {})) for e in span.events],
    )


# --- value conversion: None means "does not fit the column" -----------------------------


def _to_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v or None
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return str(v)
    return None


# The redactions column is int32; a producer's count beyond it is capped, not an error.
REDACTIONS_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _to_int(v: Any) -> int | None:
    """An int64 column value; anything else (a bool, text, beyond int64) does not fit."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        out = v
    elif isinstance(v, float) and v.is_integer():
        out = int(v)
    elif isinstance(v, str):
        try:
            out = int(v.strip())
        except ValueError:
            return None
    else:
        return None
    return out if _INT64_MIN <= out <= _INT64_MAX else None


def _to_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) else None


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
    return None


def _to_decision(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    d = v.strip().upper()
    return d if d in DECISIONS else None


_RADII_BY_LOWER: Final = {r.lower(): r for r in BLAST_RADII}


def _to_blast_radius(v: Any) -> str | None:
    return _RADII_BY_LOWER.get(v.strip().lower()) if isinstance(v, str) else None


def _to_str_list(v: Any) -> list[str] | None:
    """Rule ids from a sequence attribute, a JSON array or a comma-separated string."""
    if isinstance(v, list | tuple):
        return [str(x) for x in v]
    if not isinstance(v, str):
        return None
    text = v.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        return [str(x) for x in parsed] if isinstance(parsed, list) else None
    return [part.strip() for part in text.split(",") if part.strip()]


def _to_any(v: Any) -> Any:
    return v


def _to_gateway(v: Any) -> str | None:
    """``tooltrail.gateway = true`` lands as governed_by ``gateway``; any other value does
    not fit (it stays in ``attributes``)."""
    return sc.GOVERNED_BY_GATEWAY if _to_bool(v) is True else None


Converter = Callable[[Any], Any]

# attribute -> (column, converter): attributes that alone fill a column. _to_str columns
# take a non-empty str as is, without a call (the common case on the hot path).
_SIMPLE: Final[dict[str, tuple[str, Converter]]] = {
    sc.TT_PARENT_SESSION_ID: ("parent_session_id", _to_str),
    sc.TT_SEQUENCE: ("sequence", _to_int),
    sc.GEN_AI_AGENT_NAME: ("agent_name", _to_str),
    sc.GEN_AI_AGENT_ID: ("agent_id", _to_str),
    sc.TT_TRIGGER: ("trigger", _to_str),
    sc.MCP_SERVER_NAME: ("mcp_server", _to_str),
    sc.TT_ARGUMENTS_REWRITTEN: ("arguments_rewritten", _to_any),
    sc.TT_ACTION_SUMMARY: ("action_summary", _to_str),
    sc.TT_DECISION: ("decision", _to_decision),
    sc.TT_POLICY_RULE: ("policy_rule", _to_str),
    sc.TT_POLICY_MATCHED: ("policy_matched", _to_str_list),
    sc.TT_POLICY_VERSION: ("policy_version", _to_str),
    sc.TT_ENFORCED: ("enforced", _to_bool),
    sc.TT_BLAST_RADIUS: ("blast_radius", _to_blast_radius),
    sc.TT_TARGET_REPO: ("target_repo", _to_str),
    sc.TT_TARGET_BRANCH: ("target_branch", _to_str),
    sc.TT_TARGET_PATH: ("target_path", _to_str),
    sc.TT_APPROVAL_ID: ("approval_id", _to_str),
    sc.TT_APPROVAL_STATUS: ("approval_status", _to_str),
    sc.TT_APPROVAL_DECIDED_BY: ("approval_decided_by", _to_str),
    sc.TT_APPROVAL_WAIT_MS: ("approval_wait_ms", _to_float),
    sc.ERROR_TYPE: ("error_type", _to_str),
    sc.TT_GATEWAY: ("governed_by", _to_gateway),
    sc.TT_MCP_CLIENT_NAME: ("mcp_client_name", _to_str),
    sc.TT_MCP_CLIENT_VERSION: ("mcp_client_version", _to_str),
    sc.TT_TOOL_DEFINITION_CHANGED: ("tool_definition_changed", _to_bool),
    sc.TT_TOOL_DEFINITION_HASH: ("tool_definition_hash", _to_str),
}

# Columns several conventions name: the first present (and convertible) wins.
_SESSION_KEYS: Final = (
    sc.TT_SESSION_ID,
    sc.SESSION_ID,
    sc.GEN_AI_CONVERSATION_ID,
    sc.MCP_SESSION_ID,
    sc.TRACELOOP_SESSION_ID,
)
# traceloop.entity.name names the tool only on traceloop tool spans (checked per span).
_TOOL_NAME_KEYS: Final = (sc.GEN_AI_TOOL_NAME, sc.OI_TOOL_NAME, sc.TRACELOOP_ENTITY_NAME)
# input.value / traceloop.entity.input are a tool's arguments only on tool spans; on LLM
# spans they hold prompts, which stay in `attributes`.
_ARGUMENT_KEYS: Final = (sc.GEN_AI_TOOL_CALL_ARGUMENTS,)
_ARGUMENT_KEYS_TOOL: Final = (
    sc.GEN_AI_TOOL_CALL_ARGUMENTS,
    sc.OI_INPUT_VALUE,
    sc.TRACELOOP_ENTITY_INPUT,
)
_RESULT_KEYS: Final = (sc.GEN_AI_TOOL_CALL_RESULT,)
_RESULT_KEYS_TOOL: Final = (
    sc.GEN_AI_TOOL_CALL_RESULT,
    sc.OI_OUTPUT_VALUE,
    sc.TRACELOOP_ENTITY_OUTPUT,
)
_INPUT_TOKEN_KEYS: Final = (
    sc.GEN_AI_USAGE_INPUT_TOKENS,
    sc.GEN_AI_USAGE_PROMPT_TOKENS,
    sc.OI_LLM_TOKEN_PROMPT,
    sc.LLM_USAGE_PROMPT_TOKENS,
)
_OUTPUT_TOKEN_KEYS: Final = (
    sc.GEN_AI_USAGE_OUTPUT_TOKENS,
    sc.GEN_AI_USAGE_COMPLETION_TOKENS,
    sc.OI_LLM_TOKEN_COMPLETION,
    sc.LLM_USAGE_COMPLETION_TOKENS,
)
# SPEC §2 names the request model; the response model is the fallback.
_MODEL_KEYS: Final = (sc.GEN_AI_REQUEST_MODEL, sc.GEN_AI_RESPONSE_MODEL, sc.OI_LLM_MODEL_NAME)
_TOKEN_KEYS: Final = frozenset(_INPUT_TOKEN_KEYS + _OUTPUT_TOKEN_KEYS)

_ROW_TEMPLATE: Final[Row] = dict.fromkeys(COLUMNS)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to read for one set of attribute names: the present keys of each mapping."""

    simple: tuple[tuple[str, str, Converter], ...]
    session: tuple[str, ...]
    tool_name: tuple[str, ...]
    arguments: tuple[str, ...]
    arguments_tool: tuple[str, ...]
    result: tuple[str, ...]
    result_tool: tuple[str, ...]
    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]
    model: tuple[str, ...]

    @classmethod
    def of(cls, names: Sequence[str]) -> _Plan:
        present = set(names)

        def keep(keys: Sequence[str]) -> tuple[str, ...]:
            return tuple(k for k in keys if k in present)

        return cls(
            simple=tuple((k, *_SIMPLE[k]) for k in names if k in _SIMPLE),
            session=keep(_SESSION_KEYS),
            tool_name=keep(_TOOL_NAME_KEYS),
            arguments=keep(_ARGUMENT_KEYS),
            arguments_tool=keep(_ARGUMENT_KEYS_TOOL),
            result=keep(_RESULT_KEYS),
            result_tool=keep(_RESULT_KEYS_TOOL),
            input_tokens=keep(_INPUT_TOKEN_KEYS),
            output_tokens=keep(_OUTPUT_TOKEN_KEYS),
            model=keep(_MODEL_KEYS),
        )


def _take_first(
    rest: dict[str, Any], keys: Sequence[str], conv: Converter
) -> tuple[Any, str | None]:
    """The first of ``keys`` whose value fits; consumes it from ``rest``.

    Lower-precedence synonyms holding the same value are consumed too (they are already
    represented); ones that differ stay in ``rest``, and so in the ``attributes`` JSON.
    Returns (converted value, winning key), or (None, None).
    """
    for i, key in enumerate(keys):
        raw = rest[key]
        if conv is _to_str and type(raw) is str and raw:
            value: Any = raw
        else:
            value = conv(raw)
            if value is None:
                continue
        del rest[key]
        for other in keys[i + 1 :]:
            if rest.get(other) == raw:
                del rest[other]
        return value, key
    return None, None


def _str_or_none(v: Any) -> str | None:
    return v if type(v) is str else None


def classify(attrs: Mapping[str, Any]) -> str:
    """span_type from explicit markers first (tool, then llm, then agent), then usage."""
    op = attrs.get(sc.GEN_AI_OPERATION_NAME)
    if op == sc.OP_EXECUTE_TOOL:
        return SPAN_TYPE_TOOL
    # Only strings are compared against the vocabularies (a list value is not hashable).
    op = op if type(op) is str else None
    oi = _str_or_none(attrs.get(sc.OPENINFERENCE_SPAN_KIND))
    tl = _str_or_none(attrs.get(sc.TRACELOOP_SPAN_KIND))
    if (
        oi == OI_KIND_TOOL
        or tl == TL_KIND_TOOL
        or attrs.get(sc.MCP_METHOD_NAME) == sc.MCP_METHOD_TOOLS_CALL
    ):
        return SPAN_TYPE_TOOL
    if op in sc.LLM_OPERATIONS or oi in OI_KINDS_LLM:
        return SPAN_TYPE_LLM
    if (
        op in (sc.OP_INVOKE_AGENT, sc.OP_CREATE_AGENT)
        or oi == OI_KIND_AGENT
        or tl in TL_KINDS_AGENT
    ):
        return SPAN_TYPE_AGENT
    # OpenLLMetry marks no kind on LLM calls: a model plus token usage identifies them.
    if any(k in attrs for k in _MODEL_KEYS) and any(k in attrs for k in _TOKEN_KEYS):
        return SPAN_TYPE_LLM
    return SPAN_TYPE_OTHER


def _tool_from_span_name(name: str, tl_kind: Any) -> str | None:
    for prefix in _NAME_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :].strip() or None
    if tl_kind == TL_KIND_TOOL and name.endswith(TL_TOOL_NAME_SUFFIX):
        return name[: -len(TL_TOOL_NAME_SUFFIX)] or None
    return None


# --- JSON ------------------------------------------------------------------------------


def _json_default(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, set | frozenset):
        return sorted(v, key=str)
    return str(v)


def _finite(v: Any) -> Any:
    """NaN and infinity are not JSON: spell them as strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Mapping):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


# Built once and self-checked (tooltrail._json): JSONEncoder.encode builds a new C encoder
# on every call, which costs half of serializing a span's few leftover attributes.
_encode: Final = compact_encoder(default=_json_default, sort_keys=True, allow_nan=False)


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN / Infinity; they are not JSON, and DuckDB would refuse them.
    raise ValueError(f"{name} is not valid JSON")


_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)
# The decoder's C scanner (an undocumented but long-stable attribute of JSONDecoder).
_scan_once: Final[Callable[[str, int], tuple[Any, int]]] = _decoder.scan_once  # type: ignore[attr-defined]
_JSON_START: Final = frozenset('{["-0123456789tfn')


def to_json(value: Any) -> str:
    """Compact JSON with sorted keys; always valid (NaN and infinity become strings)."""
    try:
        return _encode(value)
    except ValueError:  # NaN or infinity inside: spelled as strings
        try:
            return _encode(_finite(value))
        except RecursionError:
            pass
    except RecursionError:
        pass
    # Nested deeper than the interpreter's stack allows (or circular: ValueError).
    return dumps_iterative(value, default=_json_default, sort_keys=True)


def _parse_json(text: str) -> tuple[bool, Any]:
    """(True, value) when ``text`` is exactly one JSON document, else (False, None)."""
    # The C scanner directly: json.loads adds two regex whitespace scans per call.
    if text[:1] in _JSON_START and not text[-1:].isspace():
        try:
            value, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            return False, None
        except RecursionError:  # nested past the C scanner's depth: read it without recursion
            return _parse_deep(text)
        return end == len(text), value
    try:
        return True, _decoder.decode(text)
    except ValueError:
        return False, None
    except RecursionError:
        return _parse_deep(text)


def _parse_deep(text: str) -> tuple[bool, Any]:
    """:func:`_parse_json` for a document nested too deeply for the C scanner: a sender
    must not keep its arguments out of the record (and out of the policy's and the
    scrubber's sight) by nesting them 5,000 deep."""
    try:
        return True, loads_iterative(text)
    except ValueError:
        return False, None


def _json_text(value: Any) -> tuple[str, Any]:
    """(valid JSON text, parsed value) for an arguments attribute.

    A string that already is JSON is kept as is; other text becomes a JSON string literal;
    a mapping or sequence (extended attributes, OTLP kvlists) is serialized.
    """
    if isinstance(value, str):
        ok, parsed = _parse_json(value)
        if ok:
            return value, parsed
    return to_json(value), value


def _unwrap_traceloop(parsed: Any) -> Any:
    """The tool's own arguments inside OpenLLMetry's ``traceloop.entity.input`` wrappers:
    ``{"args": [], "kwargs": {...}}`` (functions) and ``{"tool_name", "arguments"}`` (MCP)."""
    if not isinstance(parsed, dict):
        return parsed
    keys = parsed.keys()
    if keys == {_TL_ARGS, _TL_KWARGS} and not parsed[_TL_ARGS]:
        inner = parsed[_TL_KWARGS]
    elif keys == {_TL_TOOL_NAME, _TL_ARGUMENTS}:
        inner = parsed[_TL_ARGUMENTS]
    else:
        return parsed
    return inner if isinstance(inner, dict) else parsed


# --- action summary --------------------------------------------------------------------


def _short(value: Any) -> str:
    text = value if type(value) is str else to_json(value)
    if "\n" in text:  # one line per summary
        text = " ".join(text.split())
    if len(text) > _SUMMARY_VALUE_CHARS:
        text = text[: _SUMMARY_VALUE_CHARS - 1] + _ELLIPSIS
    return '"' + text + '"' if " " in text else text


@functools.lru_cache(maxsize=1024)
def _ranked_keys(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The known summary keys among ``names``, best first, with their labels (a tool is
    called with the same argument names over and over: ranked once per name set)."""
    known = sorted(set(names) & _SUMMARY_RANKS.keys(), key=_SUMMARY_RANKS.__getitem__)
    return tuple((key, _SUMMARY_LABELS[key]) for key in known)


def derive_summary(
    tool: str,
    repo: str | None = None,
    branch: str | None = None,
    path: str | None = None,
    args: Any = None,
) -> str:
    """``git_commit repo=/x branch=main``: the tool, its targets, then a few arguments.

    Targets first (the policy's view of where the call lands), then up to three of the
    best-known argument names, or, when there are none, the first few scalar arguments.
    Values are cut to 60 characters and quoted when they hold spaces.
    """
    parts = [tool]
    used = []
    if repo is not None:
        parts.append("repo=" + _short(repo))
        used.append("repo")
    if branch is not None:
        parts.append("branch=" + _short(branch))
        used.append("branch")
    if path is not None:
        parts.append("path=" + _short(path))
        used.append("path")
    if type(args) is not dict or not args:
        return " ".join(parts)
    ranked = _ranked_keys(tuple(args))
    if ranked:
        shown = 0
        for key, label in ranked:
            value = args[key]
            if value is None or label in used:
                continue  # e.g. repo_path and repo both given: the better one only
            used.append(label)
            parts.append(label + "=" + _short(value))
            shown += 1
            if shown == _SUMMARY_MAX_ARGS:
                break
    elif len(parts) == 1:
        scalars = [(k, v) for k, v in args.items() if isinstance(v, str | int | float | bool)]
        parts.extend(f"{k}={_short(v)}" for k, v in scalars[:_SUMMARY_MAX_ARGS])
    return " ".join(parts)


# --- the normalizer --------------------------------------------------------------------

# Plain-text columns the redactor scrubs (arguments and results are handled on their own):
# every text column a producer controls. Targets come straight from arguments (a
# repository URL may carry a token) and feed the derived summary, as does the tool name,
# so all are scrubbed before the summary is built. Left out: the vocabulary-checked columns
# (decision, blast_radius, kind, span_type, status_code), ids and hashes tooltrail makes
# (approval id, policy version, approval status), and the policy's verdict, which is a rule
# id from the operator's policy file or "pass" (a word the credential pre-check flags:
# probing it would send every allowed span down the slow path for nothing).
_SCRUBBED_PLAIN_COLUMNS: Final = (
    "name",
    "status_message",
    "error_type",
    "session_id",
    "parent_session_id",
    "agent_name",
    "agent_id",
    "trigger",
    "tool_name",
    "mcp_server",
    "action_summary",
    "target_repo",
    "target_branch",
    "target_path",
    "approval_decided_by",
    "model",
    "mcp_client_name",
    "mcp_client_version",
)
_PROBED_COLUMNS: Final = ("arguments", "arguments_rewritten", *_SCRUBBED_PLAIN_COLUMNS)
# Scalars an array attribute may hold and the pre-check can read as they are.
_FLAT: Final = (str, int, float, type(None))


class Normalizer:
    """Maps spans to landed rows.

    Args:
        redactor: scrubs credentials before a row is returned; None turns redaction off
            (``TOOLTRAIL_REDACT=0``). Required, so nobody disables it by omission.
        result_preview_chars: ``result_preview`` is cut to this many characters, after
            scrubbing.

    Safe to share between threads: its state is caches whose entries are immutable.
    """

    __slots__ = ("_plans", "_preview_chars", "_redactor", "_resource_cache")

    def __init__(
        self, redactor: Redactor | None, *, result_preview_chars: int = RESULT_PREVIEW_CHARS
    ) -> None:
        if result_preview_chars < 1:
            raise ValueError("result_preview_chars must be at least 1")
        self._redactor = redactor if redactor is not None and redactor.enabled else None
        self._preview_chars = result_preview_chars
        self._plans: dict[tuple[str, ...], _Plan] = {}
        # (resource object, resource JSON, service.name, redactions). A process has one
        # resource, so one slot nearly always hits; the identity check keeps it correct.
        self._resource_cache: tuple[object, str, str | None, int] | None = None

    @property
    def redactor(self) -> Redactor | None:
        return self._redactor

    def normalize(self, rec: SpanRecord) -> Row:
        """The landed row of one source-neutral span record."""
        return self._build(
            rec.trace_id,
            rec.span_id,
            rec.parent_span_id or None,
            rec.name,
            rec.kind,
            rec.start_ns,
            rec.end_ns,
            rec.status_code,
            rec.status_message,
            rec.attributes,
            rec.resource,
            rec.resource,
            _exception_type_of_pairs(rec.events) if rec.events else None,
        )

    def normalize_readable(self, span: ReadableSpan) -> Row:
        """The landed row of an SDK span, without building a :class:`SpanRecord`.

        Reads the SDK's own fields rather than its properties: ``attributes`` builds a new
        MappingProxy per access, and on this path every property call shows. Any other
        ReadableSpan-like object goes through :func:`from_readable_span`.
        """
        try:
            ctx = span._context
            parent = span._parent
            status = span._status
            raw = span._attributes
            resource = span._resource
            events = span._events
            name, kind, start, end = span._name, span._kind, span._start_time, span._end_time
        except AttributeError:
            return self.normalize(from_readable_span(span))
        if ctx is None:
            raise ValueError(f"span {name!r} has no span context")
        # BoundedAttributes keeps a plain dict: read it without the wrapper's lock.
        attrs: Mapping[str, Any] = getattr(raw, "_dict", None) or raw or {}
        return self._build(
            format(ctx.trace_id, "032x"),
            format(ctx.span_id, "016x"),
            format(parent.span_id, "016x") if parent is not None else None,
            name,
            _KIND_NAMES[kind],
            start or 0,
            end,
            _STATUS_NAMES[status.status_code],
            status.description,
            attrs,
            resource,
            resource.attributes,
            _exception_type_of_events(events) if events else None,
        )

    def _plan(self, attrs: Mapping[str, Any]) -> _Plan:
        names = tuple(attrs)
        plan = self._plans.get(names)
        if plan is None:
            plan = _Plan.of(names)
            if len(self._plans) >= _PLAN_CACHE_MAX:
                self._plans.clear()
            self._plans[names] = plan
        return plan

    def _resource(self, key: object, attrs: Mapping[str, Any]) -> tuple[str, str | None, int]:
        cached = self._resource_cache
        if cached is not None and cached[0] is key:
            return cached[1], cached[2], cached[3]
        plain: Any = dict(attrs)
        count = 0
        if self._redactor is not None:
            plain, count = self._redactor.scrub_obj(plain)
        service = _to_str(plain.get(sc.SERVICE_NAME))  # as scrubbed, like the JSON
        text = to_json(plain) if plain else _EMPTY_JSON
        self._resource_cache = (key, text, service, count)
        return text, service, count

    def _build(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        name: str,
        kind: str,
        start_ns: int,
        end_ns: int | None,
        status_code: str,
        status_message: str | None,
        attrs: Mapping[str, Any],
        resource_key: object,
        resource_attrs: Mapping[str, Any],
        exception_type: str | None,
    ) -> Row:
        plan = self._plan(attrs)
        row: Row = _ROW_TEMPLATE.copy()
        rest: dict[str, Any] = dict(attrs)
        for key, column, conv in plan.simple:
            value = rest[key]
            if conv is _to_str and type(value) is str and value:
                row[column] = value
            else:
                value = conv(value)
                if value is None:
                    continue  # does not fit the column: stays visible in `attributes`
                row[column] = value
            del rest[key]

        if row["governed_by"] is None and row["sequence"] is not None:
            row["governed_by"] = sc.GOVERNED_BY_INSTRUMENTATION

        span_type = classify(attrs)
        is_tool = span_type == SPAN_TYPE_TOOL
        tl_kind = attrs.get(sc.TRACELOOP_SPAN_KIND)

        session = _take_first(rest, plan.session, _to_str)[0] if plan.session else None
        tool = None
        if plan.tool_name:
            keys = plan.tool_name
            if tl_kind != TL_KIND_TOOL and keys[-1] == sc.TRACELOOP_ENTITY_NAME:
                keys = keys[:-1]
            tool = _take_first(rest, keys, _to_str)[0]
        if tool is None and is_tool:
            tool = _tool_from_span_name(name, tl_kind)
        args_keys = plan.arguments_tool if is_tool else plan.arguments
        raw_args, args_key = _take_first(rest, args_keys, _to_any) if args_keys else (None, None)
        result_keys = plan.result_tool if is_tool else plan.result
        raw_result = _take_first(rest, result_keys, _to_any)[0] if result_keys else None
        if plan.input_tokens:
            row["input_tokens"] = _take_first(rest, plan.input_tokens, _to_int)[0]
        if plan.output_tokens:
            row["output_tokens"] = _take_first(rest, plan.output_tokens, _to_int)[0]
        if plan.model:
            row["model"] = _take_first(rest, plan.model, _to_str)[0]

        resource_json, service, redactions = self._resource(resource_key, resource_attrs)
        # Values the policy redacted at call time, before the arguments were recorded.
        at_call = rest.pop(sc.TT_REDACTIONS, None) if sc.TT_REDACTIONS in rest else None
        if type(at_call) is int and at_call > 0:
            redactions += at_call

        # Arguments are always valid JSON, parsed once for scrubbing and the summary.
        parsed: Any = None
        if raw_args is not None:
            arguments, parsed = _json_text(raw_args)
            if args_key == sc.TRACELOOP_ENTITY_INPUT:
                unwrapped = _unwrap_traceloop(parsed)
                if unwrapped is not parsed:
                    parsed, arguments = unwrapped, to_json(unwrapped)
            row["arguments"] = arguments
        if row["arguments_rewritten"] is not None:
            row["arguments_rewritten"] = _json_text(row["arguments_rewritten"])[0]
        result: str | None = None
        if raw_result is not None:
            result = raw_result if isinstance(raw_result, str) else to_json(raw_result)
        row["status_message"] = status_message or None
        row["name"] = name
        row["session_id"] = session
        row["tool_name"] = tool
        if row["error_type"] is None:
            row["error_type"] = exception_type

        redactor = self._redactor
        if redactor is not None and self._needs_scrub(redactor, row, result, rest):
            parsed, result, rest, n = self._scrub(redactor, row, parsed, result, rest)
            redactions += n
        if result is not None and len(result) > self._preview_chars:
            result = result[: self._preview_chars - 1] + _ELLIPSIS

        tool = row["tool_name"]
        if is_tool and tool is not None and row["action_summary"] is None:
            # Built from scrubbed values only (tool, targets, arguments): no scrub of its own.
            row["action_summary"] = derive_summary(
                tool, row["target_repo"], row["target_branch"], row["target_path"], parsed
            )

        row["trace_id"] = trace_id
        row["span_id"] = span_id
        row["parent_span_id"] = parent_id
        row["kind"] = kind
        row["span_type"] = span_type
        row["start_time"] = start_ns
        row["end_time"] = end_ns
        row["duration_ms"] = (end_ns - start_ns) / 1e6 if end_ns is not None else None
        row["status_code"] = status_code
        if row["session_id"] is None:
            row["session_id"] = trace_id
        row["service_name"] = service
        row["result_preview"] = result
        row["redactions"] = min(redactions, REDACTIONS_MAX)
        row["attributes"] = to_json(rest) if rest else _EMPTY_JSON
        row["resource"] = resource_json
        return row

    def _needs_scrub(
        self, redactor: Redactor, row: Row, result: str | None, rest: Mapping[str, Any]
    ) -> bool:
        """One cheap probe over every text of the row that lands (nearly always False)."""
        if not redactor.all_keys_clean(rest.keys()):
            return True
        probe = [row[c] for c in _PROBED_COLUMNS]
        if result:
            probe.append(result[: self._preview_chars + _SCRUB_MARGIN])
        for value in rest.values():
            if type(value) is str:
                probe.append(value)
            elif isinstance(value, list | tuple):
                if not all(isinstance(v, _FLAT) for v in value):
                    return True  # a mapping or a list inside: walk it
                probe.extend(v for v in value if isinstance(v, str))
            elif not isinstance(value, int | float):  # mappings, bytes: walk them
                return True
        return redactor.maybe_sensitive("\x00".join(filter(None, probe)))

    def _scrub(
        self,
        redactor: Redactor,
        row: Row,
        parsed: Any,
        result: str | None,
        rest: dict[str, Any],
    ) -> tuple[Any, str | None, dict[str, Any], int]:
        """Scrub every free-form column in place; returns the scrubbed args, result, rest."""
        total = 0
        secrets: list[Any] = []
        if row["arguments"] is not None and redactor.maybe_sensitive(row["arguments"]):
            secrets = redactor.secret_values(parsed)
            parsed, n = redactor.scrub_obj(parsed)
            if n:
                row["arguments"] = to_json(parsed)
                total += n
        if row["arguments_rewritten"] is not None:
            row["arguments_rewritten"], n = redactor.scrub_json(row["arguments_rewritten"])
            total += n
        for column in _SCRUBBED_PLAIN_COLUMNS:
            if row[column] is not None:
                row[column], n = redactor.scrub_text(row[column])
                total += n
        if result is not None:
            window = result[: self._preview_chars + _SCRUB_MARGIN]
            if len(window) == len(result) and result[:1] in ("{", "["):
                result, n = redactor.scrub_json(result)  # a whole JSON result: key names too
            else:
                result, n = redactor.scrub_text(window)
            total += n
        if secrets:
            # A token under `token` has no shape the patterns know: erase its value where
            # the tool quoted it (the result, an error message) as the key was erased.
            result, n = _erase_values(secrets, row, result)
            total += n
        scrubbed_rest, n = redactor.scrub_obj(rest)
        return parsed, result, scrubbed_rest, total + n


def _erase_values(secrets: list[Any], row: Row, result: str | None) -> tuple[str | None, int]:
    """Replace the texts of ``secrets`` in the row's free-text columns and ``result``."""
    from tooltrail.policy.model import TextRedaction  # only rows quoting a secret key

    erase = TextRedaction.of(secrets, [])
    if erase is None:
        return result, 0
    total = 0
    for column in _SCRUBBED_PLAIN_COLUMNS:
        if row[column] is not None:
            row[column], n = erase.scrub(row[column])
            total += n
    if result is not None:
        result, n = erase.scrub(result)
        total += n
    return result, total


def _exception_type_of_pairs(events: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    for name, attrs in events:
        if name == sc.EXCEPTION_EVENT:
            found = _to_str(attrs.get(sc.EXCEPTION_TYPE))
            if found is not None:
                return found
    return None


def _exception_type_of_events(events: Sequence[Any]) -> str | None:
    for event in events:
        if event.name == sc.EXCEPTION_EVENT:
            found = _to_str((event.attributes or {}).get(sc.EXCEPTION_TYPE))
            if found is not None:
                return found
    return None


__all__ = [
    "RESULT_PREVIEW_CHARS",
    "SPAN_TYPE_AGENT",
    "SPAN_TYPE_LLM",
    "SPAN_TYPE_OTHER",
    "SPAN_TYPE_TOOL",
    "Normalizer",
    "SpanRecord",
    "classify",
    "derive_summary",
    "from_readable_span",
    "to_json",
]
