"""Policy engine (SPEC §4): load a YAML policy, decide tool calls, apply to landed rows.

The agent side imports this package, so it must stay light: no duckdb, polars or click
here. ``tooltrail.policy.replay`` (DuckDB) and ``tooltrail.policy.cli`` (click) are
imported on their own. See docs/POLICY.md.
"""

from __future__ import annotations

from tooltrail.policy.engine import Explanation, Policy, RuleTrace
from tooltrail.policy.loader import PolicyValidationError, load_policy, loads_policy
from tooltrail.policy.model import (
    ALLOW,
    DENY,
    PRESET_VERDICT_PREFIX,
    REDACTED,
    REQUIRE_APPROVAL,
    REWRITE,
    STRICTNESS,
    VERDICT_PASS,
    VERDICT_POLICY_ERROR,
    ApprovalSettings,
    Decision,
    TextRedaction,
    ToolCall,
    policy_error_decision,
)
from tooltrail.policy.rows import apply_to_row, call_from_row

__all__ = [
    "ALLOW",
    "DENY",
    "PRESET_VERDICT_PREFIX",
    "REDACTED",
    "REQUIRE_APPROVAL",
    "REWRITE",
    "STRICTNESS",
    "VERDICT_PASS",
    "VERDICT_POLICY_ERROR",
    "ApprovalSettings",
    "Decision",
    "Explanation",
    "Policy",
    "PolicyValidationError",
    "RuleTrace",
    "TextRedaction",
    "ToolCall",
    "apply_to_row",
    "call_from_row",
    "load_policy",
    "loads_policy",
    "policy_error_decision",
]
