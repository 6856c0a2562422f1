-- `spans`: every landed span (SPEC §3), plus the hive partition column `date` (the UTC
-- day of start_time as landed) and `time_flag` (span_columns.sql). `spans_glob` is the
-- absolute glob <data>/spans/date=*/*.parquet.
-- union_by_name: files written by older versions may lack newer columns (they read null).
-- The zero-row `_empty_spans` (the landed schema) joins by name so that a column every
-- file lacks (all of them landed before it existed) is there too, null and typed.
-- Every landed row is here, copies of one span included (the record); `actions` and the
-- session totals count each span once.
CREATE OR REPLACE VIEW spans AS
SELECT
{{columns}}
FROM (
    SELECT * FROM read_parquet(
        {{spans_glob}},
        hive_partitioning = true,
        hive_types = {'date': DATE},
        union_by_name = true
    )
    UNION ALL BY NAME
    SELECT * FROM _empty_spans
);
