-- Session totals from the session index plus the files landed since (the delta,
-- `_delta_spans`; session_partials.sql over it is `delta`). Sessions the delta does not
-- touch: their index rows. Touched sessions none of whose spans landed twice (the usual
-- case): the index row and the delta's totals merged, column by column (every partial is
-- mergeable: counts add up, first / last values keep the time that orders them, lists
-- concatenate). Touched sessions with a span landed more than once (e.g. one copy in an
-- indexed file and one since; `recount`, listed when the views were planned): left out
-- here and recomputed from all their spans (session_recount.sql), so copies count once.
-- The last action's error breaks a tie of start times as session_partials.sql does.
WITH delta AS MATERIALIZED (
    {{delta}}
),
idx AS (
    SELECT * FROM read_parquet({{index_file}})
)
SELECT * FROM idx ANTI JOIN delta USING (session_id)
UNION ALL BY NAME
SELECT
    session_id,
    min(started_at) AS started_at,
    max(last_activity_at) AS last_activity_at,
    CAST(sum(span_count) AS BIGINT) AS span_count,
    CAST(sum(foreign_spans) AS BIGINT) AS foreign_spans,
    min(agent_name_at) AS agent_name_at,
    arg_min(agent_name, (agent_name_at, agent_name)) AS agent_name,
    min(parent_session_id_at) AS parent_session_id_at,
    arg_min(parent_session_id, (parent_session_id_at, parent_session_id))
        AS parent_session_id,
    min(trigger_at) AS trigger_at,
    arg_min("trigger", (trigger_at, "trigger")) AS "trigger",
    CASE
        WHEN bool_or(governed_by = 'gateway') THEN 'gateway'
        WHEN bool_or(governed_by = 'instrumentation') THEN 'instrumentation'
    END AS governed_by,
    min(mcp_client_at) AS mcp_client_at,
    arg_min(mcp_client_name, (mcp_client_at, mcp_client_name)) AS mcp_client_name,
    arg_min(mcp_client_version, (mcp_client_at, mcp_client_name)) AS mcp_client_version,
    CAST(sum(changed_tool_calls) AS BIGINT) AS changed_tool_calls,
    CAST(sum(claimed_calls) AS BIGINT) AS claimed_calls,
    CAST(sum(total_actions) AS BIGINT) AS total_actions,
    CAST(sum(allows) AS BIGINT) AS allows,
    CAST(sum(denies) AS BIGINT) AS denies,
    CAST(sum(rewrites) AS BIGINT) AS rewrites,
    CAST(sum(approvals) AS BIGINT) AS approvals,
    CAST(sum(low) AS BIGINT) AS low,
    CAST(sum(medium) AS BIGINT) AS medium,
    CAST(sum(high) AS BIGINT) AS high,
    CAST(sum(critical) AS BIGINT) AS critical,
    CAST(sum(errors) AS BIGINT) AS errors,
    max(last_action_at) AS last_action_at,
    arg_max(
        last_action_errored,
        epoch_us(last_action_at) * 2 + CAST(coalesce(last_action_errored, false) AS BIGINT)
    ) FILTER (WHERE last_action_at IS NOT NULL) AS last_action_errored,
    bool_or(root_errored) AS root_errored,
    max(ended_at) AS ended_at,
    arg_max(end_outcome, epoch_us(ended_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT))
        FILTER (WHERE ended_at IS NOT NULL) AS end_outcome,
    arg_max(end_source, epoch_us(ended_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT))
        FILTER (WHERE ended_at IS NOT NULL) AS end_source,
    arg_max(end_reason, epoch_us(ended_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT))
        FILTER (WHERE ended_at IS NOT NULL) AS end_reason,
    max(last_started_at) AS last_started_at,
    bool_or(records_end) AS records_end,
    list_sort(list_distinct(flatten(list(tags)))) AS tags,
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
    list_sort(list_distinct(flatten(list(repos)))) AS repos,
    flatten(list(pending_refs)) AS pending_refs
FROM (
    SELECT idx.* FROM idx SEMI JOIN delta USING (session_id)
    UNION ALL BY NAME
    SELECT * FROM delta
) AS parts
WHERE NOT list_contains(CAST({{recount}} AS VARCHAR[]), session_id)
GROUP BY session_id
