-- Sessions matching the optional filters; a null parameter means "no filter".
SELECT *
FROM sessions
WHERE ($agent IS NULL OR agent_name = $agent)
  AND ($status IS NULL OR status = $status)
  AND ($since IS NULL OR last_activity_at >= $since)
  AND ($search IS NULL OR contains(lower(session_id), lower($search)))
  AND ($repo IS NULL OR list_contains(repos, $repo))
  -- every tag asked for (a list)
  AND ($tags IS NULL OR list_has_all(tags, $tags))
  -- 'other': sessions of third-party spans only (governed_by null)
  AND ($governed_by IS NULL OR coalesce(governed_by, 'other') = $governed_by)
  AND ($decision IS NULL OR CASE $decision
        WHEN 'ALLOW' THEN allows
        WHEN 'DENY' THEN denies
        WHEN 'REWRITE' THEN rewrites
        WHEN 'REQUIRE_APPROVAL' THEN approvals
      END > 0)
  AND ($blast_radius IS NULL OR CASE $blast_radius
        WHEN 'Low' THEN low
        WHEN 'Medium' THEN medium
        WHEN 'High' THEN high
        WHEN 'Critical' THEN critical
      END > 0)
