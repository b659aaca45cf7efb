"""Pure search policy: parents, exploit schedule, confirmation candidates."""

from __future__ import annotations

from ideaforge.workflows.selection import confirm_candidates, exploit_share, select_parents

from ideaforge.models import IdeaSummary
from ideaforge.ranking import best_idea, ranked, score


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


def test_parents_prefer_non_baseline_and_fall_back_to_baseline() -> None:
    base = s("base", 1.0, origin="baseline")
    assert [p.idea_id for p in select_parents([base, s("a", 2.0), s("b", 1.5)], "min", 1)] == ["b"]
    assert [p.idea_id for p in select_parents([base, s("x", None, "failed")], "min", 2)] == ["base"]


def test_exploit_share_rises_from_start_to_end() -> None:
    shares = [exploit_share(e, 5, 0.2, 0.8) for e in range(5)]
    assert shares[0] == 0.0 and shares[1] == 0.2 and abs(shares[4] - 0.8) < 1e-9
    assert shares == sorted(shares)


def test_confirm_candidates_are_top_k_plus_baseline() -> None:
    arch = [s("base", 2.0, origin="baseline"), s("a", 1.0), s("b", 1.5), s("c", 1.7)]
    assert [c.idea_id for c in confirm_candidates(arch, "min", 2)] == ["a", "b", "base"]
