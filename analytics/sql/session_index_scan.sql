SELECT * FROM read_parquet({{index_file}})
