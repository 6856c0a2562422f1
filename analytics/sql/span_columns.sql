-- The select list every reader of span files goes through (the `spans` view, the session
-- index and its delta): the landed columns, with times that cannot be right made unknown,
-- plus `time_flag` naming why. The files keep the values as landed (the record); only the
-- views interpret them, so files landed before this rule existed are read safely too.
--   * start_time / end_time later than now + skew (tooltrail_future): null;
--   * end_time before start_time (both plausible): end_time null;
--   * duration_ms: null when negative or when either time was made unknown.
-- A null time never counts for a session's start, last activity or `active` status.
-- A decision only claimed by an unauthenticated sender (verified = false, issue 17) never
-- reads as enforced: the file keeps what was claimed, the views do not believe it.
* REPLACE (
    CASE WHEN verified IS FALSE THEN false ELSE enforced END AS enforced,
    CASE WHEN NOT tooltrail_future(start_time) THEN start_time END AS start_time,
    CASE
        WHEN NOT tooltrail_future(end_time)
            AND (end_time >= start_time OR tooltrail_future(start_time)) THEN end_time
    END AS end_time,
    CASE
        WHEN duration_ms >= 0
            AND NOT tooltrail_future(start_time)
            AND NOT tooltrail_future(end_time)
            AND end_time >= start_time THEN duration_ms
    END AS duration_ms
),
CASE
    WHEN tooltrail_future(start_time) THEN 'start_in_future'
    WHEN tooltrail_future(end_time) THEN 'end_in_future'
    WHEN end_time < start_time THEN 'end_before_start'
    WHEN duration_ms < 0 THEN 'negative_duration'
END AS time_flag
