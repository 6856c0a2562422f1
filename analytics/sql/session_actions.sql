-- One session's actions in sequence order; actions without a sequence number come last,
-- in start order (`actions` has one row per span; the session filter reaches the scan).
-- Each carries, besides the span's columns:
--   outcome: what happened to the call in words a person uses: denied (tooltrail refused
--     it), error (it failed), ok (it ran; OpenTelemetry's UNSET and OK both mean that);
--   approval_outcome / approval_decided_by / approval_reason: for a held call, the
--     `approvals` view's story (the control store's, when it holds the request): pending,
--     approved, denied, expired, abandoned or not_requested, who decided, and why.
WITH held AS (
    SELECT
        lower(trim(span_id)) AS span_id,
        outcome,
        decided_by,
        reason,
        -- the row joined to the landed span first, then the store's own record
        row_number() OVER (
            PARTITION BY lower(trim(span_id)) ORDER BY landed DESC, in_store DESC
        ) AS pick
    FROM approvals
    WHERE session_id = $session_id AND span_id IS NOT NULL
)
SELECT
    a.* REPLACE (
        CASE WHEN h.span_id IS NULL THEN a.approval_decided_by ELSE h.decided_by END
            AS approval_decided_by
    ),
    CASE
        WHEN a.error_type = 'tool_call_denied' THEN 'denied'
        WHEN upper(a.status_code) = 'ERROR' THEN 'error'
        ELSE 'ok'
    END AS outcome,
    h.outcome AS approval_outcome,
    h.reason AS approval_reason
FROM actions AS a
LEFT JOIN held AS h ON h.span_id = a.span_id AND h.pick = 1
WHERE a.session_id = $session_id
ORDER BY a.sequence NULLS LAST, a.start_time, a.span_id
