"""Temporal activities: thin adapters over the libraries (ideaforge.llm, .patch, .run, .store, .track)."""
