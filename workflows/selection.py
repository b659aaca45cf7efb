"""Pure search policy: the population of parent candidates, the plan of each idea, the exploit schedule.

Deterministic functions of their arguments (randomness only from a ``random.Random`` the caller seeds with
``f"{seed}:{n_planned}"``), used inside workflow code, so stdlib + the bottom layer only.

The parent rule is noise-aware: a parent must not be worse than the baseline by more than the seed noise;
among those, the one with the highest upper confidence bound is chosen, where the bound grows with the
parent's improvement (in units of the noise) and shrinks with the number of its children, in flight or done.
"""

from __future__ import annotations

import math
import random

from ideaforge.models import Direction, IdeaPlan, IdeaSummary, SearchConfig
from ideaforge.ranking import ranked, score

CHILD_HISTORY = 5  # child outcomes kept per parent (for the ideator's context)


def delta(s: IdeaSummary, baseline: float | None, direction: Direction) -> float | None:
    """Improvement of ``s`` over the baseline in the env's direction (positive = better), or None."""
    m = score(s)
    if m is None or baseline is None:
        return None
    return (baseline - m) if direction == "min" else (m - baseline)


def update_population(
    population: list[IdeaSummary], new: IdeaSummary, direction: Direction, size: int
) -> list[IdeaSummary]:
    """The ``size`` best scored ideas (confirm re-runs excluded) plus the baseline, with ``new`` considered."""
    if new.origin == "confirm" or score(new) is None:
        return population
    pool = [s for s in population if s.idea_id != new.idea_id] + [new]
    base = [s for s in pool if s.origin == "baseline"][:1]
    best = [s for s in ranked(pool, direction) if s.origin != "baseline"][:size]
    return best + base


def eligible_parents(
    population: list[IdeaSummary], baseline: float | None, noise: float, direction: Direction
) -> list[IdeaSummary]:
    """Non-baseline ideas not worse than the baseline by more than the noise (every scored one before a
    baseline exists), best first. Empty: there is nothing to build on yet, so the plan explores."""
    return [
        s
        for s in ranked(population, direction)
        if s.origin != "baseline" and (baseline is None or (delta(s, baseline, direction) or 0.0) >= -noise)
    ]


def ucb(s: IdeaSummary, baseline: float | None, noise: float, direction: Direction, children: int, total: int, c: float) -> float:
    """Upper confidence bound of a parent: improvement in noise units plus a bonus that shrinks with children."""
    d = delta(s, baseline, direction)
    value = (d or 0.0) / max(noise, 1e-12) if noise > 0 else (d or 0.0)
    return value + c * math.sqrt(math.log(total + 2) / (1 + children))


def choose_parents(
    candidates: list[IdeaSummary],
    k: int,
    children: dict[str, int],
    baseline: float | None,
    noise: float,
    direction: Direction,
    c: float,
    rng: random.Random,
) -> list[IdeaSummary]:
    """``k`` distinct parents by UCB (ties broken at random); each pick counts as one more child."""
    chosen: list[IdeaSummary] = []
    total = sum(children.values())
    for _ in range(min(k, len(candidates))):
        pool = [s for s in candidates if s not in chosen]
        jitter = {s.idea_id: rng.random() * 1e-9 for s in pool}
        best = max(
            pool,
            key=lambda s: ucb(s, baseline, noise, direction, children.get(s.idea_id, 0), total, c)
            + jitter[s.idea_id],
        )
        chosen.append(best)
        children[best.idea_id] = children.get(best.idea_id, 0) + 1
        total += 1
    return chosen


def plan_ideas(
    n: int,
    population: list[IdeaSummary],
    child_counts: dict[str, int],
    baseline: float | None,
    noise: float,
    direction: Direction,
    search: SearchConfig,
    share: float,
    rng: random.Random,
) -> list[IdeaPlan]:
    """The plan of ``n`` ideas: explore (no parent), exploit one parent, or cross over two.

    ``share`` is the exploit share of the schedule, capped so at least ``search.explore_floor`` explores.
    ``child_counts`` (parent id -> children done or in flight) is updated with the plan's own picks.
    """
    if search.strategy != "evolution":
        return [IdeaPlan() for _ in range(n)]
    candidates = eligible_parents(population, baseline, noise, direction)
    share = min(share, 1.0 - search.explore_floor)
    # exploit count: the expected share, rounded stochastically (a batch of one still exploits sometimes)
    whole, frac = divmod(share * n, 1.0)
    n_exploit = int(whole) + (rng.random() < frac) if candidates else 0
    plans: list[IdeaPlan] = []
    for k in range(n):
        if k >= n_exploit:
            plans.append(IdeaPlan())
            continue
        pick = 2 if len(candidates) >= 2 and rng.random() < search.crossover else 1
        parents = choose_parents(
            candidates, pick, child_counts, baseline, noise, direction, search.ucb_c, rng
        )
        plans.append(IdeaPlan(parent_ids=[p.idea_id for p in parents]))
    return plans


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
