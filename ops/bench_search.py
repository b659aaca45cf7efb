"""Paired search benchmark on tiny_gpt: evolution vs best-of-N vs random, equal budget.

Two landscapes give a recipe's val_loss on a seed (``--landscape``):

``runs`` (REAL TRAINING): the shipped cache of real tiny_gpt runs, ops/data/tiny_gpt_runs.jsonl, keyed by
(recipe, training seed) under the env's ``search_cache`` profile (40 optimizer steps, one CPU thread; see
ops/run_cache.py for how a row is made). Every search run of a recipe uses training seed
``campaign seed % --search-seeds`` (default 1: seed 0), confirmations use training seeds 1001-1003 (never used
by the search). ``--fill`` trains a missing (recipe, seed) for real (~22 s each) and appends it; without it a
miss is an error that names the key. ``--shard i/n`` runs only campaign seeds = i mod n, so n processes fill
in parallel; a later read-only pass sees exactly the rows they used.

``surrogate`` (NOT TRAINING): the val_loss of a recipe on a seed is
    2.347 (measured baseline mean) + sum of its changes' effects + pairwise interactions + noise(seed),
where the effects are the measured ones of research_envs/tiny_gpt/README.md and DESIGN.md where they exist
(rope -0.33, LEARNING_RATE=1e-2 +0.28, cosine_warmup +0.06, rmsnorm -0.03, tie_weights +0.01,
LEARNING_RATE=3e-3 -0.05) and otherwise a fixed draw from N(0, 0.04) per change (hashed, so every strategy and
seed sees the same landscape); interactions are a fixed draw from N(0, 0.02) per pair; the seed noise is
N(0, 0.009) (the measured baseline std), drawn from (recipe, seed).

What is real in both: the search code. Each campaign runs the real policy (workflows/selection.py: plan, noise-aware
UCB parents, explore floor, crossover, bounded population) and the real offline ideator on tiny_gpt's real
catalogue, then confirms its best single run on 3 fresh seeds. The three strategies share the campaign seed
(paired). Prints per strategy the mean confirmed winner and the paired bootstrap 95% confidence intervals of
evolution - random and evolution - best-of-N (negative = evolution better).

Schedules (``--schedules``): ``sync`` plans each epoch at once after the previous one finished (the paper's
generations); ``steady`` simulates the campaign's steady-state scheduler on ``--slots`` slots: whenever fewer
than slots + ahead ideas are in flight it plans the deficit, parents chosen from the ideas finished so far
(ideas in flight count as children, as in CampaignWorkflow._ideate), the planning epoch advancing every
``--ideas`` planned ideas; run times are lognormal (mean 1, CV 0.5) drawn from the idea, so results arrive out
of order. Same budget of experiments in both.

    .venv/bin/python ops/bench_search.py --seeds 16 --epochs 5 --ideas 8 --schedules sync,steady
    .venv/bin/python ops/bench_search.py --landscape runs --seeds 12 --cached-only  # shipped cache, sync and steady
    .venv/bin/python ops/bench_search.py --landscape runs --seeds 12 --fill --shard 0/2 &  # grow the cache
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
import logging
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.llm.offline import OfflineIdeator, canonical  # noqa: E402
from ideaforge.models import IdeaPlan, IdeaSummary, IdeateRequest, ProviderConfig, SearchConfig  # noqa: E402
from ideaforge.names import idea_id  # noqa: E402
from ideaforge.ranking import ranked  # noqa: E402
from ideaforge.research_envs.registry import ResearchEnv, load_env  # noqa: E402
from ideaforge.workflows.selection import delta, exploit_share, plan_ideas, update_population  # noqa: E402
from ops.run_cache import CacheMiss, RunCache  # noqa: E402

BASELINE = 2.347
NOISE = 0.009
MEASURED = {  # README / DESIGN.md measurements (val_loss change vs baseline)
    ("variant:rope", None): -0.33,
    ("knob:LEARNING_RATE", 0.01): +0.28,
    ("variant:cosine_warmup", None): +0.06,
    ("variant:rmsnorm", None): -0.03,
    ("variant:tie_weights", None): +0.01,
    ("knob:LEARNING_RATE", 0.003): -0.05,
}


def _gauss(key: str, sd: float) -> float:
    return random.Random(hashlib.sha256(key.encode()).hexdigest()).gauss(0.0, sd)


def true_loss(recipe: tuple) -> float:
    """The surrogate's noise-free val_loss of a recipe (canonical form)."""
    effects = [MEASURED.get((op, v), _gauss(f"effect:{op}={v}", 0.04)) for op, v in recipe]
    pairs = sum(_gauss(f"pair:{a}|{b}", 0.02) for i, a in enumerate(recipe) for b in recipe[i + 1 :])
    return BASELINE + sum(effects) + pairs


def observed(recipe: tuple, seed: int) -> float:
    return true_loss(recipe) + _gauss(f"noise:{recipe}:{seed}", NOISE)


CONFIRM_SEEDS = (1001, 1002, 1003)  # fresh training seeds for the winner, never used by a search run
RUNS = Path(__file__).resolve().parent / "data" / "tiny_gpt_runs.jsonl"


class Surrogate:
    """The surrogate landscape: every campaign seed is its own noise draw; ``true`` is known."""

    name, noise = "SURROGATE of tiny_gpt (not training)", NOISE

    def observed(self, recipe: tuple, campaign_seed: int) -> float | None:
        return observed(recipe, campaign_seed)

    def confirm(self, recipe: tuple, campaign_seed: int) -> list[float | None]:
        return [observed(recipe, campaign_seed + 1000 * (k + 1)) for k in range(len(CONFIRM_SEEDS))]

    def true(self, recipe: tuple) -> float | None:
        return true_loss(recipe)


class Runs:
    """Real tiny_gpt runs from the cache: search runs at seed ``campaign seed % search_seeds``."""

    def __init__(self, cache: RunCache, search_seeds: int) -> None:
        self.cache, self.search_seeds = cache, search_seeds
        self.name = f"REAL tiny_gpt runs ({cache.path.name}, {cache.steps} steps, profile {cache.profile})"
        base = [cache.metric((), s) for s in CONFIRM_SEEDS]
        ok = [b for b in base if b is not None]
        self.noise = statistics.stdev(ok) if len(ok) > 1 else NOISE  # the baseline's seed noise, measured

    def observed(self, recipe: tuple, campaign_seed: int) -> float | None:
        return self.cache.metric(recipe, campaign_seed % self.search_seeds)

    def confirm(self, recipe: tuple, campaign_seed: int) -> list[float | None]:
        return [self.cache.metric(recipe, s) for s in CONFIRM_SEEDS]

    def true(self, recipe: tuple) -> float | None:
        return None


def run_time(key: str) -> float:
    """Lognormal, mean 1, CV 0.5, drawn from the idea (the steady schedule's completion order)."""
    sigma = math.sqrt(math.log(1 + 0.25))
    return random.Random(hashlib.sha256(key.encode()).hexdigest()).lognormvariate(-sigma * sigma / 2, sigma)


class Search:
    """The campaign's search state, with the real policy and ideator: plan ``n`` ideas, take results."""

    def __init__(
        self, env: ResearchEnv, land: Surrogate | Runs, strategy: str, seed: int, epochs: int
    ) -> None:
        self.env, self.land, self.strategy, self.seed, self.epochs = env, land, strategy, seed, epochs
        self.search = SearchConfig(strategy=strategy)
        self.ideator = OfflineIdeator()
        self.name = f"bench-{seed}"
        self.base = IdeaSummary(
            idea_id=idea_id(self.name, 0, 0), epoch=0, title="baseline", text="baseline", origin="baseline",
            recipe=[], status="ok", metric=land.observed((), seed),
        )  # fmt: skip
        self.archive = [self.base]
        self.population = update_population([], self.base, "min", self.search.population)
        self.children: dict[str, int] = {}
        self.n_planned = 1

    def plan(self, epoch: int, n: int, index: int, in_flight: list[IdeaSummary]) -> list[IdeaSummary]:
        """``n`` new ideas of ``epoch`` numbered from ``index``, as summaries with their observed metric."""
        rng = random.Random(f"{self.seed}:{self.n_planned}")
        share = exploit_share(epoch, self.epochs, self.search.exploit_start, self.search.exploit_end)
        counts = dict(self.children)
        for s in in_flight:
            for pid in s.parent_ids:
                counts[pid] = counts.get(pid, 0) + 1
        plan = plan_ideas(
            n, self.population, counts, self.base.metric, self.land.noise, "min", self.search, share, rng
        )
        by_id = {s.idea_id: s for s in self.population}
        parents = [by_id[p] for p in dict.fromkeys(pid for pl in plan for pid in pl.parent_ids)]
        req = IdeateRequest(
            campaign=self.name, env="tiny_gpt", epoch=epoch, n=n, seed=self.seed, provider=ProviderConfig(),
            strategy=self.strategy, parents=parents, archive=[*self.archive, *in_flight],
            baseline_metric=self.base.metric,
            plan=plan if self.strategy == "evolution" else [IdeaPlan() for _ in plan], n_planned=self.n_planned,
            max_changes=self.search.max_changes,
        )  # fmt: skip
        res = asyncio.run(self.ideator.propose(req, self.env))
        self.n_planned += n
        out = []
        for k, idea in enumerate(res.ideas[:n]):
            metric = self.land.observed(canonical(idea.recipe), self.seed)
            out.append(IdeaSummary(
                idea_id=idea_id(self.name, epoch, index + k), epoch=epoch, title=idea.title, text=idea.text,
                origin=idea.origin, parent_ids=idea.parent_ids, recipe=idea.recipe,
                status="ok" if metric is not None else "failed", category=None if metric is not None else "crashed",
                metric=metric,
            ))  # fmt: skip
        return out

    def take(self, s: IdeaSummary) -> None:
        for pid in s.parent_ids:
            self.children[pid] = self.children.get(pid, 0) + 1
        self.archive.append(s)
        self.population = update_population(self.population, s, "min", self.search.population)


def run_sync(search: Search, epochs: int, per_epoch: int) -> None:
    for epoch in range(epochs):
        for s in search.plan(epoch, per_epoch, 1, []):
            search.take(s)


def run_steady(search: Search, epochs: int, per_epoch: int, slots: int, ahead: int) -> None:
    """Event simulation of the steady scheduler: plan the deficit whenever an idea finishes."""
    total, planned, now = epochs * per_epoch, 0, 0.0
    waiting: list[IdeaSummary] = []
    running: list[tuple[float, str, IdeaSummary]] = []  # (end time, id, idea)
    while planned < total or waiting or running:
        deficit = min(slots + ahead - len(waiting) - len(running), total - planned)
        while deficit > 0:  # the campaign plans within the current epoch, as _plan_and_start does
            epoch, index = divmod(planned, per_epoch)
            n = min(deficit, per_epoch - index)
            new = search.plan(epoch, n, index + 1, [*waiting, *(r[2] for r in running)])
            if not new:
                raise RuntimeError(f"the ideator proposed nothing for epoch {epoch}")
            waiting += new
            planned += len(new)
            deficit -= len(new)
        while waiting and len(running) < slots:
            s = waiting.pop(0)
            heapq.heappush(running, (now + run_time(s.idea_id), s.idea_id, s))
        now, _, done = heapq.heappop(running)
        search.take(done)


def campaign(
    env: ResearchEnv, land: Surrogate | Runs, strategy: str, seed: int, epochs: int, per_epoch: int,
    schedule: str = "sync", slots: int = 4, ahead: int = 1,
) -> dict:  # fmt: skip
    """One campaign with the real policy and ideator; returns the confirmed winner (and its true loss, if known)."""
    search = Search(env, land, strategy, seed, epochs)
    if schedule == "sync":
        run_sync(search, epochs, per_epoch)
    else:
        run_steady(search, epochs, per_epoch, slots, ahead)
    archive, base = search.archive, search.base
    best = next(s for s in ranked(archive, "min"))
    rec = canonical(best.recipe)
    runs = land.confirm(rec, seed)
    if any(r is None for r in runs):
        raise RuntimeError(f"campaign {seed} {strategy}: the winner {best.title!r} failed a confirmation run")
    return {
        "seed": seed,
        "strategy": strategy,
        "experiments": len(archive),
        "failed": sum(s.status == "failed" for s in archive),
        "winner": best.title,
        "recipe": [list(m) for m in rec],
        "single_run": best.metric,
        "confirmed": statistics.fmean(runs),  # type: ignore[arg-type]
        "true": land.true(rec),
        "delta_single_run": delta(best, base.metric, "min"),
    }


def paired_ci(a: list[float], b: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b and its paired bootstrap 95% interval."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(d, k=len(d))) for _ in range(n))
    return statistics.fmean(d), means[int(0.025 * n)], means[int(0.975 * n) - 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--landscape", choices=("surrogate", "runs"), default="surrogate")
    p.add_argument("--seeds", type=int, default=16, help="campaign seeds 0..N-1 (paired across strategies)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--ideas", type=int, default=8, help="ideas per epoch (40 experiments = 5 x 8)")
    p.add_argument("--json", type=Path, default=None, help="write the per-campaign rows here")
    p.add_argument("--schedules", default="sync,steady", help="sync and/or steady (comma-separated)")
    p.add_argument("--slots", type=int, default=4, help="steady: training slots")
    p.add_argument("--ahead", type=int, default=1, help="steady: proposals waiting for a slot")
    p.add_argument("--runs", type=Path, default=RUNS, help="runs landscape: the cache of real runs")
    p.add_argument(
        "--search-seeds", type=int, default=1, help="runs landscape: training seeds of search runs"
    )
    p.add_argument(
        "--fill", action="store_true", help="runs landscape: train missing (recipe, seed) for real"
    )
    p.add_argument(
        "--cached-only", action="store_true", help="runs landscape: skip seeds the cache lacks runs of"
    )
    p.add_argument("--shard", default="0/1", help="i/n: only campaign seeds = i mod n (parallel fillers)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shard, shards = (int(x) for x in args.shard.split("/"))
    env = load_env("tiny_gpt")
    land: Surrogate | Runs = Surrogate()
    if args.landscape == "runs":
        land = Runs(RunCache(env, args.runs, "search_cache", fill=args.fill), args.search_seeds)
    seeds = [s for s in range(args.seeds) if s % shards == shard]
    out = {}
    for schedule in args.schedules.split(","):
        rows: dict[str, list[dict]] = {s: [] for s in ("evolution", "best_of_n", "random")}
        skipped = []
        for seed in seeds:  # seed-major: a partial fill leaves whole paired seeds
            try:
                paired = {
                    s: campaign(env, land, s, seed, args.epochs, args.ideas, schedule, args.slots, args.ahead)
                    for s in rows
                }
            except CacheMiss as e:
                if args.cached_only:
                    skipped.append(seed)
                    continue
                sys.exit(
                    f"{e}\nthe shipped cache was filled for --schedules sync --epochs 5 --ideas 8 and the seeds in the "
                    f"README; campaign seed {seed} ({schedule}) needs runs it does not hold: add --fill to train them "
                    "for real (~22 s each, appended to the cache), or --cached-only to skip such seeds"
                )
            for s, row in paired.items():
                rows[s].append(row)
        if skipped:
            print(f"seeds skipped (not all their runs are cached): {skipped}")
        if not rows["evolution"]:
            sys.exit("no campaign seed is wholly in the cache: nothing to compare")
        out[schedule] = rows
        report(land, schedule, rows, args)
    if isinstance(land, Runs):
        print(f"cache: {len(land.cache.rows)} real runs of {len({k[0] for k in land.cache.rows})} distinct recipes"
              f" in {land.cache.path}; {land.cache.ran} trained by this invocation")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def report(
    land: Surrogate | Runs, schedule: str, rows: dict[str, list[dict]], args: argparse.Namespace
) -> None:
    """Mean confirmed winner per strategy and the paired bootstrap CIs of evolution against the others."""
    steady = f" on {args.slots} slots + {args.ahead} ahead" if schedule == "steady" else ""
    n = len(rows["evolution"])
    print(f"{land.name}, schedule {schedule}{steady}: {n} paired seeds, {args.epochs}x{args.ideas} experiments "
          f"+ baseline, winner confirmed on {len(CONFIRM_SEEDS)} fresh seeds; noise {land.noise:.4f}")  # fmt: skip
    keys = ["confirmed"] + (["true"] if isinstance(land, Surrogate) else [])
    for s, rs in rows.items():
        true = f" (true {statistics.fmean(r['true'] for r in rs):.4f})" if "true" in keys else ""
        failed = sum(r["failed"] for r in rs)
        print(f"  {s:10s} confirmed winner {statistics.fmean(r['confirmed'] for r in rs):.4f}{true}, "
              f"experiments {rs[0]['experiments']}, failed runs {failed}")  # fmt: skip
        per_seed = " ".join(f"{r['confirmed']:.3f}" for r in rs)
        print(f"  {'':10s} per seed (campaign seeds in order): {per_seed}")
    for other in ("random", "best_of_n"):
        for key in keys:
            m, lo, hi = paired_ci([r[key] for r in rows["evolution"]], [r[key] for r in rows[other]])
            print(f"  evolution - {other:9s} ({key:9s}): {m:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
