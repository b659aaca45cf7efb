"""Worker processes: orchestrator + CPU worker, training workers (slots = GPUs or CPU slots)."""
