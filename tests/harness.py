"""Test helpers for running ideaforge workers in-process or as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ideaforge.workers.main import build_workers
from temporalio.client import Client

from ideaforge import names
from ideaforge.config import Settings
from ideaforge.models import Progress

ALL_QUEUES = [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, "cpu-train"]
REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def running_worker(
    client: Client, settings: Settings, queues: list[str] | None = None, slots: int = 2
) -> AsyncIterator[None]:
    """The real worker code (workflows + activities) inside this event loop, shut down on exit."""
    workers = build_workers(client, settings, queues or ALL_QUEUES, slots=slots)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)


def spawn_worker(log: Path, queues: str = "cpu-train", slots: int = 1) -> subprocess.Popen:
    """A worker as a real OS process (``python -m ideaforge.workers.main``) in its own session, settings from os.environ."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "ideaforge.workers.main", "--queues", queues, "--slots", str(slots)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def pending_progress(client: Client, workflow_id: str) -> Progress | None:
    """Heartbeat details of the workflow's pending training activity (re-validated), if any."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    for pa in desc.raw_description.pending_activities:
        if pa.heartbeat_details.payloads:
            (detail,) = await client.data_converter.decode(pa.heartbeat_details.payloads, [dict])
            return Progress.model_validate(detail)
    return None


async def wait_for_checkpoint(
    client: Client, workflow_id: str, min_step: int, timeout_s: float = 120
) -> Progress:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        p = await pending_progress(client, workflow_id)
        if p is not None and p.checkpoint is not None and (p.checkpoint_step or 0) >= min_step:
            return p
        await asyncio.sleep(0.2)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout_s}s")


def processes_under(path: Path) -> list[int]:
    """PIDs whose working directory is inside ``path`` (training processes of a worker)."""
    pids = []
    root = str(Path(path).resolve())
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                continue
            if cwd.startswith(root):
                pids.append(int(d.name))
    return pids
