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

-- The outcome a span records for the end of its session, or null when it is not an end
-- record (docs/DATA.md, "Session end"):
--   * tooltrail's session-end span (`tooltrail.session.end`): its
--     `tooltrail.session.outcome` (completed / failed), else failed when it errored;
--   * a root agent span (span_type agent, no parent): the agent run's end; failed when it
--     errored, else completed.
CREATE OR REPLACE MACRO tooltrail_end_outcome(name, span_type, parent_span_id, status_code, attributes) AS
    CASE
        WHEN name = 'tooltrail.session.end' THEN coalesce(
            CASE lower(attributes ->> '$."tooltrail.session.outcome"')
                WHEN 'completed' THEN 'completed'
                WHEN 'failed' THEN 'failed'
            END,
            CASE WHEN status_code = 'ERROR' THEN 'failed' ELSE 'completed' END
        )
        WHEN span_type = 'agent' AND parent_span_id IS NULL THEN
            CASE WHEN status_code = 'ERROR' THEN 'failed' ELSE 'completed' END
    END;

-- Who recorded an end record: the session-end span's `tooltrail.session.end_source`
-- (session, gateway), or `agent` for a root agent span.
CREATE OR REPLACE MACRO tooltrail_end_source(name, attributes) AS
    CASE
        WHEN name = 'tooltrail.session.end'
            THEN coalesce(attributes ->> '$."tooltrail.session.end_source"', 'session')
        ELSE 'agent'
    END;

-- A span's session tags (`tooltrail.tags`: a list of strings, or one string); [] without.
-- The key is looked for in the text first: most spans have no tags, and parsing their
-- attributes would cost every session query a JSON parse per span.
CREATE OR REPLACE MACRO tooltrail_tags(attributes) AS
    CASE
        WHEN contains(attributes, '"tooltrail.tags"') THEN coalesce(
            CASE json_type(attributes, '$."tooltrail.tags"')
                WHEN 'ARRAY' THEN list_filter(
                    json_extract_string(attributes, '$."tooltrail.tags"[*]'),
                    lambda t: t IS NOT NULL AND t <> ''
                )
                WHEN 'VARCHAR' THEN [attributes ->> '$."tooltrail.tags"']
            END,
            CAST([] AS VARCHAR[])
        )
        ELSE CAST([] AS VARCHAR[])
    END;

-- Whether a span says its session records its end (`tooltrail.session.ends`): a session
-- saying so that lands no end record was abandoned (its agent died).
CREATE OR REPLACE MACRO tooltrail_records_end(attributes) AS
    contains(attributes, '"tooltrail.session.ends":true');

-- Whether a row was sent into its session by an agent other than the session's holder:
-- its `source` is `agent:<sender>/session-of:<holder>` (collector/pipeline.py writes it;
-- agent names hold no '/'). Such a row is in the session's record (its trace, its actions
-- marked claimed, span_count) but says nothing about the session: not its status, end,
-- times, identity, tags or token totals (session_partials.sql; docs/SECURITY.md §8).
CREATE OR REPLACE MACRO tooltrail_foreign(source) AS
    coalesce(source LIKE 'agent:%/session-of:%', false);
