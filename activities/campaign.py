"""Temporal activities of the `cpu` queue: describe env, ideate, implement, package, record, save state."""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property

from ideaforge.research_envs.registry import ResearchEnv, load_env
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge import names
from ideaforge.config import Settings
from ideaforge.llm.client import LLMError
from ideaforge.llm.dedup import drop_duplicates
from ideaforge.llm.providers import make_ideator, make_implementer
from ideaforge.models import (
    CampaignInput,
    EnvSpec,
    Idea,
    IdeateRequest,
    IdeateResult,
    Implementation,
    ImplementRequest,
    Package,
    PackageRequest,
    RecordEpochRequest,
    RecordIdeaRequest,
    RecordResult,
    SaveStateRequest,
)
from ideaforge.names import idea_id, state_key
from ideaforge.patch.package import pack_patched
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

LLM_ATTEMPTS = 3  # activity attempts for a provider failure that may pass (429, 5xx, timeouts)


def _give_up_on_llm(e: LLMError) -> str:
    """Re-raise a passing provider failure so Temporal retries it; else return its message as a result."""
    if e.retryable and activity.info().attempt < LLM_ATTEMPTS:
        raise ApplicationError(f"LLM provider failed (attempt {activity.info().attempt}): {e}") from e
    return f"LLM provider failed: {e}"


def load_saved_state(store: ObjectStore, campaign: str) -> CampaignInput | None:
    raw = store.get_named(state_key(campaign))
    return CampaignInput.model_validate_json(raw) if raw else None


class CampaignActivities:
    """Side effects used by the workflows. One instance per worker process."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store

    def env(self, name: str) -> ResearchEnv:
        return load_env(name, self.settings.env_paths)

    @cached_property
    def tracker(self):  # noqa: ANN201 - imported lazily: mlflow is slow to import
        from ideaforge.track.tracker import Tracker

        return Tracker(self.settings.mlflow_uri, self.store)

    @activity.defn(name=names.DESCRIBE_ENV)
    async def describe_env(self, name: str) -> EnvSpec:
        return self.env(name).spec

    @activity.defn(name=names.IDEATE)
    async def ideate(self, req: IdeateRequest) -> IdeateResult:
        """Human ideas first (verbatim), then the ideator's, deduplicated before any training time is spent."""
        env = self.env(req.env)
        human = [
            Idea(
                idea_id=idea_id(req.campaign, req.epoch, i),
                epoch=req.epoch,
                index=i,
                title=text.splitlines()[0][:120],
                text=text,
                origin="human",
                seed=req.seed,
            )
            for i, text in enumerate(req.human_ideas)
        ]
        n_model = max(0, req.n - len(human))
        res = IdeateResult(ideas=[])
        if n_model:
            ideator = make_ideator(req.provider, store=self.store)
            try:
                res = await ideator.propose(req.model_copy(update={"n": n_model}), env)
            except LLMError as e:  # provider failures become a recorded error, not a dead campaign
                res = IdeateResult(ideas=[], errors=[_give_up_on_llm(e)])
        kept, rejected = drop_duplicates(res.ideas, req.archive)
        activity.logger.info(
            "epoch %d: %d ideas (%d human), %d duplicates dropped",
            req.epoch,
            len(kept) + len(human),
            len(human),
            rejected,
        )
        return res.model_copy(
            update={"ideas": human + kept, "rejected_duplicates": res.rejected_duplicates + rejected}
        )

    @activity.defn(name=names.IMPLEMENT)
    async def implement(self, req: ImplementRequest) -> Implementation:
        env = self.env(req.env)
        implementer = make_implementer(req.provider, store=self.store)
        try:
            return await implementer.implement(req, env, self.store)
        except LLMError as e:
            return Implementation(applies=False, category="llm_failed", error=_give_up_on_llm(e))

    @activity.defn(name=names.PACKAGE)
    async def package(self, req: PackageRequest) -> Package:
        env = self.env(req.env)
        diff = self.store.get_text(req.diff) if req.diff else None
        data = await asyncio.to_thread(pack_patched, env.baseline, diff)
        ref = await asyncio.to_thread(self.store.put_bytes, data, "code")
        return Package(code=ref)

    @activity.defn(name=names.RECORD_EPOCH)
    async def record_epoch(self, req: RecordEpochRequest) -> RecordResult:
        return await asyncio.to_thread(self.tracker.record_epoch, req)

    @activity.defn(name=names.RECORD_IDEA)
    async def record_idea(self, req: RecordIdeaRequest) -> RecordResult:
        return await asyncio.to_thread(self.tracker.record_idea, req)

    @activity.defn(name=names.SAVE_STATE)
    async def save_state(self, req: SaveStateRequest) -> None:
        await asyncio.to_thread(self.store.put_named, state_key(req.campaign), req.state_json.encode())
        await self._sync_rewards(req)

    async def _sync_rewards(self, req: SaveStateRequest) -> None:
        """Rewards known only now (ideas that finished before the baseline) reach their MLflow runs; an MLflow
        outage does not hold the saved state back (the next save tries again)."""
        from ideaforge.track.tracker import TrackingError, TrackingUnavailable

        archive = CampaignInput.model_validate_json(req.state_json).state.archive
        try:
            await asyncio.to_thread(self.tracker.sync_rewards, req.campaign, archive)
        except (TrackingError, TrackingUnavailable) as e:
            log.warning("rewards of %s not synced to MLflow yet: %s", req.campaign, e)

    def all(self) -> list:
        return [
            self.describe_env,
            self.ideate,
            self.implement,
            self.package,
            self.record_epoch,
            self.record_idea,
            self.save_state,
        ]
