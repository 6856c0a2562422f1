-- Session totals from the session index plus the files landed since (the delta,
-- `_delta_spans`): the index rows of sessions the delta does not touch pass through; the
-- sessions it touches are recomputed from all their spans (`touched`: `spans` restricted
-- to those sessions, a filter DuckDB pushes into the Parquet scan). Recomputing rather
-- than adding the delta's totals to the index row keeps a span landed twice, once in an
-- indexed file and once since, one action.
SELECT * FROM read_parquet({{index_file}})
ANTI JOIN (SELECT DISTINCT session_id FROM _delta_spans) AS d USING (session_id)
UNION ALL BY NAME
{{touched}}
