-- `actions`: the tool-call spans.
CREATE OR REPLACE VIEW actions AS SELECT * FROM spans WHERE span_type = 'tool';
