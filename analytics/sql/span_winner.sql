-- Which landed copy of a span counts when (session_id, trace_id, span_id) landed more than
-- once (a batch resent after a lost acknowledgement, a file ingested twice): the first by
-- this order. A copy tooltrail vouches for beats a claimed one (`verified` false: another
-- agent's credential, or none, sent it; otherwise a copy of a victim's span, resent by an
-- agent that learned its ids from `traceparent`, could replace the verified record).
-- Then a decided copy beats an undecided one, a decision taken at call time beats
-- one classified after the fact, a settled approval beats a pending one, then the latest
-- end; the last key only makes the pick repeatable between copies that differ otherwise.
verified IS FALSE,
decision IS NULL,
enforced IS NOT TRUE,
approval_status IS NULL OR lower(approval_status) NOT IN ('approved', 'denied', 'expired'),
end_time DESC NULLS LAST,
hash(
    name, status_code, status_message, arguments, arguments_rewritten, result_preview,
    policy_rule, approval_id, approval_status, attributes
)
