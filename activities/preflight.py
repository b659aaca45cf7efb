"""The ``preflight`` Temporal activity (queue ``preflight``): the CPU check of a patched package before training.

It runs untrusted code, so the queue is served by sandboxed workers (training hosts, no LLM keys); it takes no
training slot (the worker runs at most ``IDEAFORGE_PREFLIGHT_SLOTS`` checks at once). A sandbox that breaks at run
time is a non-retryable ``SandboxUnavailable`` error: the idea workflow then trains the code without a preflight
(training has its own sandbox check) rather than losing the idea.
"""

from __future__ import annotations

import asyncio
import threading

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge.config import Settings
from ideaforge.models import PreflightRequest, PreflightResult
from ideaforge.names import PREFLIGHT
from ideaforge.research_envs.registry import EnvError
from ideaforge.run.preflight import Preflight
from ideaforge.run.runner import ExperimentRunner, RunCancelled
from ideaforge.run.sandbox import SandboxUnavailable
from ideaforge.store.artifacts import ObjectStore

HEARTBEAT_EVERY_S = 5.0


class PreflightActivities:
    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.preflight_runner = Preflight(ExperimentRunner(settings, store, threads=1))

    @activity.defn(name=PREFLIGHT)
    async def preflight(self, req: PreflightRequest) -> PreflightResult:
        """Compile the changed files, then run the env's declared CPU preflight (see ideaforge.run.preflight)."""
        cancel = threading.Event()
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
