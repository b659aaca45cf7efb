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
catalogue, in synchronous epochs, then confirms its best single run on 3 fresh seeds. The three strategies
share the campaign seed (paired). Prints per strategy the mean confirmed winner and the paired bootstrap 95%
confidence intervals of evolution - random and evolution - best-of-N (negative = evolution better).

    .venv/bin/python ops/bench_search.py --seeds 16 --epochs 5 --ideas 8
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.research_envs.registry import ResearchEnv, load_env  # noqa: E402
from ideaforge.workflows.selection import delta, exploit_share, plan_ideas, update_population  # noqa: E402

from ideaforge.llm.offline import OfflineIdeator, canonical  # noqa: E402
from ideaforge.models import IdeaPlan, IdeaSummary, IdeateRequest, ProviderConfig, SearchConfig  # noqa: E402
from ideaforge.names import idea_id  # noqa: E402
from ideaforge.ranking import ranked  # noqa: E402

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


def campaign(env: ResearchEnv, strategy: str, seed: int, epochs: int, per_epoch: int) -> dict:
    """One campaign with the real policy and ideator; returns the confirmed winner and its true loss."""
    search = SearchConfig(strategy=strategy)
    ideator = OfflineIdeator()
    name = f"bench-{seed}"
    base = IdeaSummary(
        idea_id=idea_id(name, 0, 0), epoch=0, title="baseline", text="baseline", origin="baseline",
        recipe=[], status="ok", metric=observed((), seed),
    )  # fmt: skip
    archive, population = [base], update_population([], base, "min", search.population)
    children: dict[str, int] = {}
    n_planned = 1
    for epoch in range(epochs):
        rng = random.Random(f"{seed}:{n_planned}")
        share = exploit_share(epoch, epochs, search.exploit_start, search.exploit_end)
        plan = plan_ideas(per_epoch, population, children, base.metric, NOISE, "min", search, share, rng)
        by_id = {s.idea_id: s for s in population}
        parents = [by_id[p] for p in dict.fromkeys(pid for pl in plan for pid in pl.parent_ids)]
        req = IdeateRequest(
            campaign=name, env="tiny_gpt", epoch=epoch, n=per_epoch, seed=seed, provider=ProviderConfig(),
            strategy=strategy, parents=parents, archive=archive, baseline_metric=base.metric,
            plan=plan if strategy == "evolution" else [IdeaPlan() for _ in plan], n_planned=n_planned,
            max_changes=search.max_changes,
        )  # fmt: skip
        res = asyncio.run(ideator.propose(req, env))
        for k, idea in enumerate(res.ideas):
            rec = canonical(idea.recipe)
            s = IdeaSummary(
                idea_id=idea_id(name, epoch, k + 1), epoch=epoch, title=idea.title, text=idea.text,
                origin=idea.origin, parent_ids=idea.parent_ids, recipe=idea.recipe, status="ok",
                metric=observed(rec, seed),
            )  # fmt: skip
            for pid in idea.parent_ids:
                children[pid] = children.get(pid, 0) + 1
            archive.append(s)
            population = update_population(population, s, "min", search.population)
        n_planned += per_epoch
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
    args = p.parse_args()
    env = load_env("tiny_gpt")
    rows = {s: [campaign(env, s, seed, args.epochs, args.ideas) for seed in range(args.seeds)]
            for s in ("evolution", "best_of_n", "random")}  # fmt: skip
    print(f"SURROGATE of tiny_gpt (not training): {args.seeds} paired seeds, {args.epochs}x{args.ideas} "
          f"experiments + baseline, winner confirmed on 3 fresh seeds; baseline {BASELINE}, noise {NOISE}")  # fmt: skip
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
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
