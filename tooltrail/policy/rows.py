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

from tooltrail.policy.engine import Policy
from tooltrail.policy.model import VERDICT_POLICY_ERROR, Decision, ToolCall
from tooltrail.semconv import TT_POLICY_REASON, TT_TOOL_ANNOTATIONS

SPAN_TYPE_TOOL = "tool"


def dumps(value: Any) -> str:
    """Compact JSON as landed in the ``arguments`` / ``arguments_rewritten`` columns."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def json_object(value: Any) -> dict[str, Any]:
    """A JSON-object column value as a dict; null, invalid JSON or a non-object -> {}."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str | bytes):
        return {}
    try:
        parsed = json.loads(value)
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
            parsed = json.loads(value)
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
    ``redactions`` is increased: the secret must not land. The policy's ``reason`` is
    added to ``attributes`` under ``tooltrail.policy.reason``.
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
    _fill(row, policy.decide(call_from_row(row)))


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
