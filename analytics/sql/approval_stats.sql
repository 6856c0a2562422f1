-- Time to decision and share expired per rule, agent, approver or tool.
-- Time to decision counts requests a person decided (approved / denied); share_expired is
-- expired / (approved + denied + expired), null while nothing has been settled.
WITH keyed AS (
    SELECT
        CASE $by
            WHEN 'rule' THEN policy_rule
            WHEN 'agent' THEN agent_name
            WHEN 'approver' THEN decided_by
            WHEN 'tool' THEN tool_name
        END AS "key",
        outcome,
        wait_ms
    FROM approvals
    WHERE ($since IS NULL OR requested_at >= $since)
)
SELECT
    "key",
    count(*) AS requests,
    count(*) FILTER (WHERE outcome = 'approved') AS approved,
    count(*) FILTER (WHERE outcome = 'denied') AS denied,
    count(*) FILTER (WHERE outcome = 'expired') AS expired,
    count(*) FILTER (WHERE outcome = 'pending') AS pending,
    count(*) FILTER (WHERE outcome = 'not_requested') AS not_requested,
    count(*) FILTER (WHERE outcome = 'abandoned') AS abandoned,
    count(*) FILTER (WHERE outcome = 'expired')
        / nullif(count(*) FILTER (WHERE outcome IN ('approved', 'denied', 'expired')), 0)
        AS share_expired,
    median(wait_ms) FILTER (WHERE outcome IN ('approved', 'denied')) AS median_wait_ms,
    quantile_cont(wait_ms, 0.95) FILTER (WHERE outcome IN ('approved', 'denied'))
        AS p95_wait_ms
FROM keyed
GROUP BY "key"
ORDER BY requests DESC, "key" NULLS LAST
