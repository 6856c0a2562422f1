-- A read-only analytics connection: no file outside the data directory can be read or
-- written, no extension installed or loaded, and none of this can be switched back
-- (lock_configuration). `allowed` is the data directory, as a list literal.
-- No spill directory: DuckDB adds its temp directory (./.tmp of the working directory by
-- default) to the allowed ones, which would open whatever lies there to queries.
SET temp_directory = '';
SET allowed_directories = {{allowed}};
SET enable_external_access = false;
SET lock_configuration = true;
