-- `spans`: every landed span (SPEC §3), plus the hive partition column `date` (the UTC
-- day of start_time). `spans_glob` is the absolute glob <data>/spans/date=*/*.parquet.
-- union_by_name: files written by older versions may lack newer columns (they read null).
CREATE OR REPLACE VIEW spans AS
SELECT *
FROM read_parquet(
    {{spans_glob}},
    hive_partitioning = true,
    hive_types = {'date': DATE},
    union_by_name = true
);
