"""The session page's "Activity trace" tab and its end-of-session line: LLM steps, tool
calls, pause / resume / cancel / complete, the final output and the session's end, in
the order they happened (``analytics.session_trace``), filtered all / reasoning / tool
calls. Kept out of page_session.py, which is long already."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import streamlit as st

from tooltrail import semconv as sc
from tooltrail.dashboard import nav, ui

FILTERS: Final = {"All": "all", "Reasoning": "reasoning", "Tool calls": "tools"}
ENTRY_ICONS: Final = {
    "llm": ":material/psychology:",
    "agent": ":material/smart_toy:",
    "tool": ":material/build:",
    "output": ":material/output:",
    "control": ":material/front_hand:",
    "end": ":material/flag:",
}
ENTRY_WORDS: Final = {
    "llm": "LLM step",
    "agent": "agent",
    "tool": "tool call",
    "output": "final output",
    "control": "session control",
    "end": "session end",
}


def claimed_note(row: Mapping[str, Any]) -> str:
    """Why a row is only claimed, from its ``source`` (docs/DATA.md): sent by another
    agent into this session, or by a sender tooltrail could not verify."""
    sender, _, holder = str(row.get("source") or "").partition(sc.SOURCE_SESSION_OF)
    if holder:
        who = sender.removeprefix(sc.SOURCE_AGENT_PREFIX)
        return f"claimed (sent by agent {ui.code(who)} into {ui.code(holder)}'s session)"
    return "claimed (unverified sender)"


def end_line(head: Mapping[str, Any]) -> str | None:
    """How the session ended, in words (None while nothing says it did)."""
    if head.get("completed_by"):
        return (
            f"Marked complete by **{ui.md(str(head['completed_by']))}** "
            f"{ui.fmt_ago(head.get('completed_at'))}: {ui.md(str(head.get('completion_reason')))}"
        )
    if head.get("status") == "abandoned":
        return "Abandoned: its agent stopped without ending the session (no end record)."
    if head.get("status_basis") == "end_record":
        who = {"session": "the agent", "gateway": "the gateway", "agent": "the agent's run"}
        by = who.get(str(head.get("end_source")), str(head.get("end_source")))
        why = f": {ui.md(str(head['end_reason']))}" if head.get("end_reason") else ""
        return f"Ended {ui.fmt_ago(head.get('ended_at'))}, recorded by {by}{why}."
    return None


def render(ctx: nav.Context, session_id: str) -> None:
    choice = st.segmented_control(
        "Show",
        list(FILTERS),
        default="All",
        key=f"trace_filter_{session_id}",
    )
    only = FILTERS.get(str(choice), "all")
    steps = ctx.data.session_trace(session_id, only)
    if steps.is_empty():
        st.caption("Nothing of this kind landed for this session.")
        return
    st.caption(
        f"{steps.height} entr{'ies' if steps.height != 1 else 'y'}, oldest first. Prompts"
        " and outputs show where the instrumentation recorded them."
    )
    for row in steps.iter_rows(named=True):
        _entry(row)


def _entry(row: Mapping[str, Any]) -> None:
    entry = str(row["entry"])
    icon = ENTRY_ICONS.get(entry, ":material/circle:")
    word = ENTRY_WORDS.get(entry, entry)
    facts = [f"**{word}**", ui.fmt_ts(row.get("occurred_at"))]
    if entry == "llm" and row.get("model"):
        facts.append(ui.code(str(row["model"])))
    if row.get("input_tokens") is not None or row.get("output_tokens") is not None:
        tokens_in, tokens_out = row.get("input_tokens"), row.get("output_tokens")
        facts.append(f"{ui.fmt_int(tokens_in)} in / {ui.fmt_int(tokens_out)} out tokens")
    if entry == "tool":
        facts.append(f"#{row.get('sequence')}" if row.get("sequence") is not None else "")
        facts.append(
            ui.chip(row.get("decision"), ui.DECISION_COLORS) if row.get("decision") else ""
        )
    if entry in ("control", "end") and row.get("actor"):
        facts.append(f"by {ui.md(str(row['actor']))}")
    if row.get("outcome") and entry != "llm":
        facts.append(ui.md(str(row["outcome"])))
    with st.container(border=True):
        st.markdown(f"{icon} " + " · ".join(f for f in facts if f))
        if row.get("summary"):
            st.markdown(ui.md(str(row["summary"])))
        if row.get("reason"):
            st.caption(ui.md(str(row["reason"])))
        if row.get("claimed"):
            # (sent by another agent: the session's status, end, output and totals
            # leave it out; docs/SECURITY.md §8)
            st.warning(claimed_note(row))
        if row.get("prompt"):
            with st.expander("Prompt"):
                st.code(str(row["prompt"]), language=None, wrap_lines=True)
        if row.get("output") and entry != "output":
            with st.expander("Output"):
                st.code(str(row["output"]), language=None, wrap_lines=True)
        elif entry == "output":
            st.code(str(row["output"]), language=None, wrap_lines=True)
