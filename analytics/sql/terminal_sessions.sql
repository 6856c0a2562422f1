-- Sessions retention may delete: terminal (completed, failed, canceled, abandoned), with
-- their last activity before $before (null: any age). An active, paused or waiting
-- session is never deleted.
SELECT session_id, status, last_activity_at, span_count
FROM sessions
WHERE status IN ('completed', 'failed', 'canceled', 'abandoned')
    AND ($before IS NULL OR last_activity_at < $before)
    AND ($session_id IS NULL OR session_id = $session_id)
ORDER BY session_id
