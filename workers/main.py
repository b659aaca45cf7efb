"""Worker process: the orchestrator (workflows), the `cpu` activity queue, training queues and the RL trainer.

    python -m ideaforge.workers.main [--queues orchestrator,cpu,cpu-train,rl] [--slots N] [--gpu-type h100]

The ``rl`` queue runs the GRPO updates of RL campaigns (one at a time) and loads adapters into the served
ideator: run it on the machine that trains the ideator, sharing the adapter folder with the server.

A training queue (``cpu-train`` or ``gpu-<type>``) runs at most ``slots`` experiments at once; on a GPU machine
the slots default to the number of GPUs and each experiment gets its own ``CUDA_VISIBLE_DEVICES``. SIGTERM or
SIGINT shuts down gracefully: running experiments are asked to checkpoint and are handed back to Temporal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from ideaforge import names
from ideaforge.activities.campaign import CampaignActivities
from ideaforge.activities.experiment import ExperimentActivities
from ideaforge.activities.preflight import PreflightActivities
from ideaforge.activities.rl import RLActivities
from ideaforge.config import Settings
from ideaforge.models import training_queue
from ideaforge.run.devices import DevicePool, cpu_slots, detect_gpus
from ideaforge.run.sandbox import SandboxUnavailable, check_sandbox
from ideaforge.store.artifacts import open_store
from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow
from ideaforge.workflows.rl_campaign import RLCampaignWorkflow

log = logging.getLogger("ideaforge.worker")

DEFAULT_QUEUES = f"{names.ORCHESTRATOR_QUEUE},{names.CPU_QUEUE},{training_queue('cpu')},{names.PREFLIGHT_QUEUE}"
GRACEFUL_SHUTDOWN_S = 120


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


def build_workers(client: Client, settings: Settings, queues: list[str], slots: int | None) -> list[Worker]:
    """One Worker per queue, all sharing one client, store and device pool."""
    store = open_store(settings)
    workers: list[Worker] = []
    identity = settings.worker_identity or f"ideaforge@{os.uname().nodename}:{os.getpid()}"
    if names.ORCHESTRATOR_QUEUE in queues:
        workers.append(
            Worker(
                client,
                task_queue=names.ORCHESTRATOR_QUEUE,
                workflows=[CampaignWorkflow, IdeaWorkflow, RLCampaignWorkflow],
                identity=identity,
            )
        )
    if names.CPU_QUEUE in queues:
        acts = CampaignActivities(settings, store)
        workers.append(
            Worker(
                client,
                task_queue=names.CPU_QUEUE,
                activities=[*acts.all(), *RLActivities(settings, store).sampling()],
                max_concurrent_activities=16,
                identity=identity,
            )
        )
    if names.RL_QUEUE in queues:
        workers.append(
            Worker(
                client,
                task_queue=names.RL_QUEUE,
                activities=RLActivities(settings, store).training(),
                max_concurrent_activities=1,  # one GRPO update at a time: it holds the whole accelerator
                graceful_shutdown_timeout=_graceful(),
                identity=identity,
            )
        )
    if names.PREFLIGHT_QUEUE in queues:  # untrusted code, on the CPU: sandboxed like training, no slot taken
        require_sandbox(names.PREFLIGHT_QUEUE)
        n = preflight_slots()
        workers.append(
            Worker(
                client,
                task_queue=names.PREFLIGHT_QUEUE,
                activities=[PreflightActivities(settings, store).preflight],
                max_concurrent_activities=n,
                identity=identity,
            )
        )
        log.info("preflight queue with %d concurrent check(s)", n)
    for q in queues:
        if q == "cpu-train" or q.startswith("gpu-"):
            require_sandbox(q)
            if q.startswith("gpu-"):
                gpus = detect_gpus()
                n = slots or len(gpus) or 1
                device_ids = gpus[:n] if gpus else list(range(n))
            else:
                n = slots or settings.train_slots
                device_ids = cpu_slots(n)
            exp = ExperimentActivities(settings, store, DevicePool(device_ids))
            workers.append(
                Worker(
                    client,
                    task_queue=q,
                    activities=[exp.run_experiment],
                    max_concurrent_activities=n,
                    graceful_shutdown_timeout=_graceful(),
                    identity=f"{identity} slots={n}",  # advertised: `ideaforge start` checks it (preflight)
                )
            )
            log.info("training queue %s with %d slot(s): %s", q, n, device_ids)
    if not workers:
        raise SystemExit(f"no known queue in {queues}: use orchestrator, cpu, cpu-train, gpu-<type>, preflight or rl")
    return workers


def preflight_slots() -> int:
    """Concurrent preflights of a worker: IDEAFORGE_PREFLIGHT_SLOTS, else half its CPUs (at least 1)."""
    value = os.environ.get("IDEAFORGE_PREFLIGHT_SLOTS")
    return max(1, int(value)) if value else max(1, (os.cpu_count() or 2) // 2)


def require_sandbox(queue: str) -> None:
    """Refuse to serve a training queue where generated code cannot be sandboxed (no silent fallback)."""
    try:
        mode = check_sandbox()
    except SandboxUnavailable as e:
        raise SystemExit(f"refusing to serve training queue {queue}: the sandbox cannot be set up: {e}") from e
    if mode == "unsafe":
        log.warning("training queue %s runs generated code WITHOUT a sandbox: every result is tagged unsafe", queue)


def _graceful():
    from datetime import timedelta

    return timedelta(seconds=GRACEFUL_SHUTDOWN_S)


async def serve(settings: Settings, queues: list[str], slots: int | None) -> None:
    client = await connect(settings)
    workers = build_workers(client, settings, queues, slots)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker up: queues=%s temporal=%s", queues, settings.temporal_address)
    runs = [asyncio.create_task(w.run()) for w in workers]
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *runs], return_when=asyncio.FIRST_COMPLETED)
    log.info("worker shutting down")
    await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
    for t in runs:
        if t in done and t.exception():
            raise t.exception()  # type: ignore[misc]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ideaforge.workers.main", description=__doc__.splitlines()[0])
    p.add_argument("--queues", default=os.environ.get("IDEAFORGE_QUEUES", DEFAULT_QUEUES))
    p.add_argument(
        "--slots", type=int, default=None, help="training slots (default: GPUs or IDEAFORGE_TRAIN_SLOTS)"
    )
    p.add_argument("--gpu-type", default=os.environ.get("IDEAFORGE_GPU_TYPE"))
    args = p.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("IDEAFORGE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    if args.gpu_type:
        queues = [training_queue("gpu", args.gpu_type) if q == "gpu" else q for q in queues]
    asyncio.run(serve(Settings.from_env(), queues, args.slots))


if __name__ == "__main__":
    main()
