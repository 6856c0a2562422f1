-- Views over the sessions that have spans in the delta files (`_delta_spans`):
-- `_touched_spans`, all their spans (every file; DuckDB pushes the session filter into the
-- Parquet scan); `_touched_copies`, those landed more than once (span_copies.sql reads
-- only the id columns).
CREATE OR REPLACE VIEW _touched_spans AS
SELECT * FROM spans
SEMI JOIN (SELECT DISTINCT session_id FROM _delta_spans) AS d USING (session_id);
CREATE OR REPLACE VIEW _touched_copies AS {{copies}};
