-- Actions per blast-radius class, grouped by agent, tool, repo or (UTC) day.
WITH keyed AS (
    SELECT
        CASE $by
            WHEN 'agent' THEN agent_name
            WHEN 'tool' THEN tool_name
            WHEN 'repo' THEN target_repo
            WHEN 'day' THEN strftime(start_time, '%Y-%m-%d')
        END AS "key",
        blast_radius
    FROM actions
    WHERE ($since IS NULL OR start_time >= $since)
)
SELECT
    "key",
    count(*) AS actions,
    count(*) FILTER (WHERE blast_radius = 'Low') AS low,
    count(*) FILTER (WHERE blast_radius = 'Medium') AS medium,
    count(*) FILTER (WHERE blast_radius = 'High') AS high,
    count(*) FILTER (WHERE blast_radius = 'Critical') AS critical,
    count(*) FILTER (
        WHERE blast_radius IS NULL OR blast_radius NOT IN ('Low', 'Medium', 'High', 'Critical')
    ) AS unrated,
    CASE
        WHEN count(*) FILTER (WHERE blast_radius = 'Critical') > 0 THEN 'Critical'
        WHEN count(*) FILTER (WHERE blast_radius = 'High') > 0 THEN 'High'
        WHEN count(*) FILTER (WHERE blast_radius = 'Medium') > 0 THEN 'Medium'
        WHEN count(*) FILTER (WHERE blast_radius = 'Low') > 0 THEN 'Low'
    END AS max_blast_radius
FROM keyed
GROUP BY "key"
-- days in calendar order; other groups busiest first
ORDER BY CASE WHEN $by = 'day' THEN "key" END NULLS LAST, actions DESC, "key" NULLS LAST
