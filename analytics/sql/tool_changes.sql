-- Calls to a tool whose definition had changed since it was pinned (the gateway flags
-- them: tool_definition_changed), one row per server, tool and definition (its hash):
-- when the changed tool was first and last called, how many calls it got since, in how
-- many sessions and from which MCP clients, and what the calls got (decision counts, and
-- `got` in words). Optional filters: $since (calls at or after), $server.
WITH changed AS (
    SELECT
        mcp_server AS server,
        tool_name AS tool,
        tool_definition_hash AS definition_hash,
        min(start_time) AS first_call_at,
        max(start_time) AS last_call_at,
        count(*) AS calls,
        count(DISTINCT session_id) AS sessions,
        coalesce(
            list(DISTINCT mcp_client_name ORDER BY mcp_client_name)
                FILTER (WHERE mcp_client_name IS NOT NULL),
            CAST([] AS VARCHAR[])
        ) AS clients,
        count(*) FILTER (WHERE decision = 'ALLOW') AS allows,
        count(*) FILTER (WHERE decision = 'DENY') AS denies,
        count(*) FILTER (WHERE decision = 'REWRITE') AS rewrites,
        count(*) FILTER (WHERE decision = 'REQUIRE_APPROVAL') AS approvals,
        count(*) FILTER (WHERE decision IS NULL) AS undecided
    FROM actions
    WHERE tool_definition_changed
      AND ($since IS NULL OR start_time >= $since)
      AND ($server IS NULL OR mcp_server = $server)
    GROUP BY ALL
)
SELECT
    *,
    concat_ws(
        ', ',
        CASE WHEN approvals > 0 THEN approvals || ' held for approval' END,
        CASE WHEN denies > 0 THEN denies || ' denied' END,
        CASE WHEN rewrites > 0 THEN rewrites || ' rewritten' END,
        CASE WHEN allows > 0 THEN allows || ' allowed' END,
        CASE WHEN undecided > 0 THEN undecided || ' undecided' END
    ) AS got
FROM changed
ORDER BY last_call_at DESC NULLS LAST, server NULLS LAST, tool, definition_hash
