-- Per-session totals over a relation with the `spans` columns (read through
-- span_columns.sql: implausible times are null and count for nothing here), given as
-- `unique`: that relation reduced to one row per span (unique_spans.sql). Since copies
-- are reduced first, a session's totals are computed from all of its spans at once
-- (session_merge.sql recomputes the sessions that files landed since the index touch).
--
-- `own`: the row was not sent into the session by an agent other than its holder
-- (tooltrail_foreign, macros.sql; docs/DATA.md, "Spans another agent sent in"). Rows
-- that are not `own` are the session's record: counted in span_count and foreign_spans,
-- and as actions (the `actions` list shows them, marked claimed; a decision they carry
-- is in claimed_calls) so the tallies match that list. Everything that says how the
-- session went or whose it is reads `own` rows only: its end and status inputs (end
-- record, last action and its error, a root span's error, activity after the end, the
-- end promise, pending approvals), its times, its first values and tags, and its
-- tokens. Most of that is done once per row below, by reading the columns those come
-- from as null on a row that is not `own` (times, identity, tokens, attributes): an
-- aggregate ignores nulls, and one CASE per row costs less than `own` in every
-- aggregate's FILTER (bench: the unindexed `sessions` ~1.04x instead of ~1.11x CPU).
SELECT
    session_id,
    min(start_time) AS started_at,
    max(coalesce(end_time, start_time)) AS last_activity_at,
    count(*) AS span_count,
    count(*) FILTER (WHERE NOT own) AS foreign_spans,
    -- descriptive columns: the first non-null value by start time (two values starting
    -- at the very same microsecond: either)
    min(start_time) FILTER (WHERE agent_name IS NOT NULL) AS agent_name_at,
    arg_min(agent_name, start_time) FILTER (WHERE agent_name IS NOT NULL) AS agent_name,
    min(start_time) FILTER (WHERE parent_session_id IS NOT NULL) AS parent_session_id_at,
    arg_min(parent_session_id, start_time) FILTER (WHERE parent_session_id IS NOT NULL)
        AS parent_session_id,
    min(start_time) FILTER (WHERE "trigger" IS NOT NULL) AS trigger_at,
    arg_min("trigger", start_time) FILTER (WHERE "trigger" IS NOT NULL) AS "trigger",
    -- who governed the session's calls: the gateway if any span says so, else tooltrail's
    -- instrumentation if any span says so, else null (third-party spans only)
    CASE
        WHEN bool_or(governed_by = 'gateway') THEN 'gateway'
        WHEN bool_or(governed_by = 'instrumentation') THEN 'instrumentation'
    END AS governed_by,
    -- the MCP client (through the gateway): name and version of the first span naming it
    min(start_time) FILTER (WHERE mcp_client_name IS NOT NULL) AS mcp_client_at,
    arg_min(mcp_client_name, start_time) FILTER (WHERE mcp_client_name IS NOT NULL)
        AS mcp_client_name,
    arg_min(mcp_client_version, start_time) FILTER (WHERE mcp_client_name IS NOT NULL)
        AS mcp_client_version,
    -- actions on a tool whose definition had changed since it was pinned
    count(*) FILTER (WHERE span_type = 'tool' AND tool_definition_changed) AS changed_tool_calls,
    -- actions whose decision an unauthenticated sender only claimed (verified = false)
    count(*) FILTER (WHERE span_type = 'tool' AND verified IS FALSE) AS claimed_calls,
    -- actions (tool spans) by decision; a null decision is counted by neither
    count(*) FILTER (WHERE span_type = 'tool') AS total_actions,
    count(*) FILTER (WHERE span_type = 'tool' AND decision = 'ALLOW') AS allows,
    count(*) FILTER (WHERE span_type = 'tool' AND decision = 'DENY') AS denies,
    count(*) FILTER (WHERE span_type = 'tool' AND decision = 'REWRITE') AS rewrites,
    count(*) FILTER (WHERE span_type = 'tool' AND decision = 'REQUIRE_APPROVAL') AS approvals,
    -- actions by blast radius
    count(*) FILTER (WHERE span_type = 'tool' AND blast_radius = 'Low') AS low,
    count(*) FILTER (WHERE span_type = 'tool' AND blast_radius = 'Medium') AS medium,
    count(*) FILTER (WHERE span_type = 'tool' AND blast_radius = 'High') AS high,
    count(*) FILTER (WHERE span_type = 'tool' AND blast_radius = 'Critical') AS critical,
    -- errors: a call refused by the policy (error.type tool_call_denied) is the policy
    -- working, counted in `denies`, not a failure of the session
    count(*) FILTER (
        WHERE span_type = 'tool' AND status_code = 'ERROR'
          AND coalesce(error_type, '') <> 'tool_call_denied'
    ) AS errors,
    -- did the last action error? (kept with its start time so it can be merged)
    max(start_time) FILTER (WHERE span_type = 'tool') AS last_action_at,
    -- (of actions starting at the same microsecond an errored one counts as the last, so
    -- every path gives the same answer: the key is the start in µs, doubled, plus 1 if
    -- errored; an integer, cheap to compare)
    arg_max(
        coalesce(status_code = 'ERROR' AND coalesce(error_type, '') <> 'tool_call_denied', false),
        epoch_us(start_time) * 2 + CAST(
            coalesce(
                status_code = 'ERROR' AND coalesce(error_type, '') <> 'tool_call_denied', false
            ) AS BIGINT
        )
    ) FILTER (WHERE span_type = 'tool' AND start_time IS NOT NULL) AS last_action_errored,
    -- a root span (no parent) that errored; tool spans are excluded: an agent without an
    -- invocation span makes every tool call a root, and only its last one decides
    coalesce(
        bool_or(own AND parent_span_id IS NULL AND span_type <> 'tool' AND status_code = 'ERROR'),
        false
    ) AS root_errored,
    -- token usage of the session's LLM spans
    CAST(coalesce(sum(input_tokens) FILTER (WHERE span_type = 'llm'), 0) AS BIGINT)
        AS input_tokens,
    CAST(coalesce(sum(output_tokens) FILTER (WHERE span_type = 'llm'), 0) AS BIGINT)
        AS output_tokens,
    coalesce(
        list(DISTINCT target_repo ORDER BY target_repo)
            FILTER (WHERE span_type = 'tool' AND target_repo IS NOT NULL),
        CAST([] AS VARCHAR[])
    ) AS repos,
    -- how the session ended (docs/DATA.md, "Session end"): the latest end record (a
    -- failed one wins a tie, as for the last action: the key is the end in µs, doubled,
    -- plus 1 if failed), and the latest start of any other span (activity after the end
    -- reopens the session)
    max(end_at) FILTER (WHERE end_outcome IS NOT NULL) AS ended_at,
    arg_max(end_outcome, epoch_us(end_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT))
        FILTER (WHERE end_outcome IS NOT NULL AND end_at IS NOT NULL) AS end_outcome,
    arg_max(
        CASE WHEN end_outcome IS NOT NULL THEN tooltrail_end_source(name, attributes) END,
        epoch_us(end_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT)
    ) FILTER (WHERE end_outcome IS NOT NULL AND end_at IS NOT NULL) AS end_source,
    arg_max(
        CASE
            WHEN end_outcome IS NULL THEN NULL
            WHEN name = 'tooltrail.session.end'
                THEN attributes ->> '$."tooltrail.session.end_reason"'
            ELSE status_message
        END,
        epoch_us(end_at) * 2 + CAST(end_outcome = 'failed' AS BIGINT)
    ) FILTER (WHERE end_outcome IS NOT NULL AND end_at IS NOT NULL) AS end_reason,
    -- (an end span starts when it ends, so it never reads as activity after itself)
    max(start_time) AS last_started_at,
    -- (only tool spans carry the promise; only spans naming tags are parsed for them:
    -- aggregating an empty list per span costs every session query)
    coalesce(bool_or(tooltrail_records_end(attributes)) FILTER (WHERE span_type = 'tool'), false)
        AS records_end,
    coalesce(
        list_sort(list_distinct(flatten(
            list(tooltrail_tags(attributes)) FILTER (WHERE contains(attributes, '"tooltrail.tags"'))
        ))),
        CAST([] AS VARCHAR[])
    ) AS tags,
    -- approval ids (null when the span has none) of actions whose own span says pending;
    -- the `sessions` view lets the live control store overrule these by id
    coalesce(
        list(approval_id) FILTER (
            WHERE own
              AND span_type = 'tool'
              AND decision = 'REQUIRE_APPROVAL'
              AND tooltrail_approval_outcome(approval_status, enforced) = 'pending'
        ),
        CAST([] AS VARCHAR[])
    ) AS pending_refs
FROM (
    SELECT
        -- (a null time: no start, activity, last action or first value; null tokens,
        -- null attributes: no end promise, no tags)
        * REPLACE (
            CASE WHEN own THEN start_time END AS start_time,
            CASE WHEN own THEN end_time END AS end_time,
            CASE WHEN own THEN agent_name END AS agent_name,
            CASE WHEN own THEN parent_session_id END AS parent_session_id,
            CASE WHEN own THEN "trigger" END AS "trigger",
            CASE WHEN own THEN governed_by END AS governed_by,
            CASE WHEN own THEN mcp_client_name END AS mcp_client_name,
            CASE WHEN own THEN input_tokens END AS input_tokens,
            CASE WHEN own THEN output_tokens END AS output_tokens,
            CASE WHEN own THEN attributes END AS attributes
        ),
        -- (an end record someone else sent is no end of this session; from the columns
        -- as landed, as is end_at, which only an end record's row reads)
        CASE WHEN own THEN
            tooltrail_end_outcome(name, span_type, parent_span_id, status_code, attributes)
        END AS end_outcome,
        coalesce(end_time, start_time) AS end_at
    FROM (SELECT *, NOT tooltrail_foreign(source) AS own FROM ({{unique}}))
) AS s
-- A span of no known kind whose session fell back to its trace id (an MCP SDK's own
-- `initialize` span, an HTTP server span) belongs to no agent session.
WHERE session_id IS NOT NULL AND NOT (span_type = 'other' AND session_id = trace_id)
GROUP BY session_id
