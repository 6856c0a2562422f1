-- The outcome of a REQUIRE_APPROVAL action as its own span records it. Shared by the
-- `approvals` view and the per-session pending count so both always agree.
--   * a recorded status (any case) of pending / approved / denied / expired / abandoned
--     is kept (abandoned: the agent stopped waiting before a decision; the call never ran);
--   * no status on an action the exporter classified after the fact (enforced = false):
--     nobody was asked, the call already ran -> 'not_requested';
--   * anything else (no status, unknown status) -> 'pending': an action that needed
--     approval is never shown as approved without a record saying so (fail closed).
CREATE OR REPLACE MACRO tooltrail_approval_outcome(status, enforced) AS
    CASE
        WHEN lower(status) IN ('pending', 'approved', 'denied', 'expired', 'abandoned')
            THEN lower(status)
        WHEN status IS NULL AND enforced IS NOT DISTINCT FROM false THEN 'not_requested'
        ELSE 'pending'
    END;

-- A time the producer cannot have meant: later than now plus a small clock skew. Spans
-- land after they end, so a start or end beyond that (e.g. 2^64-1 ns, year 2554) is a
-- broken clock or a forged value; the views treat it as unknown (see span_columns.sql).
CREATE OR REPLACE MACRO tooltrail_future(t) AS t > now() + INTERVAL 5 MINUTE;
