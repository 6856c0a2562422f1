SELECT session_id, span_key FROM _span_copies
