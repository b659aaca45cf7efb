"""Who is best: the score of an executed idea and the ranking of an archive. Pure; stdlib + models only.

Workflows (search policy), reports and the CLI all rank ideas with these functions, so "best" means one thing.
"""

from __future__ import annotations

from statistics import fmean

from ideaforge.models import Direction, IdeaSummary


def score(s: IdeaSummary) -> float | None:
    """The metric an idea is judged by: the mean over confirmation seeds when it has them."""
    if s.status != "ok" or s.metric is None:
        return None
    return fmean([s.metric, *s.confirmed_metrics]) if s.confirmed_metrics else s.metric


def ranked(archive: list[IdeaSummary], direction: Direction) -> list[IdeaSummary]:
    """Successful, scored ideas (confirm re-runs excluded), best first; ties broken by id for determinism."""
    scored = [s for s in archive if s.origin != "confirm" and score(s) is not None]
    sign = 1.0 if direction == "min" else -1.0
    return sorted(scored, key=lambda s: (sign * score(s), s.idea_id))  # type: ignore[operator]


def best_idea(archive: list[IdeaSummary], direction: Direction) -> IdeaSummary | None:
    r = ranked(archive, direction)
    return r[0] if r else None
