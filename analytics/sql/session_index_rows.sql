-- The rows of the session index: session_partials.sql over the covered files, plus
-- `copies`, the (trace_id, span_id) of each span landed more than once in them (`_copies`,
-- copies_table.sql), so that `actions` can reduce them without grouping every span on
-- every query.
WITH copies AS (
    SELECT session_id, list({'trace_id': trace_id, 'span_id': span_id}) AS copies
    FROM (
        SELECT DISTINCT r.session_id, r.trace_id, r.span_id
        FROM _delta_spans AS r
        SEMI JOIN _copies AS c
            ON c.session_id = r.session_id AND c.span_key = hash(r.trace_id, r.span_id)
    )
    GROUP BY session_id
)
SELECT
    p.*,
    coalesce(c.copies, CAST([] AS STRUCT(trace_id VARCHAR, span_id VARCHAR)[])) AS copies
FROM ({{partials}}) AS p
LEFT JOIN copies AS c USING (session_id)
