"""The ingest stage: MovieLens releases (downloaded, zipped or extracted) into typed Parquet."""
