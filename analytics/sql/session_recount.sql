-- session_merge.sql's rows plus the totals of the sessions it left out to recount.
SELECT * FROM ({{merged}})
UNION ALL BY NAME
SELECT * FROM ({{recounted}})
