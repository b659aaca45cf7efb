"""Temporal activities of the `cpu` queue: describe env, ideate, implement, package, record, save state."""

from __future__ import annotations

import asyncio
import logging
from functools import cached_property

from temporalio import activity
from temporalio.exceptions import ApplicationError

from ideaforge import names
from ideaforge.activities.heartbeat import heartbeating
from ideaforge.config import Settings
from ideaforge.llm.client import LLMError
from ideaforge.llm.dedup import drop_duplicates
from ideaforge.llm.providers import make_ideator, make_implementer
from ideaforge.models import (
    ArchiveChunk,
    ArtifactRef,
    CampaignInput,
    EnvSpec,
    Idea,
    IdeaDone,
    IdeaOutcome,
    IdeaResults,
    IdeaSummary,
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
    SaveStateResult,
    ended_category,
)
from ideaforge.names import idea_id, state_key
from ideaforge.patch.package import pack_patched
from ideaforge.research_envs.registry import ResearchEnv, load_env
from ideaforge.store.artifacts import ObjectStore, StorageError

log = logging.getLogger(__name__)

LLM_ATTEMPTS = 3  # activity attempts for a provider failure that may pass (429, 5xx, timeouts)


def _give_up_on_llm(e: LLMError) -> str:
    """Re-raise a passing provider failure so Temporal retries it; else return its message as a result."""
    if e.retryable and activity.info().attempt < LLM_ATTEMPTS:
        raise ApplicationError(f"LLM provider failed (attempt {activity.info().attempt}): {e}") from e
    return f"LLM provider failed: {e}"


def load_archive(store: ObjectStore, head: ArtifactRef | None) -> list[IdeaSummary]:
    """Every idea in the archive chunks ending at ``head``, oldest first; each chunk is verified by sha256."""
    chunks: list[list[IdeaSummary]] = []
    seen: set[str] = set()
    while head is not None:
        if head.sha256 in seen:
            raise StorageError(f"archive chunks form a cycle at {head.uri}")
        seen.add(head.sha256)
        chunk = ArchiveChunk.model_validate_json(store.get_bytes(head))
        chunks.append(chunk.ideas)
        head = chunk.prev
    return [s for c in reversed(chunks) for s in c]


def load_saved_state(store: ObjectStore, campaign: str) -> CampaignInput | None:
    """The last saved state, with ``state.archive`` filled with every executed idea (from the store)."""
    raw = store.get_named(state_key(campaign))
    if not raw:
        return None
    saved = CampaignInput.model_validate_json(raw)
    flushed = load_archive(store, saved.state.archive_head)
    ids = {s.idea_id for s in flushed}
    # the population's entries are the latest word on an idea (confirmation seeds are added there)
    latest = {p.idea_id: p for p in saved.state.population}
    every = [*flushed, *(s for s in saved.state.recent if s.idea_id not in ids)]
    saved.state.archive = [latest.get(s.idea_id, s) for s in every]
    return saved


def _as_summary(idea: Idea) -> IdeaSummary:
    """An idea in flight, as an archive entry for deduplication (not executed yet)."""
    return IdeaSummary.of(idea, "failed")


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

    @activity.defn(name=names.TRAIN_SLOTS)
    async def train_slots(self) -> int:
        """Training slots of this worker's settings: what a campaign keeps busy unless its config says."""
        return self.settings.train_slots

    @activity.defn(name=names.IDEA_RESULTS)
    async def idea_results(self, ids: list[str]) -> IdeaResults:
        """Outcomes of the given idea workflows that are closed (a re-attaching campaign asks for these)."""
        from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
        from temporalio.service import RPCError

        client = activity.client()
        out = IdeaResults()
        for wid in ids:
            handle = client.get_workflow_handle(wid, result_type=IdeaOutcome)
            try:
                desc = await handle.describe()
            except RPCError as e:
                log.warning("idea %s cannot be described (%s): left in flight", wid, e)
                continue
            if desc.status == WorkflowExecutionStatus.RUNNING:
                continue
            try:
                o = await handle.result(follow_runs=False)
                out.done.append(
                    IdeaDone(
                        summary=o.summary,
                        revisions=o.revisions,
                        usage=o.usage,
                        mlflow_run_id=o.mlflow_run_id,
                        error=(o.error or "")[:2000] or None,
                    )
                )
            except WorkflowFailureError as e:
                how = desc.status.name.lower() if desc.status else "failed"
                out.ended[wid] = f"idea workflow ended ({how}) without a result: {e}"[:2000]
                out.categories[wid] = ended_category(how)
        return out

    @activity.defn(name=names.IDEATE)
    async def ideate(self, req: IdeateRequest) -> IdeateResult:
        """Human ideas first (verbatim), then the ideator's, deduplicated before any training time is spent.

        The request carries a bounded context; the full archive is read here from the store (``archive_ref``),
        with the ideas in flight, so nothing already tried or running is proposed again."""
        env = self.env(req.env)
        full = await asyncio.to_thread(load_archive, self.store, req.archive_ref)
        ids = {s.idea_id for s in full}
        full += [s for s in req.archive if s.idea_id not in ids]
        full += [_as_summary(i) for i in req.in_flight]
        req = req.model_copy(update={"archive": full})
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
                async with heartbeating():
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
            async with heartbeating():
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
    async def save_state(self, req: SaveStateRequest) -> SaveStateResult:
        """Flush ``recent`` as a chunk (content-addressed, so a retry gives the same ref), save the state."""
        return await asyncio.to_thread(self._save_state, req)

    def _save_state(self, req: SaveStateRequest) -> SaveStateResult:
        saved = CampaignInput.model_validate_json(req.state_json)
        st = saved.state
        if req.flush and st.recent:
            chunk = ArchiveChunk(prev=st.archive_head, ideas=st.recent)
            st.archive_head = self.store.put_text(chunk.model_dump_json(), kind="archive")
            st.recent = []
        st.archive = []
        self.store.put_named(state_key(req.campaign), saved.model_dump_json().encode())
        return SaveStateResult(head=st.archive_head)

    def all(self) -> list:
        return [
            self.describe_env,
            self.ideate,
            self.implement,
            self.package,
            self.record_epoch,
            self.record_idea,
            self.save_state,
            self.train_slots,
            self.idea_results,
        ]

