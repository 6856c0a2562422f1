-- `actions`: the tool-call spans, one row per span (unique_spans.sql over `_span_copies`).
CREATE OR REPLACE VIEW actions AS
{{unique}};
