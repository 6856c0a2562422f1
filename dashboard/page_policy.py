"""Policy: the active policy's rules with how often each fired in the landed actions (and
those that never did), and a replay of a pasted or uploaded candidate policy over the
landed actions: what it would have decided differently (``tooltrail.policy.replay``)."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import Any, Final

import polars as pl
import streamlit as st

from tooltrail import analytics, config
from tooltrail.dashboard import data, nav, ui
from tooltrail.demo import demo_policy_path
from tooltrail.errors import PolicyError
from tooltrail.policy import Policy, PolicyValidationError, loads_policy
from tooltrail.policy.replay import ReplayReport, replay

REPORT_KEY: Final = "policy_replay_report"
TEXT_KEY: Final = "policy_candidate_text"
_STARTER: Final = """version: 1
default: ALLOW
rules:
  - id: no-reset
    when: {tool: git_reset}
    decision: DENY
    reason: Resetting history is not allowed for agents
"""


def render() -> None:
    ctx = nav.context()
    ui.header(
        "Policy",
        "The active policy's rules and how often each fired; replay a candidate policy over "
        "the actions that landed to see what it would change before you ship it.",
    )
    # Only the server's configuration names the active policy: a path typed in the page
    # would let anyone who can open the dashboard read files on the server.
    path = ctx.config.policy_path
    policy = _active(ctx, path)
    if policy is not None:
        _rules(ctx, policy)
    st.divider()
    _candidate(ctx, path)


def _active(ctx: nav.Context, path: Path | None) -> Policy | None:
    st.subheader("Active policy", anchor=False)
    if path is None:
        ui.empty_state("No active policy", _how_to_set(ctx))
        return _opened()
    try:
        return data.active_policy(path)
    except PolicyError as e:
        st.error(f"The policy cannot be loaded:\n\n{e}", icon=":material/error:")
        return None


def _how_to_set(ctx: nav.Context) -> str:
    """How to give the server its policy: the command for this very data directory."""
    root = shlex.quote(str(ctx.root))
    return (
        "This dashboard was started without a policy, so its rules and how often each "
        "fired cannot be shown. Restart it with the policy your agents enforce:\n\n"
        f"```sh\ntooltrail dashboard --data {root} --policy policy.yaml\n```\n\n"
        f"or set `{config.ENV_POLICY}=policy.yaml` before starting it. The demo's policy is "
        f"{ui.code(demo_policy_path())}. Meanwhile, open a policy file below to see its rules "
        "against the landed actions in this browser session, or replay a candidate further "
        "down."
    )


def _opened() -> Policy | None:
    """A policy file the viewer opens from their own machine (never a path on the server):
    its rules with hit counts for this browser session."""
    uploaded = st.file_uploader(
        "Open a policy file", type=["yaml", "yml"], key="policy_active_upload"
    )
    if uploaded is None:
        return None
    try:
        return data.opened_policy(uploaded.getvalue().decode("utf-8", "replace"), uploaded.name)
    except PolicyError as e:
        st.error(f"{ui.code(uploaded.name)} is not a valid policy:\n\n{ui.md(e)}")
        return None


def _rules(ctx: nav.Context, policy: Policy) -> None:
    versions = ctx.data.policy_versions()
    landed_here = versions.filter(pl.col("policy_version") == policy.version)
    st.markdown(
        f"`{policy.source}` · version `{policy.version[:12]}` · "
        f"{len(policy.rules)} rules · default `{policy.default or '–'}`"
        + (f" · preset `{policy.preset}`" if policy.preset else "")
    )
    scope = st.toggle(
        "Only actions decided by this version",
        value=False,
        key="policy_scope",
        disabled=landed_here.is_empty(),
        help="Otherwise every landed action counts, whatever policy version decided it.",
    )
    hits = ctx.data.rule_hits(policy.version if scope else None)
    by_id = {r["rule"]: r for r in hits.iter_rows(named=True)}
    table = pl.DataFrame(
        [
            {
                "rule": rule.id,
                "decision": rule.decision,
                "matched": int(by_id.get(rule.id, {}).get("matched") or 0),
                "decided": int(by_id.get(rule.id, {}).get("decided") or 0),
                "last_matched": by_id.get(rule.id, {}).get("last_matched"),
                "reason": rule.reason or "",
                "line": rule.line,
            }
            for rule in policy.rules
        ],
        schema={
            "rule": pl.String,
            "decision": pl.String,
            "matched": pl.Int64,
            "decided": pl.Int64,
            "last_matched": pl.Datetime("us", "UTC"),
            "reason": pl.String,
            "line": pl.Int64,
        },
    )
    ui.table(
        ui.as_chips(table, "decision"),
        hide_index=True,
        width="stretch",
        column_config={
            "rule": "Rule",
            "decision": ui.decision_column(),
            "matched": ui.count_column("Matched", help="Actions whose matched rules include it"),
            "decided": ui.count_column("Verdict", help="Actions this rule decided (it won)"),
            "last_matched": ui.time_column("Last matched (UTC)"),
            "reason": st.column_config.TextColumn("Reason", width="large"),
            "line": st.column_config.NumberColumn("Line", format="%d"),
        },
    )
    never = table.filter(pl.col("matched") == 0).get_column("rule").to_list()
    if never:
        st.warning(
            f"**{len(never)} rule{'s' if len(never) != 1 else ''} never fired:** "
            + ", ".join(f"`{r}`" for r in never),
            icon=":material/visibility_off:",
        )
    else:
        st.success("Every rule fired at least once.", icon=":material/check_circle:")
    known = {r.id for r in policy.rules}
    foreign = [r for r in by_id if r not in known and r != "pass" and not r.startswith("preset:")]
    if foreign:
        st.caption(
            "Landed actions also name rules this file does not have (older versions?): "
            + ", ".join(f"`{r}`" for r in sorted(foreign))
        )
    with st.expander(f"Landed policy versions ({versions.height})"):
        ui.table(
            versions.with_columns((pl.col("policy_version") == policy.version).alias("active")),
            hide_index=True,
            width="stretch",
            column_config={
                "policy_version": "Version",
                "actions": ui.count_column("Actions"),
                "first_seen": ui.time_column("First seen (UTC)"),
                "last_seen": ui.time_column("Last seen (UTC)"),
                "active": st.column_config.CheckboxColumn("Active"),
            },
        )


# --- candidate replay ----------------------------------------------------------------------


def _candidate(ctx: nav.Context, path: Path | None) -> None:
    st.subheader("Replay a candidate policy", anchor=False)
    if TEXT_KEY not in st.session_state:
        st.session_state[TEXT_KEY] = _read(path) or _STARTER
    paste, upload = st.tabs(["Paste", "Upload"], key="policy_source_tabs")
    with paste:
        st.text_area("Candidate policy (YAML)", key=TEXT_KEY, height=320)
    with upload:
        uploaded = st.file_uploader(
            "Candidate policy file", type=["yaml", "yml"], key="policy_upload"
        )
        if uploaded is not None:
            st.caption(f"Replaying the uploaded `{uploaded.name}` instead of the pasted text.")
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    with left:
        since = ui.time_range("policy_replay_range", default="Last 30 days", label="Replay over")
    if right.button("Replay", type="primary", icon=":material/replay:", key="policy_replay"):
        if uploaded is not None:
            text, source = uploaded.getvalue().decode("utf-8", "replace"), uploaded.name
        else:
            text, source = str(st.session_state.get(TEXT_KEY) or ""), "candidate"
        st.session_state[REPORT_KEY] = _replay(ctx, text, source, since)
    result = st.session_state.get(REPORT_KEY)
    if isinstance(result, PolicyError):
        _policy_problems(result)
    elif isinstance(result, ReplayReport):
        _report(result)


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _replay(
    ctx: nav.Context, text: str, source: str, since: str | None
) -> ReplayReport | PolicyError:
    try:
        candidate = loads_policy(text, source)
    except PolicyError as e:
        return e
    since_s = None
    if since is not None:
        start = analytics.parse_since(since)
        assert start is not None
        since_s = (dt.datetime.now(dt.UTC) - start).total_seconds()
    with st.spinner("Replaying the landed actions…"):
        return replay(candidate, ctx.root, since_s=since_s, since_label=since or "all time")


def _policy_problems(error: PolicyError) -> None:
    st.error("The candidate policy is not valid; nothing was replayed.", icon=":material/error:")
    problems = getattr(error, "problems", None)
    if isinstance(error, PolicyValidationError) and problems:
        ui.table(
            pl.DataFrame(
                [{"line": p[0], "where": p[1], "problem": p[2]} for p in problems],
                schema={"line": pl.Int64, "where": pl.String, "problem": pl.String},
            ),
            hide_index=True,
            width="stretch",
            column_config={"problem": st.column_config.TextColumn("Problem", width="large")},
        )
    else:
        st.code(str(error), language=None)


def _report(report: ReplayReport) -> None:
    st.markdown(
        f"Candidate version `{report.policy_version[:12]}` over {ui.fmt_int(report.actions)} "
        f"actions ({report.since or 'all time'}), {ui.fmt_int(report.distinct_inputs)} distinct "
        f"inputs, in {report.elapsed_s:.2f} s."
    )
    # The headline is what an operator ships a policy for: decisions (ALLOW, DENY, …) that
    # change. `changed` also counts a new winning rule or blast radius under the same
    # decision: shown apart, under their own names, never as "would change".
    other = report.changed - report.decision_changes
    cols = st.columns(4)
    cols[0].metric(
        "Decisions that would change",
        ui.fmt_int(report.decision_changes),
        border=True,
        help="Actions the candidate would decide differently (ALLOW, DENY, REWRITE, "
        "REQUIRE_APPROVAL).",
    )
    cols[1].metric(
        "Rule changes (same decision)",
        ui.fmt_int(report.verdict_changes),
        border=True,
        help="Same decision, but another rule would decide it.",
    )
    cols[2].metric(
        "Blast-radius changes",
        ui.fmt_int(report.blast_radius_changes),
        border=True,
        help="Actions whose blast radius would differ, whether or not their decision does.",
    )
    cols[3].metric("Newly unmatched", ui.fmt_int(report.newly_unmatched), border=True)
    if report.actions == 0:
        st.info("No landed action in this range: nothing to compare.")
    elif report.changed == 0:
        st.success("The candidate decides every replayed action exactly as it landed.")
    elif other:
        st.caption(
            f"Besides the decision changes, {ui.fmt_int(other)} action"
            f"{'s' if other != 1 else ''} keep their decision but change their deciding rule "
            "or blast radius."
        )
    if report.transitions:
        st.markdown("**Decision changes**")
        _changes(report.transitions, ("from", "to"))
    if report.by_rule:
        st.markdown("**By rule**")
        _changes(report.by_rule, ("from", "to"))
    if report.by_agent:
        st.markdown("**By agent**")
        _changes(report.by_agent, ("from", "to"))
    if report.blast_radius:
        st.markdown("**Blast-radius changes**")
        _changes(report.blast_radius, (), radius=("from", "to"))
    if report.verdicts:
        st.markdown("**Same decision, another rule wins**")
        _changes(report.verdicts, ("decision",))
    if report.examples:
        with st.expander(f"Example actions ({len(report.examples)})"):
            _changes(
                report.examples, ("from", "to"), radius=("old_blast_radius", "new_blast_radius")
            )
    hits = pl.DataFrame(
        [{"rule": k, "hits": v} for k, v in report.rule_hits.items()],
        schema={"rule": pl.String, "hits": pl.Int64},
    )
    if not hits.is_empty():
        st.markdown("**Candidate rules, replayed**")
        ui.table(
            hits,
            hide_index=True,
            column_config={"rule": "Rule", "hits": ui.count_column("Matched")},
        )
    if report.dead_rules:
        st.warning(
            "Would never fire on these actions: " + ", ".join(f"`{r}`" for r in report.dead_rules),
            icon=":material/visibility_off:",
        )
    if report.kept_redacted or report.changed_on_redacted:
        st.caption(
            f"{ui.fmt_int(report.kept_redacted)} redacted actions kept their landed outcome; "
            f"{ui.fmt_int(report.changed_on_redacted)} would replay differently only because"
            " a rule that matched them cannot see their redacted values (not counted as"
            " changes)."
        )


_LABELS: Final = {
    "old_rule": "Landed rule",
    "new_rule": "Candidate rule",
    "agent": "Agent",
    "tool": "Tool",
    "session_id": "Session",
    "span_id": "Span",
    "start_time": "Started",
    "old_blast_radius": "Landed blast radius",
    "new_blast_radius": "Candidate blast radius",
}


def _changes(
    rows: list[dict[str, Any]],
    decisions: tuple[str, ...],
    radius: tuple[str, ...] = (),
) -> None:
    frame = ui.labelled(pl.DataFrame(rows), "agent", "tool")
    frame = ui.as_chips(frame, *decisions, *radius)
    config: dict[str, Any] = {c: label for c, label in _LABELS.items() if c in frame.columns}
    config |= {c: ui.decision_column(_LABELS.get(c, c.capitalize())) for c in decisions}
    config |= {c: ui.radius_column(_LABELS.get(c, c.capitalize())) for c in radius}
    if "count" in frame.columns:
        config["count"] = ui.count_column("Actions")
    ui.table(frame, hide_index=True, width="stretch", column_config=config)


if __name__ == "__main__":
    render()
