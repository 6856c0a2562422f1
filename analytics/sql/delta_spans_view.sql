-- Spans of the files the session index does not cover yet (`files`: a list literal).
CREATE OR REPLACE VIEW _delta_spans AS
SELECT
{{columns}}
FROM read_parquet({{files}}, union_by_name = true);
