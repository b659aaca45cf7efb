"""Paired search benchmark on a SURROGATE of tiny_gpt: evolution vs best-of-N vs random, equal budget.

THE METRIC IS A SURROGATE, NOT TRAINING. Real tiny_gpt runs take 1-3 min each on this machine; a paired
benchmark of 40 experiments x 16 seeds x 3 strategies would need ~2,000 of them. Instead, the val_loss of a
recipe on a seed is
    2.347 (measured baseline mean) + sum of its changes' effects + pairwise interactions + noise(seed),
where the effects are the measured ones of research_envs/tiny_gpt/README.md and DESIGN.md where they exist
(rope -0.33, LEARNING_RATE=1e-2 +0.28, cosine_warmup +0.06, rmsnorm -0.03, tie_weights +0.01,
LEARNING_RATE=3e-3 -0.05) and otherwise a fixed draw from N(0, 0.04) per change (hashed, so every strategy and
seed sees the same landscape); interactions are a fixed draw from N(0, 0.02) per pair; the seed noise is
N(0, 0.009) (the measured baseline std), drawn from (recipe, seed).

What is real: the search code. Each campaign runs the real policy (workflows/selection.py: plan, noise-aware
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
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import json
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
    pairs = sum(
        _gauss(f"pair:{a}|{b}", 0.02) for i, a in enumerate(recipe) for b in recipe[i + 1 :]
    )
    return BASELINE + sum(effects) + pairs


def observed(recipe: tuple, seed: int) -> float:
    return true_loss(recipe) + _gauss(f"noise:{recipe}:{seed}", NOISE)


def run_time(key: str) -> float:
    """Lognormal, mean 1, CV 0.5, drawn from the idea (the steady schedule's completion order)."""
    sigma = math.sqrt(math.log(1 + 0.25))
    return random.Random(hashlib.sha256(key.encode()).hexdigest()).lognormvariate(-sigma * sigma / 2, sigma)


class Search:
    """The campaign's search state, with the real policy and ideator: plan ``n`` ideas, take results."""

    def __init__(self, env: ResearchEnv, strategy: str, seed: int, epochs: int) -> None:
        self.env, self.strategy, self.seed, self.epochs = env, strategy, seed, epochs
        self.search = SearchConfig(strategy=strategy)
        self.ideator = OfflineIdeator()
        self.name = f"bench-{seed}"
        self.base = IdeaSummary(
            idea_id=idea_id(self.name, 0, 0), epoch=0, title="baseline", text="baseline", origin="baseline",
            recipe=[], status="ok", metric=observed((), seed),
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
        plan = plan_ideas(n, self.population, counts, self.base.metric, NOISE, "min", self.search, share, rng)
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
        return [
            IdeaSummary(
                idea_id=idea_id(self.name, epoch, index + k), epoch=epoch, title=idea.title, text=idea.text,
                origin=idea.origin, parent_ids=idea.parent_ids, recipe=idea.recipe, status="ok",
                metric=observed(canonical(idea.recipe), self.seed),
            )  # fmt: skip
            for k, idea in enumerate(res.ideas[:n])
        ]

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
    env: ResearchEnv, strategy: str, seed: int, epochs: int, per_epoch: int,
    schedule: str = "sync", slots: int = 4, ahead: int = 1,
) -> dict:  # fmt: skip
    """One campaign with the real policy and ideator; returns the confirmed winner and its true loss."""
    search = Search(env, strategy, seed, epochs)
    if schedule == "sync":
        run_sync(search, epochs, per_epoch)
    else:
        run_steady(search, epochs, per_epoch, slots, ahead)
    archive, base = search.archive, search.base
    best = next(s for s in ranked(archive, "min"))
    rec = canonical(best.recipe)
    confirmed = statistics.fmean(observed(rec, seed + 1000 * (k + 1)) for k in range(3))
    return {
        "experiments": len(archive),
        "winner": best.title,
        "confirmed": confirmed,
        "true": true_loss(rec),
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
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--ideas", type=int, default=8, help="ideas per epoch (40 experiments = 5 x 8)")
    p.add_argument("--json", type=Path, default=None, help="write the per-campaign rows here")
    p.add_argument("--schedules", default="sync,steady", help="sync and/or steady (comma-separated)")
    p.add_argument("--slots", type=int, default=4, help="steady: training slots")
    p.add_argument("--ahead", type=int, default=1, help="steady: proposals waiting for a slot")
    args = p.parse_args()
    env = load_env("tiny_gpt")
    out = {}
    for schedule in args.schedules.split(","):
        rows = {
            s: [
                campaign(env, s, seed, args.epochs, args.ideas, schedule, args.slots, args.ahead)
                for seed in range(args.seeds)
            ]
            for s in ("evolution", "best_of_n", "random")
        }
        out[schedule] = rows
        steady = f" on {args.slots} slots + {args.ahead} ahead" if schedule == "steady" else ""
        print(f"SURROGATE of tiny_gpt (not training), schedule {schedule}{steady}: {args.seeds} paired seeds, "
              f"{args.epochs}x{args.ideas} experiments + baseline, winner confirmed on 3 fresh seeds; "
              f"baseline {BASELINE}, noise {NOISE}")  # fmt: skip
        for s, rs in rows.items():
            print(
                f"  {s:10s} confirmed winner {statistics.fmean(r['confirmed'] for r in rs):.4f}"
                f" (true {statistics.fmean(r['true'] for r in rs):.4f}), experiments {rs[0]['experiments']}"
            )
        for other in ("random", "best_of_n"):
            for key in ("confirmed", "true"):
                m, lo, hi = paired_ci([r[key] for r in rows["evolution"]], [r[key] for r in rows[other]])
                print(f"  evolution - {other:9s} ({key:9s}): {m:+.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
