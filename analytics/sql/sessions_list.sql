-- A page of sessions, most recent activity first.
{{filtered}}
ORDER BY last_activity_at DESC NULLS LAST, session_id
LIMIT $limit OFFSET $offset
