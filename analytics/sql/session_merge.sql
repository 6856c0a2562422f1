-- Merge the session index with the totals of the files it does not cover (the delta:
-- session_partials.sql over `_delta_spans`); see session_partials.sql. Only sessions the
-- delta touches need merging: the index rows of all others pass through unchanged.
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
    min(agent_name_at) AS agent_name_at,
    arg_min(agent_name, agent_name_at) AS agent_name,
    min(parent_session_id_at) AS parent_session_id_at,
    arg_min(parent_session_id, parent_session_id_at) AS parent_session_id,
    min(trigger_at) AS trigger_at,
    arg_min("trigger", trigger_at) AS "trigger",
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
    arg_max(last_action_errored, last_action_at) AS last_action_errored,
    bool_or(root_errored) AS root_errored,
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
    list_sort(list_distinct(flatten(list(repos)))) AS repos,
    flatten(list(pending_refs)) AS pending_refs
FROM (
    SELECT idx.* FROM idx SEMI JOIN delta USING (session_id)
    UNION ALL BY NAME
    SELECT * FROM delta
) AS parts
GROUP BY session_id
