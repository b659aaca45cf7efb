"""Idle training slots while work was queued, measured on a real campaign from Temporal's records.

For each training run: when it was scheduled (queued), when it started and when it ended (from the idea
workflows' results). Replaying them on ``--slots`` slots, the gap of a run that had to wait is its start
minus the later of (the moment a slot freed for it, the moment it was queued): the time a free slot sat
idle while this run was waiting. Prints each gap, the median and the p95.

    IDEAFORGE_TEMPORAL_ADDRESS=127.0.0.1:7233 .venv/bin/python ops/slot_gaps.py CAMPAIGN --slots 2
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.config import Settings  # noqa: E402
from ideaforge.models import IdeaOutcome  # noqa: E402
from ideaforge.names import campaign_workflow_id  # noqa: E402


def idle_gaps(runs: list[tuple[float, float, float]], slots: int) -> list[float]:
    """``runs``: (queued, started, ended) per run. The idle time of a free slot before each run that waited."""
    free = [0.0] * slots  # when each slot is next free (a min-heap)
    gaps: list[float] = []
    for queued, started, ended in sorted(runs, key=lambda r: r[1]):
        slot_free = heapq.heappop(free)
        if slot_free > 0.0 and started > queued:  # it waited, and a slot had been busy before
            gaps.append(max(0.0, started - max(slot_free, queued)))
        heapq.heappush(free, ended)
    return gaps


async def campaign_runs(settings: Settings, name: str) -> list[tuple[float, float, float]]:
    from temporalio.client import Client, WorkflowExecutionStatus
    from temporalio.contrib.pydantic import pydantic_data_converter

    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
    )
    runs = []
    async for wf in client.list_workflows(f"ParentWorkflowId='{campaign_workflow_id(name)}'"):
        if wf.status != WorkflowExecutionStatus.COMPLETED:
            continue
        out = await client.get_workflow_handle(wf.id, result_type=IdeaOutcome).result()
        r = out.run
        if r is not None and r.started_at and r.finished_at:
            runs.append((r.started_at - r.queued_s, r.started_at, r.finished_at))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("campaign")
    p.add_argument("--slots", type=int, default=None, help="training slots (default IDEAFORGE_TRAIN_SLOTS)")
    args = p.parse_args()
    settings = Settings.from_env()
    slots = args.slots or settings.train_slots
    runs = asyncio.run(campaign_runs(settings, args.campaign))
    gaps = idle_gaps(runs, slots)
    print(f"campaign {args.campaign}: {len(runs)} training runs on {slots} slots; {len(gaps)} waited for a slot")
    if gaps:
        p95 = sorted(gaps)[int(0.95 * (len(gaps) - 1))]
        print("gaps (s): " + ", ".join(f"{g:.2f}" for g in gaps))
        print(f"free slot -> next queued run start: median {statistics.median(gaps):.3f}s  p95 {p95:.3f}s  max {max(gaps):.3f}s")


if __name__ == "__main__":
    import os

    main()
    sys.stdout.flush()
    os._exit(0)  # temporalio can crash at interpreter exit (sdk-python#300)
