"""The ``preflight`` Temporal activity (``cpu`` queue): the CPU check of a patched package before training.

It never takes a training slot. At most ``slots`` preflights run at once on a worker (default: half its CPUs),
so a burst of ideas does not starve the worker's other activities. A sandbox that cannot be set up is a
non-retryable ``SandboxUnavailable`` error: the idea workflow then trains without a preflight (training has its
own sandbox check) rather than losing the idea.
"""

from __future__ import annotations

import asyncio
import os
import threading

from ideaforge.research_envs.registry import EnvError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge.config import Settings
from ideaforge.models import PreflightRequest, PreflightResult
from ideaforge.names import PREFLIGHT
from ideaforge.run.preflight import Preflight
from ideaforge.run.runner import ExperimentRunner, RunCancelled
from ideaforge.run.sandbox import SandboxUnavailable
from ideaforge.store.artifacts import ObjectStore

HEARTBEAT_EVERY_S = 5.0


class PreflightActivities:
    def __init__(self, settings: Settings, store: ObjectStore, slots: int | None = None) -> None:
        self.preflight_runner = Preflight(ExperimentRunner(settings, store, threads=1))
        self.slots = asyncio.Semaphore(slots or max(1, (os.cpu_count() or 2) // 2))

    @activity.defn(name=PREFLIGHT)
    async def preflight(self, req: PreflightRequest) -> PreflightResult:
        """Compile the changed files, then run the env's declared CPU preflight (see ideaforge.run.preflight)."""
        cancel = threading.Event()
        async with self.slots:
            work = asyncio.create_task(asyncio.to_thread(self.preflight_runner.check, req, cancel))
            try:
                while True:  # heartbeats carry cancellation to a running activity
                    done, _ = await asyncio.wait({work}, timeout=HEARTBEAT_EVERY_S)
                    if done:
                        return work.result()
                    activity.heartbeat()
            except SandboxUnavailable as e:
                raise ApplicationError(str(e), type="SandboxUnavailable", non_retryable=True) from e
            except (EnvError, ValueError) as e:
                raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e
            except RunCancelled as e:
                raise asyncio.CancelledError() from e
            except asyncio.CancelledError:
                cancel.set()
                await asyncio.gather(work, return_exceptions=True)
                raise
