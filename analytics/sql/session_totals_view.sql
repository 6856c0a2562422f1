-- `_session_totals`: one row per session with the mergeable totals of
-- session_partials.sql, from all spans or from the session index plus newer files.
CREATE OR REPLACE VIEW _session_totals AS {{body}};
