-- Whether `_copies` holds any span (a row if so).
SELECT 1 FROM _copies LIMIT 1
