-- `_span_copies`: the spans landed more than once (span_copies.sql), for `actions`.
CREATE OR REPLACE VIEW _span_copies AS {{body}};
