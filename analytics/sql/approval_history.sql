-- Approval requests, newest first.
SELECT *
FROM approvals
WHERE ($outcome IS NULL OR outcome = $outcome)
  AND ($since IS NULL OR requested_at >= $since)
  AND ($session_id IS NULL OR session_id = $session_id)
ORDER BY requested_at DESC NULLS LAST, approval_id
LIMIT $limit
