"""Benchmark on real runs: search quality — evolution vs best-of-N vs random, equal budget (slow: real training).

See ops/bench_search.py for the paired benchmark over many seeds. This one runs real campaigns (Temporal dev server, MLflow server, in-process worker, the offline ideator) on a CPU
research env for each strategy and seed, all with the same number of experiments (epochs x ideas per epoch),
each campaign ending with its confirmation step (top ideas and the baseline re-run on fresh seeds). Prints the
best metric per epoch (mean ± std over seeds), the confirmed winner per campaign and whether it beats the
baseline by more than the env's seed noise. Writes the raw figures as JSON.

    .venv/bin/python ops/bench_search_real.py --env tiny_gpt --profile bench --seeds 0,1 --epochs 3 --ideas 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge import names  # noqa: E402
from ideaforge.cli import campaigns, stack  # noqa: E402
from ideaforge.cli.procs import free_port  # noqa: E402
from ideaforge.config import Settings  # noqa: E402
from ideaforge.models import CampaignConfig, CampaignResult, EnvSpec, IdeaSummary, SearchConfig  # noqa: E402
from ideaforge.ranking import ranked, score  # noqa: E402
from ideaforge.research_envs.registry import load_env  # noqa: E402


def best_so_far(archive: list[IdeaSummary], spec: EnvSpec, epochs: int) -> list[float | None]:
    """Best single-run metric among ideas executed up to each epoch (the baseline counts from epoch 0)."""
    out: list[float | None] = []
    for e in range(epochs):
        pool = [s for s in archive if s.origin != "confirm" and s.epoch <= e]
        r = ranked(pool, spec.direction)
        out.append(r[0].metric if r else None)
    return out


def confirmed_winner(result: CampaignResult, spec: EnvSpec) -> dict:
    """The winner by confirmed mean, the baseline's confirmed mean, and whether the gap exceeds the noise
    (from the result's population, which carries the confirmed metrics)."""
    base = next((s for s in result.archive if s.origin == "baseline"), None)
    cands = [s for s in result.archive if s.origin not in ("baseline", "confirm") and s.confirmed_metrics]
    best = ranked(cands, spec.direction)[0] if cands else None
    noise = spec.seed_noise or 0.0
    base_score = score(base) if base else None
    win_score = score(best) if best else None
    gap = None
    if base_score is not None and win_score is not None:
        gap = (base_score - win_score) if spec.direction == "min" else (win_score - base_score)
    return {
        "winner": best.idea_id if best else None,
        "winner_title": best.title if best else None,
        "winner_confirmed_mean": win_score,
        "baseline_confirmed_mean": base_score,
        "improvement": gap,
        "beats_noise": gap is not None and gap > 2 * noise,
    }


async def run_all(settings: Settings, args, spec: EnvSpec) -> list[dict]:
    from ideaforge.activities.campaign import load_archive
    from ideaforge.store.artifacts import open_store
    from ideaforge.workers.main import build_workers, connect

    client = await connect(settings)
    queues = [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, "cpu-train", names.PREFLIGHT_QUEUE]
    workers = build_workers(client, settings, queues, args.slots)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    rows = []
    try:
        for strategy in args.strategies.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                cfg = CampaignConfig(
                    name=f"bench-{strategy.replace('_', '')}-s{seed}-{int(time.time()) % 100000}",
                    env=args.env,
                    epochs=args.epochs,
                    ideas_per_epoch=args.ideas,
                    seed=seed,
                    profile=args.profile,
                    search=SearchConfig(strategy=strategy),
                    confirm_top_k=args.confirm_top_k,
                    confirm_seeds=args.confirm_seeds,
                )
                t0 = time.monotonic()
                handle, _ = await campaigns.start(client, cfg)
                result = await handle.result()
                archive = load_archive(open_store(settings), result.archive_ref)
                row = {
                    "strategy": strategy,
                    "seed": seed,
                    "wall_s": time.monotonic() - t0,
                    "experiments": sum(s.origin != "confirm" for s in archive),
                    "confirm_runs": sum(s.origin == "confirm" for s in archive),
                    "ok": sum(s.status == "ok" for s in archive),
                    "baseline": result.baseline_metric,
                    "best_per_epoch": best_so_far(archive, spec, args.epochs),
                    **confirmed_winner(result, spec),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
    return rows


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarize(rows: list[dict], epochs: int, spec: EnvSpec) -> None:
    print(
        f"\nenv {spec.name}: {spec.metric} ({'lower' if spec.direction == 'min' else 'higher'} is better), "
        f"seed noise {spec.seed_noise}"
    )
    header = ["strategy"] + [f"best@e{e}" for e in range(epochs)] + ["confirmed winner", "beats noise"]
    print(" | ".join(header))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == strategy]
        cells = [strategy]
        for e in range(epochs):
            cells.append(_ms([r["best_per_epoch"][e] for r in rs if r["best_per_epoch"][e] is not None]))
        cells.append(_ms([r["winner_confirmed_mean"] for r in rs if r["winner_confirmed_mean"] is not None]))
        cells.append(f"{sum(r['beats_noise'] for r in rs)}/{len(rs)}")
        print(" | ".join(cells))
    base = [r["baseline_confirmed_mean"] for r in rows if r["baseline_confirmed_mean"] is not None]
    print(f"baseline (confirmed mean over campaigns): {_ms(base)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="tiny_gpt")
    p.add_argument("--profile", default="bench")
    p.add_argument("--strategies", default="evolution,best_of_n,random")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--ideas", type=int, default=4)
    p.add_argument("--confirm-top-k", type=int, default=1)
    p.add_argument("--confirm-seeds", type=int, default=2)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench_search.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ideaforge-search-") as tmp:
        settings = Settings(
            home=Path(tmp) / "home",
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            mlflow_uri=f"http://127.0.0.1:{free_port()}",
            train_slots=args.slots,
        )
        spec = load_env(args.env, settings.env_paths).spec
        stack.start_temporal(settings, timeout_s=60)
        stack.start_mlflow(settings, timeout_s=120)
        try:
            rows = asyncio.run(run_all(settings, args, spec))
        finally:
            stack.down(settings)
    args.out.write_text(json.dumps(rows, indent=2))
    summarize(rows, args.epochs, spec)
    print(f"raw figures: {args.out}")


if __name__ == "__main__":
    main()
