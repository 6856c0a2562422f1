-- The idle window of the `sessions` status (a session is `active` while its last activity
-- is within it). The view falls back to 5 minutes when the variable is unset, e.g. when an
-- analyst opens tooltrail.duckdb with the plain duckdb package.
SET VARIABLE tooltrail_idle_window = CAST($idle_window AS INTERVAL);
