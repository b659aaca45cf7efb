"""Content-addressed artifact storage (a local directory or S3/MinIO)."""
