"""Deterministic orchestration (Temporal workflows) and the pure search policy. No heavy imports here."""
