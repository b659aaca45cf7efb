"""Experiment tracking in MLflow: one run per idea and per epoch, idempotent under retries."""
