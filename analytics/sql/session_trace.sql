-- One session's activity trace (analytics.session_trace): its LLM steps, agent
-- invocations, tool calls (one row per span each), session ends and control events
-- (pause / resume / cancel / an operator's complete), in the order they happened.
--   entry: llm | agent | tool | end | control
--   occurred_at: when it happened: a span's start; an end record's end; a control change's time.
--   claimed: tooltrail does not believe what the row says: its decision was only claimed
--     (verified = false) or another agent's credential sent it into this session
--     (tooltrail_foreign): listed here, but not the session's end, output or totals.
-- The caller (queries.py) reads prompts and outputs out of `attributes` and adds the
-- session's final output. Ties (same microsecond) keep tool calls in sequence order,
-- then a span before a control event before an end.
WITH other_spans AS (
    -- every span but the tool calls (those come from `actions`, reduced to one row per
    -- span there); a span landed twice is listed once, its copy that ended last
    SELECT * FROM spans
    WHERE session_id = $session_id AND span_type <> 'tool'
    QUALIFY row_number() OVER (
        PARTITION BY trace_id, span_id
        ORDER BY end_time DESC NULLS LAST, hash(attributes, status_code)
    ) = 1
),
entries AS (
    SELECT
        'tool' AS entry,
        start_time AS occurred_at,
        0 AS rank,
        sequence,
        name,
        span_type,
        tool_name,
        mcp_server,
        decision,
        policy_rule,
        blast_radius,
        action_summary,
        arguments,
        result_preview,
        CAST(NULL AS VARCHAR) AS model,
        CAST(NULL AS BIGINT) AS input_tokens,
        CAST(NULL AS BIGINT) AS output_tokens,
        CASE
            WHEN error_type = 'tool_call_denied' THEN 'denied'
            WHEN upper(status_code) = 'ERROR' THEN 'error'
            ELSE 'ok'
        END AS outcome,
        CAST(NULL AS VARCHAR) AS actor,
        status_message AS reason,
        duration_ms,
        attributes,
        trace_id,
        span_id,
        parent_span_id,
        source,
        verified IS FALSE OR tooltrail_foreign(source) AS claimed
    FROM actions
    WHERE session_id = $session_id
    UNION ALL BY NAME
    SELECT
        CASE WHEN name = 'tooltrail.session.end' THEN 'end' ELSE span_type END AS entry,
        CASE WHEN name = 'tooltrail.session.end' THEN coalesce(end_time, start_time)
            ELSE start_time
        END AS occurred_at,
        CASE WHEN name = 'tooltrail.session.end' THEN 2 ELSE 0 END AS rank,
        sequence,
        name,
        span_type,
        model,
        input_tokens,
        output_tokens,
        CASE
            WHEN name = 'tooltrail.session.end'
                THEN tooltrail_end_outcome(name, span_type, parent_span_id, status_code, attributes)
            WHEN upper(status_code) = 'ERROR' THEN 'error'
            ELSE 'ok'
        END AS outcome,
        CASE WHEN name = 'tooltrail.session.end' THEN tooltrail_end_source(name, attributes) END
            AS actor,
        CASE
            WHEN name = 'tooltrail.session.end'
                THEN attributes ->> '$."tooltrail.session.end_reason"'
            ELSE status_message
        END AS reason,
        duration_ms,
        attributes,
        trace_id,
        span_id,
        parent_span_id,
        source,
        verified IS FALSE OR tooltrail_foreign(source) AS claimed
    FROM other_spans
    WHERE span_type IN ('llm', 'agent') OR name = 'tooltrail.session.end'
    UNION ALL BY NAME
    -- a root agent span's end is the agent run's end (an end record, as in `sessions`)
    SELECT
        'end' AS entry,
        coalesce(end_time, start_time) AS occurred_at,
        2 AS rank,
        name,
        span_type,
        tooltrail_end_outcome(name, span_type, parent_span_id, status_code, attributes)
            AS outcome,
        'agent' AS actor,
        status_message AS reason,
        attributes,
        trace_id,
        span_id,
        parent_span_id,
        source,
        verified IS FALSE OR tooltrail_foreign(source) AS claimed
    FROM other_spans
    WHERE span_type = 'agent' AND parent_span_id IS NULL
    UNION ALL BY NAME
    SELECT
        'control' AS entry,
        changed_at AS occurred_at,
        1 AS rank,
        action AS name,
        changed_by AS actor,
        reason
    FROM control_events
    WHERE session_id = $session_id
)
SELECT * REPLACE (coalesce(claimed, false) AS claimed) FROM entries
ORDER BY occurred_at NULLS LAST, rank, sequence NULLS LAST, span_id
