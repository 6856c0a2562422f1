-- The touched sessions that have a span landed more than once.
SELECT DISTINCT session_id FROM _touched_copies
