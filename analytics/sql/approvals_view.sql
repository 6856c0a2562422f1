-- `approvals`: every REQUIRE_APPROVAL action, joined by approval_id with the live control
-- store, so a request is visible while it is pending (before its span has landed).
--
-- The store is authoritative for the requests it holds: one row each, with the store's
-- outcome, decider, times, tool, session and arguments. Spans are what agents report, so
-- a span cannot speak for a request the store holds: only the span the store filed the
-- request for (its span_id; the first to cite the id when the store names none) is joined
-- to it. Every other held action is a row of its own (in_store = false) whose outcome is
-- the span's: a request the store never saw (ingested from elsewhere, a reset store), or a
-- span citing an id the store filed for another span. outcome: pending / approved /
-- denied / expired / abandoned (the agent stopped waiting before anyone decided: it gave
-- up, was cancelled or died; the call never ran, and `reason` says how it was known), or
-- not_requested for an action classified REQUIRE_APPROVAL after the fact (see macros.sql).
CREATE OR REPLACE VIEW approvals AS
WITH held AS (
    SELECT
        a.approval_id,
        a.session_id,
        a.agent_name,
        a.tool_name,
        a.trace_id,
        a.span_id,
        a.start_time,
        a.approval_decided_by,
        a.approval_wait_ms,
        a.policy_rule,
        a.blast_radius,
        a.enforced,
        a.target_repo,
        a.target_branch,
        a.action_summary,
        a.arguments,
        tooltrail_approval_outcome(a.approval_status, a.enforced) AS span_outcome,
        -- span ids land as lower-case hex; a request filed over HTTP may spell it otherwise
        c.approval_id IS NOT NULL AND coalesce(lower(trim(c.span_id)) = a.span_id, true)
            AS filed_for
    FROM (
        -- held actions, one row per span (unique_spans.sql), reduced among the held rows
        {{unique}}
    ) AS a
    LEFT JOIN control_approvals AS c ON c.approval_id = a.approval_id
),
claims AS (
    SELECT
        *,
        filed_for AND row_number() OVER (
            PARTITION BY approval_id, filed_for ORDER BY start_time, span_id
        ) = 1 AS joined
    FROM held
),
filed AS (
    SELECT * FROM claims WHERE joined
)
SELECT
    c.approval_id,
    coalesce(c.session_id, h.session_id) AS session_id,
    coalesce(c.agent_name, h.agent_name) AS agent_name,
    coalesce(c.tool_name, h.tool_name) AS tool_name,
    lower(c.status) AS outcome,
    c.requested_at,
    c.expires_at,
    c.decided_at,
    c.decided_by,
    c.reason,
    CASE
        WHEN lower(c.status) <> 'pending' THEN coalesce(
            h.approval_wait_ms,
            (epoch_us(c.decided_at) - epoch_us(c.requested_at)) / 1000.0
        )
    END AS wait_ms,
    coalesce(c.policy_rule, h.policy_rule) AS policy_rule,
    c.policy_reason,
    coalesce(c.blast_radius, h.blast_radius) AS blast_radius,
    h.enforced,
    h.target_repo,
    h.target_branch,
    h.action_summary,
    coalesce(c.arguments, h.arguments) AS arguments,
    coalesce(c.trace_id, h.trace_id) AS trace_id,
    coalesce(c.span_id, h.span_id) AS span_id,
    h.span_id IS NOT NULL AS landed,
    true AS in_store
FROM control_approvals AS c
LEFT JOIN filed AS h ON h.approval_id = c.approval_id
UNION ALL BY NAME
SELECT
    approval_id,
    session_id,
    agent_name,
    tool_name,
    span_outcome AS outcome,
    start_time AS requested_at,
    NULL::TIMESTAMPTZ AS expires_at,
    CASE
        WHEN span_outcome IN ('approved', 'denied', 'expired', 'abandoned')
            THEN start_time + to_microseconds(CAST(round(approval_wait_ms * 1000) AS BIGINT))
    END AS decided_at,
    CASE WHEN span_outcome IN ('approved', 'denied') THEN approval_decided_by END AS decided_by,
    NULL::VARCHAR AS reason,
    approval_wait_ms AS wait_ms,
    policy_rule,
    NULL::VARCHAR AS policy_reason,
    blast_radius,
    enforced,
    target_repo,
    target_branch,
    action_summary,
    arguments,
    trace_id,
    span_id,
    true AS landed,
    false AS in_store
FROM claims
WHERE NOT joined;
