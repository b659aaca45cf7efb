"""Activities: every side effect of a campaign (LLMs, patching, packaging, storage, training, MLflow)."""
