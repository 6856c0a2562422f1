-- Spans of the files the session index does not cover yet (`files`: a list literal); a
-- column all of them lack reads null, as in spans_view.sql.
CREATE OR REPLACE VIEW _delta_spans AS
SELECT
{{columns}}
FROM (
    SELECT * FROM read_parquet({{files}}, union_by_name = true)
    UNION ALL BY NAME
    SELECT * EXCLUDE (date) FROM _empty_spans
);
