-- `spans` while no Parquet file exists yet: DuckDB refuses a glob that matches nothing,
-- so the view reads a zero-row table with the landed schema instead.
CREATE OR REPLACE VIEW spans AS
SELECT
{{columns}}
FROM _empty_spans;
