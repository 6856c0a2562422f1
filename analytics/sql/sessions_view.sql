-- `sessions`: one row per session (SPEC §3), from `_session_totals` joined with the live
-- control store (`control_approvals`, `control_sessions`).
--
-- action_count counts every action (tool call, each span once) of the session, decided
-- or not: allows + denies + rewrites + approvals + undecided = action_count always holds
-- (undecided: tool spans without a decision). total_actions is the same number, kept
-- under its old name for readers written against it.
--
-- governed_by: 'gateway' when any of the session's spans came through the MCP gateway
-- (mcp_client_name / mcp_client_version: the client it served), else 'instrumentation'
-- when tooltrail's in-process instrumentation made them, else null (third-party spans).
-- changed_tool_calls: actions on a tool whose definition differed from its pinned one.
-- claimed_calls: actions whose decision an unauthenticated sender only claimed (landed
-- verified = false): shown as claimed, never counted as enforced.
-- foreign_spans: rows another agent's credential sent into the session (source
-- agent:<sender>/session-of:<holder>): in span_count and, tool spans, in the action
-- tallies, but never in its status, end, times, identity, tags or tokens
-- (session_partials.sql).
--
-- status, first match wins: canceled / paused (session control), waiting_approval (an
-- approval is pending), completed (an operator marked it so: `tooltrail complete`), the
-- outcome of its latest end record (completed / failed; failed too when recorded by an
-- agent span or the gateway and the last action errored) unless a span started after it;
-- for a session whose producer records its end (records_end) and has none: active while
-- within the idle window, else abandoned (its agent died). Sessions with no end record
-- and no such mark (data landed before end records existed, third-party spans) keep the
-- guesses: failed (the last action or a root span errored), active (last activity
-- within the idle window), completed.
CREATE OR REPLACE VIEW sessions AS
WITH store_ids AS (
    SELECT coalesce(list(approval_id) FILTER (WHERE approval_id IS NOT NULL), []) AS ids
    FROM control_approvals
),
store_pending AS (
    SELECT
        session_id,
        count(*) AS n,
        arg_min(agent_name, requested_at) AS agent_name,
        min(requested_at) AS first_requested_at,
        max(requested_at) AS last_requested_at
    FROM control_approvals
    WHERE lower(status) = 'pending' AND session_id IS NOT NULL
    GROUP BY session_id
),
control AS (
    -- the latest state per session (the store keeps one row each; tolerate history), and
    -- an operator's latest "complete" (who, when, why): one relation, joined once
    SELECT
        session_id,
        arg_max(lower(state), changed_at) FILTER (WHERE kind = 'state') AS state,
        arg_max(changed_by, changed_at) FILTER (WHERE kind = 'state') AS changed_by,
        max(changed_at) FILTER (WHERE kind = 'state') AS changed_at,
        arg_max(changed_by, changed_at) FILTER (WHERE kind = 'complete') AS completed_by,
        max(changed_at) FILTER (WHERE kind = 'complete') AS completed_at,
        arg_max(reason, changed_at) FILTER (WHERE kind = 'complete') AS completion_reason
    FROM (
        SELECT session_id, state, changed_by, changed_at, NULL AS reason, 'state' AS kind
        FROM control_sessions
        UNION ALL
        SELECT session_id, NULL, changed_by, changed_at, reason, 'complete'
        FROM control_events
        WHERE action = 'complete'
    )
    GROUP BY session_id
)
SELECT
    t.session_id,
    t.agent_name,
    CASE
        WHEN ctl.state = 'canceled' THEN 'canceled'
        WHEN ctl.state = 'paused' THEN 'paused'
        WHEN pending_approvals > 0 THEN 'waiting_approval'
        WHEN ctl.completed_at IS NOT NULL THEN 'completed'
        WHEN t.end_outcome IS NOT NULL
            AND NOT coalesce(t.last_started_at > t.ended_at, false) THEN
            -- the agent's own code says how it went (`session`); an agent span's status
            -- or a gateway's disconnect only say that it ended: a last action that
            -- errored still makes the session failed
            CASE
                WHEN t.end_outcome = 'completed' AND t.end_source <> 'session'
                    AND coalesce(t.last_action_errored, false) THEN 'failed'
                ELSE t.end_outcome
            END
        WHEN coalesce(t.records_end, false) THEN
            CASE
                WHEN t.last_activity_at >= now() - coalesce(
                    getvariable('tooltrail_idle_window'), INTERVAL 5 MINUTE
                ) THEN 'active'
                ELSE 'abandoned'
            END
        WHEN coalesce(t.last_action_errored, false) OR t.root_errored THEN 'failed'
        WHEN t.last_activity_at >= now()
            - coalesce(getvariable('tooltrail_idle_window'), INTERVAL 5 MINUTE) THEN 'active'
        ELSE 'completed'
    END AS status,
    t.total_actions AS action_count,
    t.started_at,
    t.last_action_at,
    t.last_activity_at,
    t.repos,
    t.allows,
    t.denies,
    t.rewrites,
    t.approvals,
    t.total_actions - (t.allows + t.denies + t.rewrites + t.approvals) AS undecided,
    t.total_actions,
    CASE
        WHEN t.critical > 0 THEN 'Critical'
        WHEN t.high > 0 THEN 'High'
        WHEN t.medium > 0 THEN 'Medium'
        WHEN t.low > 0 THEN 'Low'
    END AS max_blast_radius,
    t.low,
    t.medium,
    t.high,
    t.critical,
    t.errors,
    t.input_tokens,
    t.output_tokens,
    t.parent_session_id,
    t."trigger",
    t.governed_by,
    t.mcp_client_name,
    t.mcp_client_version,
    t.changed_tool_calls,
    t.claimed_calls,
    pending_approvals,
    t.span_count,
    t.foreign_spans,
    ctl.state AS control_state,
    ctl.changed_by AS control_changed_by,
    ctl.changed_at AS control_changed_at,
    -- whether the status is recorded (session control, an operator, an end record) rather
    -- than guessed from idle time
    CASE
        WHEN ctl.state IN ('canceled', 'paused') OR pending_approvals > 0 THEN 'control'
        WHEN ctl.completed_at IS NOT NULL THEN 'operator'
        WHEN t.end_outcome IS NOT NULL
            AND NOT coalesce(t.last_started_at > t.ended_at, false) THEN 'end_record'
        WHEN coalesce(t.records_end, false) THEN 'idle_window'
        ELSE 'guessed'
    END AS status_basis,
    coalesce(t.tags, CAST([] AS VARCHAR[])) AS tags,
    t.ended_at,
    t.end_outcome,
    t.end_source,
    t.end_reason,
    ctl.completed_by,
    ctl.completed_at,
    ctl.completion_reason
FROM (
    -- Pending approvals: the store's pending requests, plus the spans' own "pending" for
    -- ids the store does not hold (for an id it holds, the store alone says; a span citing
    -- it for another call, an in_store = false row of `approvals`, does not count).
    -- A session the store knows only from a pending request (an agent held on its very
    -- first call: nothing of it has landed yet) is listed too, with no actions.
    SELECT
        t.* REPLACE (
            coalesce(t.session_id, sp.session_id) AS session_id,
            coalesce(t.agent_name, sp.agent_name) AS agent_name,
            coalesce(t.started_at, sp.first_requested_at) AS started_at,
            coalesce(t.last_activity_at, sp.last_requested_at) AS last_activity_at,
            coalesce(t.span_count, 0) AS span_count,
            coalesce(t.foreign_spans, 0) AS foreign_spans,
            coalesce(t.total_actions, 0) AS total_actions,
            coalesce(t.allows, 0) AS allows,
            coalesce(t.denies, 0) AS denies,
            coalesce(t.rewrites, 0) AS rewrites,
            coalesce(t.approvals, 0) AS approvals,
            coalesce(t.low, 0) AS low,
            coalesce(t.medium, 0) AS medium,
            coalesce(t.high, 0) AS high,
            coalesce(t.critical, 0) AS critical,
            coalesce(t.errors, 0) AS errors,
            coalesce(t.changed_tool_calls, 0) AS changed_tool_calls,
            coalesce(t.claimed_calls, 0) AS claimed_calls,
            coalesce(t.root_errored, false) AS root_errored,
            coalesce(t.input_tokens, 0) AS input_tokens,
            coalesce(t.output_tokens, 0) AS output_tokens,
            coalesce(t.repos, CAST([] AS VARCHAR[])) AS repos
        ),
        CAST(
            len(
                list_filter(
                    coalesce(t.pending_refs, CAST([] AS VARCHAR[])),
                    lambda r: r IS NULL OR NOT list_contains(s.ids, r)
                )
            )
            + coalesce(sp.n, 0) AS BIGINT
        ) AS pending_approvals
    FROM _session_totals AS t
    CROSS JOIN store_ids AS s
    FULL OUTER JOIN store_pending AS sp ON sp.session_id = t.session_id
) AS t
LEFT JOIN control AS ctl ON ctl.session_id = t.session_id;
