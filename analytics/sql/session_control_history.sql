-- One session's pause / resume / cancel events, oldest first (who, when, why).
SELECT action, changed_by, changed_at, reason
FROM control_events
WHERE session_id = $session_id
ORDER BY changed_at
