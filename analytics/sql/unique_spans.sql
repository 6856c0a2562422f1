-- One row per span of `input` (a relation with the `spans` columns, named twice below):
-- of the copies of one (session_id, trace_id, span_id) the first by span_winner.sql is
-- kept. `copies` lists the keys landed more than once (session_id, span_key =
-- hash(trace_id, span_id)): rows not among them pass straight through, so the cost of the
-- window is paid only for copies, which are rare. A hash collision only sends two spans
-- to the window, which partitions by the real ids. session_id leads the key so that a
-- filter on one session reaches both scans; a copy claiming another session is another
-- claim and counts there. Spans without a session id are never reduced.
SELECT * FROM {{input}} AS r
ANTI JOIN ({{copies}}) AS c
    ON c.session_id = r.session_id AND c.span_key = hash(r.trace_id, r.span_id)
UNION ALL BY NAME
SELECT * FROM (
    SELECT * FROM {{input}} AS r
    SEMI JOIN ({{copies}}) AS c
        ON c.session_id = r.session_id AND c.span_key = hash(r.trace_id, r.span_id)
    QUALIFY row_number() OVER (
        PARTITION BY session_id, trace_id, span_id
        ORDER BY
{{winner}}
    ) = 1
)
