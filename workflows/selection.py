"""Pure search policy: which executed ideas become parents, how much to exploit, who is best.

Deterministic functions of the campaign archive; used inside workflow code, so stdlib + models only.
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


def select_parents(archive: list[IdeaSummary], direction: Direction, k: int) -> list[IdeaSummary]:
    """The ``k`` best distinct non-baseline ideas; the baseline only when nothing else succeeded."""
    r = ranked(archive, direction)
    non_baseline = [s for s in r if s.origin != "baseline"]
    return (non_baseline or r)[:k]


def exploit_share(epoch: int, epochs: int, start: float, end: float) -> float:
    """Share of exploit ideas: 0 at epoch 0 (nothing to exploit), then rising linearly from start to end."""
    if epoch <= 0:
        return 0.0
    if epochs <= 2:
        return start
    t = (epoch - 1) / (epochs - 2)
    return start + (end - start) * min(1.0, max(0.0, t))


def confirm_candidates(archive: list[IdeaSummary], direction: Direction, k: int) -> list[IdeaSummary]:
    """Top ``k`` ideas to re-run on fresh seeds before a winner is declared (baseline always included)."""
    r = ranked(archive, direction)
    top = [s for s in r if s.origin != "baseline"][:k]
    base = [s for s in archive if s.origin == "baseline" and s.status == "ok"]
    return top + base[:1]
