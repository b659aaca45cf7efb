"""Pure search policy: which executed ideas become parents, how much to exploit, who is best.

Deterministic functions of the campaign archive; used inside workflow code, so stdlib + models only.
"""

from __future__ import annotations

from ideaforge.models import Direction, IdeaSummary
from ideaforge.ranking import ranked


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
