"""Benchmark: does the campaign keep training slots busy? Synchronous epochs against steady-state scheduling.

Starts a real Temporal dev server and a real MLflow server on free loopback ports and runs, in this process, the
real workflows and the real ``cpu`` activities (offline ideator, implementer, packaging, MLflow recording,
state saving in the artifact store). Only training is a stand-in: ``run_experiment`` sleeps a lognormal time
(mean ``--run-s``, coefficient of variation ``--cv``), drawn from the idea id so both modes get the same times.

For each mode it prints:
- slot-idle fraction: 1 - (sum of training time) / (slots x campaign wall time); also between the first start
  and the last end, and in the steady part: between the first start and the start of the drain (the last
  training start: after it no slot can be refilled), so ramp-up and drain are told apart from orchestration;
- free slot -> next start, p50/p95: on each slot, the gap between one run's end and the next run's start
  (gaps after the last idea was planned are not counted: there was nothing left to start);
- the largest payload: the largest event of the campaign's histories (all runs) and of sampled idea workflows;
- history events per campaign run (max and mean), and the number of runs (continue-as-new);
- memory: the peak RSS of this process (workers + client) and the RSS of the Temporal and MLflow servers.

    .venv/bin/python ops/bench_orchestration.py --ideas 1000 --slots 16 --run-s 3 --cv 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio import activity  # noqa: E402

from ideaforge import names  # noqa: E402
from ideaforge.cli import campaigns, stack  # noqa: E402
from ideaforge.cli.procs import free_port  # noqa: E402
from ideaforge.config import Settings  # noqa: E402
from ideaforge.models import CampaignConfig, RunRequest, RunResult  # noqa: E402

ENV_TOML = """
name = "bench_sleep"
description = "Trivial env for orchestration benchmarks: training is a stand-in sleep; metric = X squared."
editable_files = ["train.py"]
protected_files = ["evaluate.py"]
run_command = ["{{python}}", "train.py"]
eval_command = ["{{python}}", "evaluate.py"]
metric = "loss"
direction = "min"
plausible_range = [-1.0, 1000000.0]
seed_noise = 0.01

[resources]
device = "cpu"
time_limit_s = 600

[[offline.knobs]]
name = "X"
file = "train.py"
pattern = 'X = ([0-9.-]+)'
values = [{values}]
"""


def make_env(root: Path, n_values: int) -> Path:
    env = root / "bench_sleep"
    (env / "baseline").mkdir(parents=True)
    values = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(n_values))
    (env / "env.toml").write_text(ENV_TOML.format(values=values))
    (env / "baseline" / "train.py").write_text("X = 5.0\n")
    (env / "baseline" / "evaluate.py").write_text("# not run: the benchmark's training is a stand-in\n")
    return root


def run_time(idea_id: str, mean: float, cv: float) -> float:
    """Lognormal with the given mean and coefficient of variation, drawn from the idea id (paired modes)."""
    sigma = math.sqrt(math.log(1 + cv * cv))
    mu = math.log(mean) - sigma * sigma / 2
    return random.Random(hashlib.sha256(idea_id.encode()).hexdigest()).lognormvariate(mu, sigma)


class StandInTraining:
    """``run_experiment`` that sleeps on one of ``slots`` slot ids and records (slot, start, end) per run."""

    def __init__(self, slots: int, mean: float, cv: float) -> None:
        self.free = list(range(slots))
        self.mean, self.cv = mean, cv
        self.runs: list[tuple[int, float, float]] = []

    def activity(self):  # noqa: ANN201
        @activity.defn(name=names.RUN_EXPERIMENT)
        async def run_experiment(req: RunRequest) -> RunResult:
            slot = self.free.pop(0)
            start = time.time()
            try:
                deadline = start + run_time(req.idea_id, self.mean, self.cv)
                while (left := deadline - time.time()) > 0:  # heartbeat like the real activity
                    activity.heartbeat()
                    await asyncio.sleep(min(left, 2.0))
            finally:
                self.free.append(slot)
                self.free.sort()
            end = time.time()
            self.runs.append((slot, start, end))
            metric = random.Random(req.idea_id).random()
            return RunResult(status="ok", metric=metric, started_at=start, finished_at=end, wall_s=end - start)

        return run_experiment


def gaps(runs: list[tuple[int, float, float]], last_plan: float) -> list[float]:
    """Per slot: start of a run minus the end of the previous run on that slot (ends before ``last_plan``)."""
    by_slot: dict[int, list[tuple[float, float]]] = {}
    for slot, s, e in runs:
        by_slot.setdefault(slot, []).append((s, e))
    out = []
    for seq in by_slot.values():
        seq.sort()
        for (_, e0), (s1, _) in zip(seq, seq[1:], strict=False):
            if e0 < last_plan:
                out.append(max(0.0, s1 - e0))
    return out


def idle_between(runs: list[tuple[int, float, float]], slots: int, t0: float, t1: float) -> float:
    """Idle fraction of ``slots`` slots over [t0, t1] (training time clipped to the window)."""
    if t1 <= t0:
        return float("nan")
    busy = sum(max(0.0, min(e, t1) - max(s, t0)) for _, s, e in runs)
    return 1 - busy / (slots * (t1 - t0))


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def history_figures(client, workflow_id: str) -> dict[str, float]:  # noqa: ANN001
    """Runs, events per run and the largest event of a workflow id's whole continue-as-new chain."""
    events_per_run: list[int] = []
    largest = 0
    runs = [wf async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    for wf in runs:
        hist = await client.get_workflow_handle(workflow_id, run_id=wf.run_id).fetch_history()
        events_per_run.append(len(hist.events))
        largest = max([largest, *(ev.ByteSize() for ev in hist.events)])
    return {
        "runs": len(runs),
        "events_max": max(events_per_run),
        "events_mean": statistics.fmean(events_per_run),
        "largest_event_bytes": largest,
    }


async def bench(
    settings: Settings,
    schedule: str,
    ideas: int,
    per_epoch: int,
    slots: int,
    mean: float,
    cv: float,
    ahead: int | None,
) -> dict:
    from temporalio.worker import Worker

    from ideaforge.activities.campaign import CampaignActivities
    from ideaforge.store.artifacts import open_store
    from ideaforge.workers.main import connect
    from ideaforge.workflows.campaign import CampaignWorkflow
    from ideaforge.workflows.idea import IdeaWorkflow

    client = await connect(settings)
    training = StandInTraining(slots, mean, cv)
    acts = CampaignActivities(settings, open_store(settings))
    workers = [
        Worker(client, task_queue=names.ORCHESTRATOR_QUEUE, workflows=[CampaignWorkflow, IdeaWorkflow]),
        Worker(client, task_queue=names.CPU_QUEUE, activities=acts.all(), max_concurrent_activities=32),
        Worker(client, task_queue="cpu-train", activities=[training.activity()], max_concurrent_activities=slots),
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        cfg = CampaignConfig(
            name=f"bench-{schedule}-{int(time.time())}",
            env="bench_sleep",
            epochs=max(1, ideas // per_epoch),
            ideas_per_epoch=per_epoch,
            run_baseline=False,
            schedule=schedule,
            slots=slots,
            ahead=ahead,
            preflight=False,  # stand-in training: no code to check on the CPU (no preflight worker here)
        )
        t0 = time.time()
        handle, _ = await campaigns.start(client, cfg)
        last_plan = [float("inf")]

        async def watch_planning() -> None:
            while True:
                try:
                    st = await handle.query(CampaignWorkflow.status)
                    if st.ideas_planned >= cfg.epochs * per_epoch:
                        last_plan[0] = time.time()
                        return
                except Exception:  # noqa: BLE001, S110 - between two runs of a continue-as-new
                    pass
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_planning())
        result = await handle.result()
        wall = time.time() - t0
        watcher.cancel()
        hist = await history_figures(client, cfg.workflow_id)
        idea_largest = 0
        for wid in [f"{cfg.workflow_id}/e{e:03d}/i{i:02d}" for e in (0, cfg.epochs - 1) for i in range(3)]:
            h = await client.get_workflow_handle(wid).fetch_history()
            idea_largest = max([idea_largest, *(ev.ByteSize() for ev in h.events)])
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)
    busy = sum(e - s for _, s, e in training.runs)
    first_start = min(s for _, s, _ in training.runs)
    span = max(e for _, _, e in training.runs) - first_start
    drain = max(s for _, s, _ in training.runs)  # the last start: from here on slots only empty
    g = gaps(training.runs, last_plan[0])
    return {
        "schedule": schedule,
        "ideas": result.ideas_done,
        "wall_s": wall,
        "busy_s": busy,
        "idle_fraction": 1 - busy / (slots * wall),
        "idle_fraction_runs": 1 - busy / (slots * span),
        "idle_fraction_steady": idle_between(training.runs, slots, first_start, drain),
        "ramp_s": first_start - t0,
        "drain_s": max(e for _, _, e in training.runs) - drain,
        "runs_raw": training.runs,
        "last_plan": last_plan[0],
        "t0": t0,
        "gap_p50": pct(g, 0.5),
        "gap_p95": pct(g, 0.95),
        "gaps": len(g),
        "idea_largest_event": idea_largest,
        **hist,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ideas", type=int, default=1000)
    p.add_argument("--per-epoch", type=int, default=100, help="ideas per epoch")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--run-s", type=float, default=3.0, help="mean stand-in training time per idea (s)")
    p.add_argument("--cv", type=float, default=0.5, help="coefficient of variation of the training time")
    p.add_argument("--modes", default="sync,steady")
    p.add_argument("--ahead", type=int, default=None, help="proposals kept waiting (default: the config's)")
    p.add_argument("--dump", type=Path, default=None, help="write each mode's (slot, start, end) runs here (JSON)")
    args = p.parse_args()
    cpu_before = 0.0
    for schedule in args.modes.split(","):
        with tempfile.TemporaryDirectory(prefix="ideaforge-bench-") as tmp:
            envs = make_env(Path(tmp) / "envs", 2 * args.ideas + 10)
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
                r = asyncio.run(
                    bench(
                        settings, schedule, args.ideas, args.per_epoch, args.slots, args.run_s, args.cv, args.ahead
                    )
                )
                r["server_rss_mb"] = _servers_rss_mb(settings)
                r["server_cpu_s"] = _servers_cpu_s(settings)
            finally:
                stack.down(settings)
        r["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        use = resource.getrusage(resource.RUSAGE_SELF)
        r["worker_cpu_s"] = use.ru_utime + use.ru_stime - cpu_before
        cpu_before += r["worker_cpu_s"]
        print(_line(r, args), flush=True)
        if args.dump:
            runs = {k: r[k] for k in ("runs_raw", "last_plan", "t0", "wall_s")}
            args.dump.with_suffix(f".{schedule}.json").write_text(json.dumps(runs))


def _servers_cpu_s(settings: Settings) -> dict[str, float]:
    """CPU seconds (user + system) the Temporal and MLflow server processes used so far."""
    out = {}
    for name, svc in stack.status(settings).services.items():
        if svc.pid:
            try:
                fields = Path(f"/proc/{svc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1)
            except (OSError, IndexError, ValueError):
                pass
    return out


def _servers_rss_mb(settings: Settings) -> dict[str, int]:
    out = {}
    for name, svc in stack.status(settings).services.items():
        if svc.pid:
            try:
                for line in Path(f"/proc/{svc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] = int(line.split()[1]) // 1024
            except OSError:
                pass
    return out


def _line(r: dict, args: argparse.Namespace) -> str:
    return (
        f"[{r['schedule']}] ideas={r['ideas']} slots={args.slots} run={args.run_s}s cv={args.cv} "
        f"ahead={args.ahead} wall={r['wall_s']:.0f}s busy={r['busy_s']:.0f} slot-s\n"
        f"  slot-idle {100 * r['idle_fraction']:.1f}% of campaign wall time "
        f"({100 * r['idle_fraction_runs']:.1f}% between the first start and the last end, "
        f"{100 * r['idle_fraction_steady']:.1f}% between the first start and the drain)\n"
        f"  ramp-up (campaign start -> first training) {r['ramp_s']:.1f}s, drain (last start -> last end) "
        f"{r['drain_s']:.1f}s\n"
        f"  free slot -> next start: p50 {r['gap_p50']:.2f}s  p95 {r['gap_p95']:.2f}s  ({r['gaps']} gaps)\n"
        f"  largest event: campaign {r['largest_event_bytes'] / 1024:.1f} KB, "
        f"idea {r['idea_largest_event'] / 1024:.1f} KB\n"
        f"  campaign runs {r['runs']}, history events per run max {r['events_max']} mean {r['events_mean']:.0f}\n"
        f"  memory: worker process peak RSS {r['worker_peak_rss_mb']:.0f} MB; servers (MB) {r['server_rss_mb']}\n"
        f"  CPU: workers {r['worker_cpu_s']:.0f} s ({1000 * r['worker_cpu_s'] / max(1, r['ideas']):.0f} ms/idea); "
        f"servers (s, their main process) {r['server_cpu_s']}; machine load {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
