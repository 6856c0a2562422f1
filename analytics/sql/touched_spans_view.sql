-- All spans (every file) of the sessions that have spans in the delta files.
CREATE OR REPLACE VIEW _touched_spans AS
SELECT * FROM spans
SEMI JOIN (SELECT DISTINCT session_id FROM _delta_spans) AS d USING (session_id);
