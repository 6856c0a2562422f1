-- The spans of `input` landed more than once: (session_id, span_key) as unique_spans.sql
-- joins them.
SELECT session_id, hash(trace_id, span_id) AS span_key
FROM {{input}}
WHERE session_id IS NOT NULL
GROUP BY ALL
HAVING count(*) > 1
