-- One session's actions in sequence order; actions without a sequence number come last,
-- in start order. (`actions` has one row per span; the session filter reaches the scan.)
SELECT *
FROM actions
WHERE session_id = $session_id
ORDER BY sequence NULLS LAST, start_time, span_id
