-- `_span_copies` with a session index and files landed since: the index's copies of the
-- sessions the delta does not touch, and those found among all spans of the touched ones.
SELECT * FROM ({{indexed}}) AS i
ANTI JOIN (SELECT DISTINCT session_id FROM _delta_spans) AS d USING (session_id)
UNION ALL
SELECT * FROM _touched_copies
