"""Research environments: one folder each with ``env.toml``, ``baseline/`` and a locked evaluator."""
