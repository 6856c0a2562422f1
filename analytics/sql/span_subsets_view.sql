-- Relations `actions` and `approvals` reduce to one row per span (unique_spans.sql).
CREATE OR REPLACE VIEW _tool_spans AS SELECT * FROM spans WHERE span_type = 'tool';
CREATE OR REPLACE VIEW _held_spans AS
SELECT * FROM _tool_spans WHERE decision = 'REQUIRE_APPROVAL';
