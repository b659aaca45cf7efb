"""The top layer: the `ideaforge` command, campaign control over Temporal, and local stack supervision."""
