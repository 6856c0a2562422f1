-- One session's actions in sequence order; actions without a sequence number come last,
-- in start order. One row per span as in `actions` (the same winner, span_winner.sql),
-- reduced within the session directly: the filter is applied before the window.
SELECT *
FROM spans
WHERE session_id = $session_id AND span_type = 'tool'
QUALIFY row_number() OVER (
    PARTITION BY trace_id, span_id
    ORDER BY
{{winner}}
) = 1
ORDER BY sequence NULLS LAST, start_time, span_id
