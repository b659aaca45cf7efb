"""The paired search benchmark on the shipped cache of real tiny_gpt runs (ops/bench_search.py --landscape runs):
the cache holds every run its campaigns ask for, and a campaign is a pure function of its seed."""

from __future__ import annotations

import pytest

from ideaforge.research_envs.registry import load_env
from ops.bench_search import RUNS, Runs, campaign
from ops.run_cache import CacheMiss, RunCache

STRATEGIES = ("evolution", "best_of_n", "random")


@pytest.fixture(scope="module")
def land() -> Runs:
    return Runs(RunCache(load_env("tiny_gpt"), RUNS, "search_cache"), search_seeds=1)


@pytest.mark.parametrize(("schedule", "seed"), [("sync", 0), ("steady", 11)])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_shipped_cache_serves_a_whole_paired_campaign(land: Runs, strategy: str, schedule: str, seed: int) -> None:
    """A seed's three campaigns (40 experiments + the baseline each, the winner confirmed on 3 fresh seeds) read
    every run from the shipped file, in both schedules (seed 11: the last one filled): nothing is trained,
    nothing is missing."""
    row = campaign(load_env("tiny_gpt"), land, strategy, seed, 5, 8, schedule)
    assert row["experiments"] == 41 and land.cache.ran == 0
    again = campaign(load_env("tiny_gpt"), land, strategy, seed, 5, 8, schedule)
    assert row == again, "a campaign is a function of its seed"
    baseline = land.cache.metric((), 0)
    assert baseline is not None and row["single_run"] <= baseline  # the winner is the best single run


def test_a_campaign_the_cache_was_not_filled_for_names_the_missing_run(land: Runs) -> None:
    with pytest.raises(CacheMiss, match="no cached run of"):
        campaign(load_env("tiny_gpt"), land, "random", 10_000, 5, 8)


def test_a_failed_run_is_a_failed_idea_of_the_campaign() -> None:
    """A run the cache holds as failed (val_loss null) enters the archive as a failed idea, never a winner."""
    from ops.bench_search import Surrogate

    class RopeCrashes(Surrogate):
        def observed(self, recipe: tuple, campaign_seed: int) -> float | None:
            return None if ("variant:rope", None) in recipe else super().observed(recipe, campaign_seed)

    row = campaign(load_env("tiny_gpt"), RopeCrashes(), "evolution", 0, 5, 8)
    assert row["failed"] > 0 and ["variant:rope", None] not in row["recipe"]
