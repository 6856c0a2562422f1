-- `actions`: the tool-call spans, one row per span (the winning copy, span_unique.sql).
CREATE OR REPLACE VIEW actions AS
SELECT * FROM spans WHERE span_type = 'tool'
{{unique}};
