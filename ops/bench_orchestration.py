"""Benchmark: orchestration overhead of a campaign of N trivial ideas.

Starts a real Temporal dev server and a real MLflow server on free loopback ports, runs an in-process worker
with S training slots, and a one-epoch campaign of N ideas on a generated env whose training just sleeps a
fixed time. Prints: wall time vs the ideal (sum of run times / slots), overhead % and per idea, and the latency
from a slot becoming free to the next run starting on it.

    .venv/bin/python ops/bench_orchestration.py --ideas 100 --slots 4 --sleep 1.0
"""

from __future__ import annotations

import argparse
import asyncio
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
from ideaforge.models import CampaignConfig  # noqa: E402

ENV_TOML = """
name = "bench_sleep"
description = "Trivial env for orchestration benchmarks: training sleeps a fixed time; metric = X squared."
editable_files = ["train.py"]
protected_files = ["evaluate.py"]
run_command = ["{{python}}", "train.py"]
eval_command = ["{{python}}", "evaluate.py"]
metric = "loss"
direction = "min"
plausible_range = [-1.0, 1000000.0]

[resources]
device = "cpu"
time_limit_s = 60

[profiles.default]
BENCH_SLEEP_S = "{sleep}"

[[offline.knobs]]
name = "X"
file = "train.py"
pattern = 'X = ([0-9.-]+)'
values = [{values}]
"""

TRAIN = """import json, os, time
X = 5.0
time.sleep(float(os.environ["BENCH_SLEEP_S"]))
print('IDEAFORGE_PROGRESS {"step": 1, "loss": %f}' % (X * X), flush=True)
with open(os.path.join(os.environ["IDEAFORGE_OUT"], "x.json"), "w") as f:
    json.dump({"x": X}, f)
"""

EVALUATE = """import json, os
x = json.load(open(os.path.join(os.environ["IDEAFORGE_OUT"], "x.json")))["x"]
json.dump({"loss": x * x}, open(os.environ["IDEAFORGE_METRIC_FILE"], "w"))
"""


def make_env(root: Path, n_values: int, sleep: float) -> Path:
    env = root / "bench_sleep"
    (env / "baseline").mkdir(parents=True)
    values = ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(n_values))
    (env / "env.toml").write_text(ENV_TOML.format(sleep=sleep, values=values))
    (env / "baseline" / "train.py").write_text(TRAIN)
    (env / "baseline" / "evaluate.py").write_text(EVALUATE)
    return root


def slot_latencies(runs: list[tuple[float, float]], slots: int) -> list[float]:
    """For each run that had to wait for a slot: its start minus the end that freed the slot it took."""
    ends = sorted(end for _, end in runs)
    starts = sorted(start for start, _ in runs)
    return [max(0.0, start - ends[i]) for i, start in enumerate(starts[slots:]) if i < len(ends)]


async def bench(settings: Settings, ideas: int, slots: int) -> dict[str, float]:
    from ideaforge.workers.main import build_workers, connect

    client = await connect(settings)
    workers = build_workers(client, settings, [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, "cpu-train"], slots)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        cfg = CampaignConfig(
            name=f"bench-{int(time.time())}",
            env="bench_sleep",
            epochs=1,
            ideas_per_epoch=ideas,
            run_baseline=False,
        )
        t0 = time.monotonic()
        handle, _ = await campaigns.start(client, cfg)
        result = await handle.result()
        wall = time.monotonic() - t0
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
    runs = result.archive
    ok = sum(s.status == "ok" for s in runs)
    timings = await _run_timings(client, [s.idea_id for s in runs])
    run_sum = sum(end - start for start, end in timings)
    ideal = run_sum / slots
    lat = slot_latencies(timings, slots)
    return {
        "ideas": len(runs),
        "ok": ok,
        "wall_s": wall,
        "sum_run_s": run_sum,
        "ideal_s": ideal,
        "overhead_pct": 100 * (wall - ideal) / ideal if ideal else float("nan"),
        "overhead_per_idea_s": (wall - ideal) / max(1, len(runs)),
        "slot_latency_median_s": statistics.median(lat) if lat else float("nan"),
        "slot_latency_p95_s": sorted(lat)[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
    }


async def _run_timings(client, idea_ids: list[str]) -> list[tuple[float, float]]:
    """(start, end) of each run_experiment activity, read from the child workflows' results."""
    from ideaforge.workflows.idea import IdeaWorkflow

    out = []
    for wid in idea_ids:
        o = await client.get_workflow_handle_for(IdeaWorkflow.run, wid).result()
        if o.run and o.run.started_at:
            out.append((o.run.started_at, o.run.finished_at))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ideas", type=int, default=100)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--sleep", type=float, default=1.0, help="seconds each trivial training run sleeps")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ideaforge-bench-") as tmp:
        envs = make_env(Path(tmp) / "envs", args.ideas + 10, args.sleep)
        settings = Settings(
            home=Path(tmp) / "home",
            temporal_address=f"127.0.0.1:{free_port()}",
            temporal_ui_port=free_port(),
            mlflow_uri=f"http://127.0.0.1:{free_port()}",
            env_paths=[envs],
            train_slots=args.slots,
        )
        stack.start_temporal(settings, timeout_s=60)
        stack.start_mlflow(settings, timeout_s=120)
        try:
            r = asyncio.run(bench(settings, args.ideas, args.slots))
        finally:
            stack.down(settings)
    print(f"ideas={r['ideas']} ok={r['ok']} slots={args.slots} run={args.sleep}s each")
    print(
        f"wall {r['wall_s']:.1f}s  ideal {r['ideal_s']:.1f}s (sum of runs {r['sum_run_s']:.1f}s / {args.slots})"
    )
    print(f"overhead {r['overhead_pct']:.1f}%  = {r['overhead_per_idea_s']:.3f}s per idea")
    print(
        f"free slot -> next run start: median {r['slot_latency_median_s']:.3f}s  p95 {r['slot_latency_p95_s']:.3f}s"
    )


if __name__ == "__main__":
    main()
