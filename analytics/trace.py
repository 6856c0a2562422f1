"""A session's activity trace: LLM steps, tool calls, control events and its end, in order.

``session_trace.sql`` lists the entries; this module reads what the model was asked and
answered out of each LLM span's landed ``attributes`` (the GenAI semantic conventions'
``gen_ai.input.messages`` / ``gen_ai.output.messages``, their older indexed
``gen_ai.prompt.N.*`` / ``gen_ai.completion.N.*`` as OpenLLMetry records them, and
OpenInference's ``llm.input_messages.N.message.*`` / ``input.value`` / ``output.value``),
adds the session's final output (its end record's ``tooltrail.session.output``, else the
output of its last root agent span) and applies the filter. Prompts and outputs are only
there when the instrumentation recorded them (content capture is opt-in in most of them);
they were scrubbed on landing like every attribute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

import polars as pl

from tooltrail.semconv import TT_SESSION_OUTPUT

# all: every entry; reasoning: the model's steps and the final output; tools: tool calls.
# Control events and the session's end frame the story: every filter keeps them.
TRACE_FILTERS: Final = ("all", "reasoning", "tools")
_ENTRIES: Final[dict[str, frozenset[str]]] = {
    "all": frozenset({"llm", "agent", "tool", "output", "control", "end"}),
    "reasoning": frozenset({"llm", "agent", "output", "control", "end"}),
    "tools": frozenset({"tool", "control", "end"}),
}
# The columns of a trace, in order (the SQL's, less `attributes` and `rank`, plus these).
TRACE_EXTRA_COLUMNS: Final = ("summary", "prompt", "output")
_SUMMARY_CHARS: Final = 200
_CONTROL_WORDS: Final = {
    "pause": "session paused",
    "resume": "session resumed",
    "cancel": "session canceled",
    "complete": "session marked complete",
}

_INDEXED: Final = re.compile(r"^(?P<base>.+)\.(?P<n>\d+)\.(?P<field>.+)$")
_PROMPT_KEYS: Final = ("gen_ai.input.messages", "gen_ai.prompt", "input.value")
_OUTPUT_KEYS: Final = ("gen_ai.output.messages", "gen_ai.completion", "output.value")
# Indexed message lists: (prefix, role field, content field).
_PROMPT_LISTS: Final = (
    ("gen_ai.prompt", "role", "content"),
    ("llm.input_messages", "message.role", "message.content"),
)
_OUTPUT_LISTS: Final = (
    ("gen_ai.completion", "role", "content"),
    ("llm.output_messages", "message.role", "message.content"),
)


def _attributes(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _message_text(message: Any) -> str:
    """One semconv message (``{"role", "parts": [{"type": "text", "content"}]}``, or an
    OpenAI-style ``{"role", "content"}``) as ``role: text``."""
    if not isinstance(message, Mapping):
        return str(message)
    role = message.get("role")
    parts = message.get("parts")
    if isinstance(parts, list):
        texts = []
        for part in parts:
            if isinstance(part, Mapping):
                content = part.get("content", part.get("text"))
                if content is None and part.get("type") == "tool_call":
                    content = f"[tool call {part.get('name')}]"
                texts.append(content if isinstance(content, str) else json.dumps(content))
            else:
                texts.append(str(part))
        text = "\n".join(t for t in texts if t)
    else:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
    return f"{role}: {text}" if role else text


def _messages(value: Any) -> str:
    """A recorded prompt or output as text: a JSON list of messages read message by
    message, any other string as it is."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, list):
            return "\n".join(_message_text(m) for m in parsed)
        if isinstance(parsed, Mapping) and ("role" in parsed or "parts" in parsed):
            return _message_text(parsed)
        return value
    if isinstance(value, list):
        return "\n".join(_message_text(m) for m in value)
    return json.dumps(value)


def _indexed(attrs: Mapping[str, Any], lists: tuple[tuple[str, str, str], ...]) -> str | None:
    for prefix, role_field, content_field in lists:
        found: dict[int, dict[str, Any]] = {}
        for key, value in attrs.items():
            m = _INDEXED.match(key)
            if m is None or m["base"] != prefix:
                continue
            found.setdefault(int(m["n"]), {})[m["field"]] = value
        lines = []
        for n in sorted(found):
            content = found[n].get(content_field)
            if content is None:
                continue
            role = found[n].get(role_field)
            lines.append(f"{role}: {content}" if role else str(content))
        if lines:
            return "\n".join(lines)
    return None


def _first(
    attrs: Mapping[str, Any], keys: tuple[str, ...], lists: tuple[tuple[str, str, str], ...]
) -> str | None:
    for key in keys:
        if attrs.get(key) is not None:
            return _messages(attrs[key])
    return _indexed(attrs, lists)


def prompt_and_output(attributes: Any) -> tuple[str | None, str | None]:
    """What an LLM (or agent) span recorded it was asked and answered, as text."""
    attrs = _attributes(attributes)
    if not attrs:
        return None, None
    prompt = _first(attrs, _PROMPT_KEYS, _PROMPT_LISTS)
    instructions = attrs.get("gen_ai.system_instructions")
    if instructions is not None:
        prompt = "\n".join(p for p in (f"system: {_messages(instructions)}", prompt) if p)
    return prompt, _first(attrs, _OUTPUT_KEYS, _OUTPUT_LISTS)


def _final_output(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The session's final output entry: its last end record's output, else the output
    of its last root agent span; None when neither recorded one. An end record another
    agent sent into the session (``claimed``) is not the session's: its output is not."""
    for row in reversed(rows):
        if row["entry"] != "end" or row.get("claimed"):
            continue
        attrs = _attributes(row["attributes"])
        text = attrs.get(TT_SESSION_OUTPUT)
        if text is None and row["actor"] == "agent":
            text = prompt_and_output(row["attributes"])[1]
        if text is not None:
            return {**row, "entry": "output", "output": str(text), "prompt": None, "outcome": None}
    return None


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _SUMMARY_CHARS else line[: _SUMMARY_CHARS - 1] + "…"


def _summary(row: Mapping[str, Any]) -> str | None:
    """One line saying what the entry is, for tables and timelines; ``(claimed)`` after
    an entry tooltrail does not believe (session_trace.sql)."""
    said = _said(row)
    return f"{said or row.get('name')} (claimed)" if row.get("claimed") else said


def _said(row: Mapping[str, Any]) -> str | None:
    entry = row["entry"]
    if entry == "llm":
        said = _first_line(row.get("output")) or _first_line(row.get("prompt"))
        return " — ".join(x for x in (row.get("model") or row.get("name"), said) if x)
    if entry == "tool":
        return row.get("action_summary") or row.get("tool_name") or row.get("name")
    if entry == "control":
        return _CONTROL_WORDS.get(str(row.get("name")), f"session {row.get('name')}")
    if entry == "end":
        return f"session ended: {row.get('outcome')}"
    if entry == "output":
        return _first_line(row.get("output"))
    return row.get("name")


def build_trace(frame: pl.DataFrame, only: str) -> pl.DataFrame:
    """The entries of ``session_trace.sql`` with prompts, outputs and the final output,
    filtered by ``only`` (one of TRACE_FILTERS)."""
    rows = frame.to_dicts()
    for row in rows:
        row["prompt"], row["output"] = (
            prompt_and_output(row["attributes"])
            if row["entry"] in ("llm", "agent")
            else (None, None)
        )
    final = _final_output(rows)
    if final is not None:
        # Just before the end entry that carried it (the answer, then "ended").
        at = next(
            i
            for i, r in enumerate(rows)
            if r["entry"] == "end" and r["span_id"] == final["span_id"]
        )
        rows.insert(at, final)
    for row in rows:
        row["summary"] = _summary(row)
    keep = _ENTRIES[only]
    columns = [c for c in frame.columns if c not in ("attributes", "rank")]
    columns += list(TRACE_EXTRA_COLUMNS)
    schema: dict[str, Any] = {c: frame.schema[c] for c in columns if c in frame.schema}
    schema.update(dict.fromkeys(TRACE_EXTRA_COLUMNS, pl.String))
    kept = [{c: r.get(c) for c in columns} for r in rows if r["entry"] in keep]
    return pl.DataFrame(kept, schema=schema)
