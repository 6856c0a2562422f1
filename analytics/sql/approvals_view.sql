-- `approvals`: every REQUIRE_APPROVAL action, joined by approval_id with the live control
-- store, so a request is visible while it is pending (before its span has landed).
-- The store is authoritative for what it knows (status, decider, times); landed spans
-- fill in the rest. outcome: pending / approved / denied / expired, or not_requested
-- for an action classified REQUIRE_APPROVAL after the fact (see macros.sql).
CREATE OR REPLACE VIEW approvals AS
WITH held AS (
    SELECT
        approval_id,
        session_id,
        agent_name,
        tool_name,
        trace_id,
        span_id,
        start_time,
        approval_decided_by,
        approval_wait_ms,
        policy_rule,
        blast_radius,
        enforced,
        target_repo,
        target_branch,
        action_summary,
        arguments,
        tooltrail_approval_outcome(approval_status, enforced) AS span_outcome
    FROM actions
    WHERE decision = 'REQUIRE_APPROVAL'
)
SELECT
    coalesce(h.approval_id, c.approval_id) AS approval_id,
    coalesce(h.session_id, c.session_id) AS session_id,
    coalesce(h.agent_name, c.agent_name) AS agent_name,
    coalesce(h.tool_name, c.tool_name) AS tool_name,
    coalesce(lower(c.status), h.span_outcome) AS outcome,
    coalesce(c.requested_at, h.start_time) AS requested_at,
    c.expires_at,
    coalesce(
        c.decided_at,
        CASE
            WHEN h.span_outcome IN ('approved', 'denied', 'expired')
                THEN h.start_time + to_microseconds(CAST(round(h.approval_wait_ms * 1000) AS BIGINT))
        END
    ) AS decided_at,
    coalesce(c.decided_by, h.approval_decided_by) AS decided_by,
    c.reason,
    coalesce(
        h.approval_wait_ms,
        (epoch_us(c.decided_at) - epoch_us(c.requested_at)) / 1000.0
    ) AS wait_ms,
    coalesce(h.policy_rule, c.policy_rule) AS policy_rule,
    c.policy_reason,
    coalesce(h.blast_radius, c.blast_radius) AS blast_radius,
    h.enforced,
    h.target_repo,
    h.target_branch,
    h.action_summary,
    coalesce(h.arguments, c.arguments) AS arguments,
    coalesce(h.trace_id, c.trace_id) AS trace_id,
    coalesce(h.span_id, c.span_id) AS span_id,
    h.span_id IS NOT NULL AS landed
FROM held AS h
FULL OUTER JOIN control_approvals AS c ON c.approval_id = h.approval_id;
