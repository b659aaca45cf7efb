"""Temporal activities of an RL campaign: thin adapters over :mod:`ideaforge.rl.online`.

- ``rl_sample`` (cpu queue): a group of replies from the served ideator;
- ``rl_resume`` (cpu queue): the run's last completed step in the store (a campaign started again resumes);
- ``rl_update`` (rl queue): one GRPO update, run in a thread while the activity heartbeats, so a dead trainer
  is noticed within the campaign's ``trainer_heartbeat_s`` and its step retried from the last checkpoint;
- ``rl_load_adapter`` (rl queue): unpack the step's adapter where the server reads it and have it loaded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge import names
from ideaforge.config import Settings
from ideaforge.llm.errors import LLMError
from ideaforge.models import (
    MAX_RL_HISTORY,
    RLLoadAdapterRequest,
    RLResumePoint,
    RLSampleRequest,
    RLSamples,
    RLStepRequest,
    RLStepResult,
)
from ideaforge.research_envs.registry import ResearchEnv, load_env
from ideaforge.rl import online
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0


class RLActivities:
    """Side effects of RLCampaignWorkflow. One instance per worker process."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    def env(self, name: str) -> ResearchEnv:
        return load_env(name, self.settings.env_paths)

    @property
    def rl_home(self) -> Path:
        return self.settings.home / "rl"

    @activity.defn(name=names.RL_SAMPLE)
    async def rl_sample(self, req: RLSampleRequest) -> RLSamples:
        try:
            return await online.sample_group(req, self.env(req.env))
        except LLMError as e:  # the server is down or refused: retried by the policy, then the campaign fails
            raise ApplicationError(f"sampling from the served ideator failed: {e}") from e

    @activity.defn(name=names.RL_RESUME)
    async def rl_resume(self, run_name: str) -> RLResumePoint:
        try:
            return await asyncio.to_thread(online.resume_point, self.store, run_name, MAX_RL_HISTORY)
        except online.RLStateError as e:
            raise ApplicationError(str(e), type="RLStateError", non_retryable=True) from e

    @activity.defn(name=names.RL_UPDATE)
    async def rl_update(self, req: RLStepRequest) -> RLStepResult:
        work = self.rl_home / "work" / req.rl.run_name
        task = asyncio.create_task(
            asyncio.to_thread(online.train_step, req, work, self.store, self.settings.mlflow_uri)
        )
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                break
            activity.heartbeat(f"step {req.step}")
        try:
            return task.result()
        except (online.RLStateError, ValueError, FileNotFoundError) as e:  # a retry cannot fix these
            raise ApplicationError(str(e), type=type(e).__name__, non_retryable=True) from e

    @activity.defn(name=names.RL_LOAD_ADAPTER)
    async def rl_load_adapter(self, req: RLLoadAdapterRequest) -> str:
        root = Path(req.adapter_root) if req.adapter_root else self.rl_home / "adapters"
        path = await asyncio.to_thread(
            online.unpack_adapter, self.store, req.adapter, root / req.adapter_name
        )
        return await asyncio.to_thread(online.load_adapter, req.server_url, req.adapter_name, path.resolve())

    def sampling(self) -> list:
        """The activities of the cpu queue."""
        return [self.rl_sample, self.rl_resume]

    def training(self) -> list:
        """The activities of the rl queue (the trainer's machine, sharing ``adapter_root`` with the server)."""
        return [self.rl_update, self.rl_load_adapter]
