-- The copies recorded in the session index (`copies`: the (trace_id, span_id) of each span
-- landed more than once in the files it covers), as span_copies.sql gives them.
SELECT session_id, hash(c.trace_id, c.span_id) AS span_key
FROM (SELECT session_id, unnest(copies) AS c FROM read_parquet({{index_file}}))
