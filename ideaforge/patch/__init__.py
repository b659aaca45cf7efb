"""Diffs: parse, repair and apply an implementer's change to a baseline tree, and package the result."""
