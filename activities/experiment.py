"""The ``run_experiment`` Temporal activity: devices, heartbeats, cancellation and shutdown around the runner.

Idea failures are results (``RunResult`` with status ``failed``). Raised errors are for Temporal:
a bad request (unknown env/profile, impossible device count, an env without its protected.lock) is
non-retryable; storage problems, a failing prepare_command and worker shutdown are retryable, and a retry resumes
from the last heartbeated checkpoint. A worker whose sandbox breaks at run time fails the attempt with a
retryable ``SandboxUnavailable`` error naming cause and fix (it never trains unsandboxed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge.config import Settings
from ideaforge.models import DeviceTime, Progress, RunRequest, RunResult
from ideaforge.names import RUN_EXPERIMENT
from ideaforge.research_envs.registry import EnvError
from ideaforge.run.devices import DeviceClock, DevicePool
from ideaforge.run.runner import ExperimentRunner, RunCancelled
from ideaforge.run.sandbox import SandboxUnavailable
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0


def resume_point(details: Sequence[Any]) -> Progress | None:
    """The last heartbeat of a previous attempt (a plain dict after the round trip), or None."""
    if not details:
        return None
    last = details[-1]
    try:
        return last if isinstance(last, Progress) else Progress.model_validate(last)
    except ValidationError as e:
        log.warning("ignoring unreadable heartbeat details from a previous attempt: %s", e)
        return None


class ExperimentActivities:
    """Holds the runner and the worker's device pool; ``run_experiment`` is the activity."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        devices: DevicePool,
        runner: ExperimentRunner | None = None,
        heartbeat_every_s: float = HEARTBEAT_EVERY_S,
    ) -> None:
        self.settings = settings
        self.store = store
        self.devices = devices
        self.runner = runner or ExperimentRunner(settings, store)
        self.heartbeat_every_s = heartbeat_every_s

    @activity.defn(name=RUN_EXPERIMENT)
    async def run_experiment(self, req: RunRequest) -> RunResult:
        """Train and evaluate ``req.code`` on this worker; see the module docstring for what raises.

        Every heartbeat carries the device time of all attempts so far (``Progress.device_time``); the result
        carries the total, and so does an error raised to Temporal (its details), so no attempt is lost."""
        info = activity.info()
        resume = resume_point(info.heartbeat_details)
        if resume is not None:
            log.info("%s attempt %d resumes from %s", req.idea_id, info.attempt, resume)
        latest = [resume or Progress()]
        clock: DeviceClock | None = None

        def stamped(p: Progress) -> Progress:
            return p.model_copy(update={"device_time": clock.so_far()}) if clock else p

        def beat(p: Progress) -> None:
            latest[0] = stamped(p)
            activity.heartbeat(latest[0])

        def last_beat() -> DeviceTime:
            """Heartbeat the latest progress with the device time up to now; that device time."""
            latest[0] = stamped(latest[0])
            activity.heartbeat(latest[0])
            return latest[0].device_time

        hb_timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else None
        every = min(self.heartbeat_every_s, hb_timeout / 3) if hb_timeout else self.heartbeat_every_s

        async def keep_beating() -> None:  # cancellation reaches an activity only through heartbeats
            while True:
                last_beat()
                await asyncio.sleep(every)

        stop = threading.Event()
        shutting_down = threading.Event()

        async def watch_shutdown() -> None:
            await activity.wait_for_worker_shutdown()
            log.warning(
                "%s: worker shutting down; stopping training (last checkpoint: step %s)",
                req.idea_id,
                latest[0].checkpoint_step,
            )
            shutting_down.set()
            stop.set()

        tasks = [asyncio.create_task(keep_beating()), asyncio.create_task(watch_shutdown())]
        ids: list[int] | None = None
        try:
            try:
                resolved = self.runner.resolve(req)
                before = resume.device_time if resume is not None else DeviceTime()
                clock = DeviceClock(before, resolved.resources.device)
                ids = await self.devices.acquire(resolved.resources.count)
                clock.start(len(ids))
                started = time.time()
                result = await self.runner.run(
                    req, resolved=resolved, heartbeat=beat, resume=resume, cancel_event=stop, device_ids=ids
                )
                clock.stop()
                queued = max(0.0, started - info.current_attempt_scheduled_time.timestamp())
                return result.model_copy(
                    update={
                        "started_at": started,
                        "finished_at": time.time(),
                        "queued_s": queued,
                        "devices": len(ids),
                        "device_time": clock.so_far(),
                    }
                )
            except SandboxUnavailable as e:  # an infrastructure fault of this worker: retried, never run unsandboxed
                raise ApplicationError(str(e), last_beat(), type="SandboxUnavailable") from e
            except (EnvError, ValueError, ValidationError) as e:
                raise ApplicationError(str(e), last_beat(), type=type(e).__name__, non_retryable=True) from e
            except RunCancelled as e:
                spent = last_beat()  # the retry resumes from this checkpoint, with this device time
                if shutting_down.is_set():
                    raise ApplicationError(
                        f"worker shut down during {req.idea_id}; retry resumes from step {latest[0].checkpoint_step}",
                        spent,
                        type="WorkerShutdown",
                    ) from e
                raise asyncio.CancelledError() from e
            except ApplicationError:
                last_beat()
                raise
            except Exception as e:
                # infrastructure error: Temporal retries from the last checkpoint; the same error type (retry
                # policies match it), with the device time as details for a workflow whose retries run out
                raise ApplicationError(str(e) or type(e).__name__, last_beat(), type=type(e).__name__) from e
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if ids is not None:
                await self.devices.release(ids)
