-- One row per span: keeps the winning copy (span_winner.sql) of each (session_id,
-- trace_id, span_id). session_id leads the partition so that a filter on one session is
-- applied before the window (one session's actions stay a small read); a copy claiming
-- another session is another claim and is counted there.
QUALIFY row_number() OVER (
    PARTITION BY session_id, trace_id, span_id
    ORDER BY
{{winner}}
) = 1
