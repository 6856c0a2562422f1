-- Which of the given span ids are already landed, with their trace ids (ingest skips
-- those pairs, so a file ingested twice lands once).
SELECT trace_id, span_id
FROM spans
WHERE span_id IN (SELECT unnest($span_ids))
