-- unique_spans.sql when no span of the relation landed more than once (known when the
-- views were planned): every row as it is, at no cost.
SELECT * FROM {{input}}
