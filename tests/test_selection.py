"""Pure search policy: parents, exploit schedule, confirmation candidates."""

from __future__ import annotations

import random

from ideaforge.models import IdeaSummary, SearchConfig
from ideaforge.ranking import best_idea, ranked, score
from ideaforge.workflows.selection import (
    choose_parents,
    confirm_candidates,
    eligible_parents,
    exploit_share,
    plan_ideas,
    update_population,
)


def s(i: str, metric: float | None, status: str = "ok", origin: str = "explore", confirmed=()) -> IdeaSummary:
    return IdeaSummary(
        idea_id=i,
        epoch=0,
        title=i,
        text=i,
        origin=origin,
        status=status,
        metric=metric,
        confirmed_metrics=list(confirmed),
    )


def test_ranking_respects_direction_and_skips_failures() -> None:
    arch = [s("a", 2.0), s("b", 1.0), s("c", None, "failed"), s("d", 3.0)]
    assert [x.idea_id for x in ranked(arch, "min")] == ["b", "a", "d"]
    assert [x.idea_id for x in ranked(arch, "max")] == ["d", "a", "b"]
    assert best_idea([s("x", None, "failed")], "min") is None


def test_confirmed_metrics_decide_the_score() -> None:
    lucky = s("lucky", 1.0, confirmed=[2.0, 2.2])
    steady = s("steady", 1.5, confirmed=[1.5, 1.6])
    assert score(lucky) > score(steady)
    assert best_idea([lucky, steady], "min").idea_id == "steady"


def test_exploit_share_rises_from_start_to_end() -> None:
    shares = [exploit_share(e, 5, 0.2, 0.8) for e in range(5)]
    assert shares[0] == 0.0 and shares[1] == 0.2 and abs(shares[4] - 0.8) < 1e-9
    assert shares == sorted(shares)


def test_confirm_candidates_are_top_k_plus_baseline() -> None:
    arch = [s("base", 2.0, origin="baseline"), s("a", 1.0), s("b", 1.5), s("c", 1.7)]
    assert [c.idea_id for c in confirm_candidates(arch, "min", 2)] == ["a", "b", "base"]


def test_parents_must_not_be_worse_than_the_baseline_by_more_than_the_noise() -> None:
    base = s("base", 1.0, origin="baseline")
    pop = [base, s("good", 0.9), s("noisy", 1.02), s("bad", 1.2)]
    assert [p.idea_id for p in eligible_parents(pop, 1.0, 0.05, "min")] == ["good", "noisy"]
    assert eligible_parents([base, s("bad", 1.2)], 1.0, 0.05, "min") == [], "nothing to build on: explore"


def test_ucb_spreads_children_over_good_parents_counting_those_in_flight() -> None:
    base = s("base", 1.0, origin="baseline")
    pop = [base, s("a", 0.90), s("b", 0.91)]
    rng = random.Random("1:0")
    assert [p.idea_id for p in choose_parents(pop[1:], 1, {}, 1.0, 0.05, "min", 1.0, rng)] == ["a"]
    # a already has 6 children (done or in flight): the nearly as good b gets the next one
    assert [p.idea_id for p in choose_parents(pop[1:], 1, {"a": 6}, 1.0, 0.05, "min", 1.0, rng)] == ["b"]
    # without the exploration bonus, the children do not matter
    assert [p.idea_id for p in choose_parents(pop[1:], 1, {"a": 6}, 1.0, 0.05, "min", 0.0, rng)] == ["a"]


def test_plan_keeps_an_explore_floor_crosses_over_and_is_deterministic() -> None:
    base = s("base", 1.0, origin="baseline")
    pop = [base, s("a", 0.9), s("b", 0.92), s("c", 0.95)]
    cfg = SearchConfig(explore_floor=0.3, crossover=0.5)
    plan = plan_ideas(400, pop, {}, 1.0, 0.01, "min", cfg, 1.0, random.Random("0:10"))
    explore = sum(not p.parent_ids for p in plan) / len(plan)
    assert 0.22 < explore < 0.38, explore
    assert any(len(p.parent_ids) == 2 and len(set(p.parent_ids)) == 2 for p in plan)
    assert all(set(p.parent_ids) <= {"a", "b", "c"} for p in plan)
    again = plan_ideas(400, pop, {}, 1.0, 0.01, "min", cfg, 1.0, random.Random("0:10"))
    assert again == plan
    assert all(not p.parent_ids for p in plan_ideas(5, pop, {}, 1.0, 0.01, "min", SearchConfig(strategy="random"), 1.0, random.Random(0)))


def test_population_is_bounded_and_keeps_the_baseline() -> None:
    pop: list[IdeaSummary] = []
    pop = update_population(pop, s("base", 1.0, origin="baseline"), "min", 3)
    for k in range(20):
        pop = update_population(pop, s(f"i{k:02d}", 1.0 - 0.01 * k), "min", 3)
    pop = update_population(pop, s("x", None, "failed"), "min", 3)
    assert [p.idea_id for p in pop] == ["i19", "i18", "i17", "base"]
