-- A real table with the rows (or just the columns) of a registered Arrow table.
CREATE OR REPLACE TABLE {{name}} AS SELECT * FROM {{source}};
