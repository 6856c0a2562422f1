"""The engine applied to landed rows: the exporter's after-the-fact decisions.

``apply_to_row`` decides tool rows that carry no decision yet (``enforced`` not true) and
marks them ``enforced=False``; rows decided at call time are never touched. A policy that
could not load never yields ALLOW: the row keeps ``decision=None`` with
``policy_rule="policy-error"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tooltrail._json import dumps_iterative
from tooltrail.policy import numbers
from tooltrail.policy.engine import Policy
from tooltrail.policy.model import VERDICT_POLICY_ERROR, Decision, TextRedaction, ToolCall
from tooltrail.semconv import TT_POLICY_REASON, TT_TOOL_ANNOTATIONS

SPAN_TYPE_TOOL = "tool"


def dumps(value: Any) -> str:
    """Compact JSON as landed in the ``arguments`` / ``arguments_rewritten`` columns."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except RecursionError:
        # Nested deeper than json.dumps recurses (a landed row's attributes or arguments
        # read by numbers.loads's iterative fallback): write it with an explicit stack.
        return dumps_iterative(value)


def json_object(value: Any) -> dict[str, Any]:
    """A JSON-object column value as a dict; null, invalid JSON or a non-object -> {}."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str | bytes):
        return {}
    try:
        parsed = numbers.loads(value, long_int=str)  # a too-long integer: kept as text
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def parse_annotations(value: Any) -> Mapping[str, Any] | None:
    """Recorded MCP tool annotations (an object, or its JSON text); None when unknown.
    An empty object stays an (all-defaults) object: that differs from unknown."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = numbers.loads(value, long_int=str)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def annotations_from_attributes(attributes: Any) -> Mapping[str, Any] | None:
    """The MCP tool annotations recorded under ``tooltrail.tool.annotations``, if any."""
    return parse_annotations(json_object(attributes).get(TT_TOOL_ANNOTATIONS))


def call_from_row(row: Mapping[str, Any]) -> ToolCall:
    """The ToolCall a landed tool row describes."""
    tool = row.get("tool_name")
    return ToolCall(
        tool=tool if isinstance(tool, str) else "",
        arguments=json_object(row.get("arguments")),
        agent=row.get("agent_name"),
        session_id=row.get("session_id"),
        server=row.get("mcp_server"),
        annotations=annotations_from_attributes(row.get("attributes")),
    )


def apply_to_row(policy: Policy | None, row: dict[str, Any], error: str | None = None) -> None:
    """Decide an undecided tool row in place (see module docstring).

    When a redaction fires, the row's ``arguments`` are replaced by the redacted JSON and
    ``redactions`` is increased: the secret must not land. The same redactions reach the
    free-text columns built from the unredacted call (see ``_scrub_free_text``). The
    policy's ``reason`` is added to ``attributes`` under ``tooltrail.policy.reason``.
    """
    if row.get("span_type") != SPAN_TYPE_TOOL:
        return
    if row.get("decision") is not None or row.get("enforced") is True:
        return
    if policy is None:
        if error is not None:
            # Fail closed in the record too: undecided, and visibly so.
            row["policy_rule"] = VERDICT_POLICY_ERROR
            row["enforced"] = False
        return
    call = call_from_row(row)
    decision = policy.decide(call)
    redaction = decision.text_redaction
    if redaction is None:  # the usual case: nothing more to do than fill the row
        _fill(row, decision)
        return
    # The summary was derived from the targets _fill is about to replace.
    summary_targets = (row.get("target_repo"), row.get("target_branch"), row.get("target_path"))
    _fill(row, decision)
    _scrub_free_text(row, redaction, call, decision, summary_targets)


def _attributes(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return {}
    parsed = json_object(value)
    return parsed if parsed or value in ("{}", {}) else None


def _fill(row: dict[str, Any], decision: Decision) -> None:
    row["decision"] = decision.decision
    row["policy_rule"] = decision.policy_rule
    row["policy_matched"] = list(decision.policy_matched)
    row["policy_version"] = decision.policy_version
    row["blast_radius"] = decision.blast_radius
    for column, value in (
        ("target_repo", decision.target_repo),
        ("target_branch", decision.target_branch),
        ("target_path", decision.target_path),
    ):
        if value is not None:
            row[column] = value
    row["arguments_rewritten"] = (
        None if decision.arguments_rewritten is None else dumps(decision.arguments_rewritten)
    )
    if decision.redactions:
        row["arguments"] = dumps(decision.arguments)
        row["redactions"] = int(row.get("redactions") or 0) + decision.redactions
    if decision.reason is not None:
        attributes = _attributes(row.get("attributes"))
        if attributes is not None:  # never clobber attributes we cannot parse
            attributes[TT_POLICY_REASON] = decision.reason
            row["attributes"] = dumps(attributes)
    row["enforced"] = False


# Free text a tool call produces, scrubbed with the decision's redactions. Counted in
# ``redactions`` like the argument values (the normalizer counts its own scrubs alike).
_FREE_TEXT_COLUMNS = ("result_preview", "status_message")
_TARGET_COLUMNS = ("target_repo", "target_branch", "target_path")


def _scrub_free_text(
    row: dict[str, Any],
    redaction: TextRedaction,
    call: ToolCall,
    decision: Decision,
    summary_targets: tuple[Any, Any, Any],
) -> None:
    """The row was normalized from the unredacted call: its result preview, status
    message and action summary may quote a secret the policy redacts from ``arguments``.

    A summary the normalizer derived (it equals the one derived from the original
    arguments) is derived again from the redacted arguments, so a value it cut to 60
    characters cannot leave a tail; any other summary (a producer's own) is scrubbed as
    text. Targets come from the redacted arguments already; a producer's are scrubbed.
    """
    count = 0
    for column in _FREE_TEXT_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            row[column], n = redaction.scrub(value)
            count += n
    for column in _TARGET_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value:
            row[column] = redaction.scrub(value)[0]
    summary = row.get("action_summary")
    tool = row.get("tool_name")
    if isinstance(summary, str) and summary:
        # The exporter's side: the normalizer is already loaded there (not on import of
        # tooltrail.policy, which the agent side uses).
        from tooltrail.collector.normalize import derive_summary

        if isinstance(tool, str) and summary == derive_summary(
            tool, *summary_targets, call.arguments
        ):
            repo, branch, path = (
                None if t is None else redaction.scrub(str(t))[0] for t in summary_targets
            )
            summary = derive_summary(tool, repo, branch, path, decision.arguments)
        row["action_summary"] = redaction.scrub(summary)[0]
    if count:
        row["redactions"] = int(row.get("redactions") or 0) + count
