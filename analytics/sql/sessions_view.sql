-- `sessions`: one row per session (SPEC §3), from `_session_totals` joined with the live
-- control store (`control_approvals`, `control_sessions`).
--
-- action_count counts *decided* actions, so allows + denies + rewrites + approvals =
-- action_count always holds; tool spans without a decision are `undecided`, and
-- total_actions = action_count + undecided.
--
-- status, first match wins: canceled / paused (session control), waiting_approval (an
-- approval is pending), failed (the last action or a root span errored), active (last
-- activity within the idle window), completed.
CREATE OR REPLACE VIEW sessions AS
WITH store_ids AS (
    SELECT coalesce(list(approval_id) FILTER (WHERE approval_id IS NOT NULL), []) AS ids
    FROM control_approvals
),
store_pending AS (
    SELECT session_id, count(*) AS n
    FROM control_approvals
    WHERE lower(status) = 'pending'
    GROUP BY session_id
),
control AS (
    -- the latest state per session (the store keeps one row each; tolerate history)
    SELECT
        session_id,
        arg_max(lower(state), changed_at) AS state,
        arg_max(changed_by, changed_at) AS changed_by,
        max(changed_at) AS changed_at
    FROM control_sessions
    GROUP BY session_id
)
SELECT
    t.session_id,
    t.agent_name,
    CASE
        WHEN ctl.state = 'canceled' THEN 'canceled'
        WHEN ctl.state = 'paused' THEN 'paused'
        WHEN pending_approvals > 0 THEN 'waiting_approval'
        WHEN coalesce(t.last_action_errored, false) OR t.root_errored THEN 'failed'
        WHEN t.last_activity_at >= now()
            - coalesce(getvariable('tooltrail_idle_window'), INTERVAL 5 MINUTE) THEN 'active'
        ELSE 'completed'
    END AS status,
    t.allows + t.denies + t.rewrites + t.approvals AS action_count,
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
    pending_approvals,
    t.span_count,
    ctl.state AS control_state,
    ctl.changed_by AS control_changed_by,
    ctl.changed_at AS control_changed_at
FROM (
    -- Pending approvals, by the same rule as the `approvals` view's outcome: the span's
    -- own "pending" unless the store knows that id, plus the store's pending requests.
    SELECT
        t.*,
        CAST(
            len(list_filter(t.pending_refs, lambda r: r IS NULL OR NOT list_contains(s.ids, r)))
            + coalesce(sp.n, 0) AS BIGINT
        ) AS pending_approvals
    FROM _session_totals AS t
    CROSS JOIN store_ids AS s
    LEFT JOIN store_pending AS sp ON sp.session_id = t.session_id
) AS t
LEFT JOIN control AS ctl ON ctl.session_id = t.session_id;
