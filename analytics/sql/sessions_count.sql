-- How many sessions match the filters (for paging).
SELECT count(*) AS sessions FROM ({{filtered}})
