-- Settings of every analytics connection. Days and timestamps print in UTC (partitions
-- are UTC days); extensions are never downloaded behind the user's back; Parquet footers
-- are cached so repeated queries over the same files skip re-reading them.
SET TimeZone = 'UTC';
SET autoinstall_known_extensions = false;
SET parquet_metadata_cache = true;
