-- `_recount_spans`: all spans of the touched sessions that have a span landed more than
-- once (`ids`, listed when the views were planned).
CREATE OR REPLACE VIEW _recount_spans AS
SELECT * FROM spans WHERE session_id IN (SELECT unnest({{ids}}));
