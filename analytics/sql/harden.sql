-- A read-only analytics connection: only the landed record can be read (the span files'
-- directory and the session index), nothing written, no extension installed or loaded,
-- and none of this can be switched back (lock_configuration). The stores beside them
-- (access.sqlite, webhooks.sqlite, control.sqlite, the chain's keys) hold secrets and are
-- read by tooltrail's own code, never by a query. `allowed` (directories) and
-- `allowed_files` are list literals.
-- No spill directory: DuckDB adds its temp directory (./.tmp of the working directory by
-- default) to the allowed ones, which would open whatever lies there to queries.
SET temp_directory = '';
SET allowed_directories = {{allowed}};
SET allowed_paths = {{allowed_files}};
SET enable_external_access = false;
SET lock_configuration = true;
