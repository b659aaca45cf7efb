"""CampaignWorkflow: the epoch loop of one research campaign (id ``campaign-<name>``).

Each run of the workflow executes ONE epoch — ideate, one child IdeaWorkflow per idea, select — then saves the
campaign state and continues-as-new, so history stays small however long the campaign runs and ``resume``
can restart a failed or terminated campaign from its last completed epoch.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy

with workflow.unsafe.imports_passed_through():
    from ideaforge.workflows.idea import CPU_RETRY, RECORD_RETRY, IdeaWorkflow
    from ideaforge.workflows.selection import confirm_candidates, exploit_share, select_parents

    from ideaforge import names
    from ideaforge.models import (
        CampaignConfig,
        CampaignInput,
        CampaignResult,
        CampaignState,
        CampaignStatus,
        EnvSpec,
        Idea,
        IdeaInput,
        IdeaOutcome,
        IdeaSummary,
        IdeateRequest,
        IdeateResult,
        RecordEpochRequest,
        RecordResult,
        SaveStateRequest,
    )
    from ideaforge.names import BEST_METRIC, ENV, EPOCH, experiment_name, idea_id
    from ideaforge.ranking import best_idea, score
    from ideaforge.rewards import compute_reward

@workflow.defn(name="CampaignWorkflow")
class CampaignWorkflow:
    @workflow.init
    def __init__(self, inp: CampaignInput) -> None:
        # state is set here, not in run(): signals delivered with the first task must land on the real state
        self._config: CampaignConfig | None = inp.config
        self._state: CampaignState = inp.state
        self._spec: EnvSpec | None = None
        self._phase = "starting"
        self._running: dict[str, str] = {}

    # ------------------------------------------------------------------ signals and queries

    @workflow.signal
    def pause(self) -> None:
        """Finish the ideas in flight, start no new ones until ``resume``."""
        self._state.paused = True

    @workflow.signal
    def resume(self) -> None:
        self._state.paused = False

    @workflow.signal
    def inject_idea(self, text: str) -> None:
        """A human idea: it is executed in the next epoch, ahead of the ideator's."""
        text = text.strip()
        if text:
            self._state.pending_human_ideas.append(text[:4000])

    @workflow.query
    def status(self) -> CampaignStatus:
        cfg = self._config
        archive = self._state.archive
        direction = self._spec.direction if self._spec else None
        best = best_idea(archive, direction) if direction else None
        return CampaignStatus(
            name=cfg.name if cfg else "",
            env=cfg.env if cfg else "",
            phase=self._phase,
            epoch=self._state.next_epoch,
            epochs=cfg.epochs if cfg else 0,
            paused=self._state.paused,
            ideas_done=len(archive),
            ideas_ok=sum(s.status == "ok" for s in archive),
            ideas_failed=sum(s.status != "ok" for s in archive),
            ideas_running=len(self._running),
            best_metric=score(best) if best else None,
            best_idea=best.idea_id if best else None,
            baseline_metric=self._state.baseline_metric,
            direction=direction,
            usage=self._state.usage,
            epoch_bests=self._state.epoch_bests,
        )

    @workflow.query
    def archive(self) -> list[IdeaSummary]:
        return self._state.archive

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignResult:
        cfg = inp.config
        self._spec = spec = await workflow.execute_activity(
            names.DESCRIBE_ENV,
            cfg.env,
            result_type=EnvSpec,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=CPU_RETRY,
        )
        workflow.upsert_search_attributes([ENV.value_set(spec.name), EPOCH.value_set(self._state.next_epoch)])
        epoch = self._state.next_epoch
        if epoch < cfg.epochs and not self._state.budget_exhausted:
            await self._wait_unpaused()
            await self._run_epoch(cfg, spec, epoch)
            self._state.next_epoch = epoch + 1
            await self._save_state(cfg)
            if self._state.next_epoch < cfg.epochs and not self._state.budget_exhausted:
                self._phase = "continuing"
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(CampaignInput(config=cfg, state=self._state))
        if cfg.confirm_top_k and not any(s.origin == "confirm" for s in self._state.archive):
            await self._confirm(cfg, spec)
            await self._save_state(cfg)
        self._phase = "completed"
        best = best_idea(self._state.archive, spec.direction)
        return CampaignResult(
            name=cfg.name,
            epochs_completed=self._state.next_epoch,
            best=best,
            baseline_metric=self._state.baseline_metric,
            archive=self._state.archive,
            usage=self._state.usage,
            stopped_reason="budget_exhausted" if self._state.budget_exhausted else "completed",
        )

    async def _wait_unpaused(self) -> None:
        if self._state.paused:
            self._phase = "paused"
            await workflow.wait_condition(lambda: not self._state.paused)

    async def _run_epoch(self, cfg: CampaignConfig, spec: EnvSpec, epoch: int) -> None:
        self._phase = f"epoch {epoch}: ideating"
        epoch_run = await self._record_epoch(cfg, spec, epoch, summary=None)
        ideas = await self._ideate(cfg, spec, epoch)
        self._phase = f"epoch {epoch}: running {len(ideas)} ideas"
        outcomes = await asyncio.gather(
            *(self._run_idea(cfg, spec, idea, epoch_run.run_id) for idea in ideas)
        )
        self._absorb(spec, outcomes)
        ok = [o.summary for o in outcomes if o.summary.status == "ok" and o.summary.metric is not None]
        best_now = best_idea(ok, spec.direction)
        self._state.epoch_bests.append(best_now.metric if best_now else None)
        overall = best_idea(self._state.archive, spec.direction)
        attrs = [EPOCH.value_set(epoch)]
        if overall is not None and overall.metric is not None:
            attrs.append(BEST_METRIC.value_set(float(overall.metric)))
        workflow.upsert_search_attributes(attrs)
        summary = {
            "ideas": float(len(outcomes)),
            "ideas_ok": float(len(ok)),
            "execution_rate": len(ok) / len(outcomes) if outcomes else 0.0,
        }
        if best_now is not None and best_now.metric is not None:
            summary["epoch_best_metric"] = best_now.metric
        if overall is not None and overall.metric is not None:
            summary["best_metric"] = overall.metric
        await self._record_epoch(cfg, spec, epoch, summary=summary, run_id=epoch_run.run_id)

    async def _ideate(self, cfg: CampaignConfig, spec: EnvSpec, epoch: int) -> list[Idea]:
        ideas: list[Idea] = []
        have_baseline = any(s.origin == "baseline" for s in self._state.archive)
        if cfg.run_baseline and not have_baseline:
            ideas.append(
                Idea(
                    idea_id=idea_id(cfg.name, epoch, 0),
                    epoch=epoch,
                    index=0,
                    title="baseline",
                    text="The unmodified baseline codebase.",
                    origin="baseline",
                    seed=cfg.seed,
                )
            )
        human, self._state.pending_human_ideas = self._state.pending_human_ideas, []
        if self._budget_left(cfg) is False:
            self._state.budget_exhausted = True
            return ideas
        parents = select_parents(self._state.archive, spec.direction, cfg.search.parents)
        req = IdeateRequest(
            campaign=cfg.name,
            env=cfg.env,
            epoch=epoch,
            n=cfg.ideas_per_epoch,
            seed=cfg.seed,
            provider=cfg.ideator,
            strategy=cfg.search.strategy,
            exploit_share=exploit_share(epoch, cfg.epochs, cfg.search.exploit_start, cfg.search.exploit_end),
            parents=parents if cfg.search.strategy == "evolution" else [],
            archive=self._state.archive,
            baseline_metric=self._state.baseline_metric,
            human_ideas=human,
        )
        # ideas are numbered after the baseline slot
        offset = len(ideas)
        res = await workflow.execute_activity(
            names.IDEATE,
            req,
            result_type=IdeateResult,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(minutes=5),
            retry_policy=CPU_RETRY,
        )
        self._state.usage = self._state.usage + res.usage
        for i, idea in enumerate(res.ideas):
            index = offset + i
            ideas.append(idea.model_copy(update={"index": index, "idea_id": idea_id(cfg.name, epoch, index)}))
        return ideas

    def _budget_left(self, cfg: CampaignConfig) -> bool | None:
        if cfg.budget_usd is None:
            return None
        return self._state.usage.cost_usd < cfg.budget_usd

    async def _run_idea(
        self,
        cfg: CampaignConfig,
        spec: EnvSpec,
        idea: Idea,
        epoch_run_id: str | None,
        reuse: IdeaSummary | None = None,
    ) -> IdeaOutcome:
        await self._wait_unpaused()
        parent = next(
            (s for s in self._state.archive if idea.parent_ids and s.idea_id == idea.parent_ids[0]), None
        )
        self._running[idea.idea_id] = idea.title
        try:
            return await workflow.execute_child_workflow(
                IdeaWorkflow.run,
                IdeaInput(
                    campaign=cfg.name,
                    spec=spec,
                    idea=idea,
                    profile=cfg.profile,
                    implementer=cfg.implementer_provider,
                    max_revisions=cfg.max_revisions,
                    parallel_samples=cfg.parallel_samples,
                    parent_diff=parent.diff if parent else None,
                    reuse_code=reuse.code if reuse else None,
                    reuse_diff=reuse.diff if reuse else None,
                    epoch_run_id=epoch_run_id,
                    experiment=experiment_name(cfg.name),
                    baseline_metric=self._state.baseline_metric,
                ),
                id=idea.idea_id,
                task_queue=names.ORCHESTRATOR_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
        finally:
            self._running.pop(idea.idea_id, None)

    def _absorb(self, spec: EnvSpec, outcomes: list[IdeaOutcome]) -> None:
        """Add outcomes to the archive; fix the baseline metric and (re)compute rewards against it."""
        for o in outcomes:
            self._state.usage = self._state.usage + o.usage
            if o.summary.origin == "baseline" and o.summary.status == "ok":
                self._state.baseline_metric = o.summary.metric
            self._state.archive.append(o.summary)
        for s in self._state.archive:
            if s.reward is None and (s.status != "ok" or self._state.baseline_metric is not None):
                s.reward = compute_reward(
                    s.metric if s.status == "ok" else None, self._state.baseline_metric, spec
                )

    async def _confirm(self, cfg: CampaignConfig, spec: EnvSpec) -> None:
        """Re-run the top candidates (and the baseline) on fresh seeds; their mean decides the winner."""
        self._phase = "confirming"
        candidates = confirm_candidates(self._state.archive, spec.direction, cfg.confirm_top_k)
        epoch = self._state.next_epoch
        jobs = []
        index = 0
        for cand in candidates:
            for k in range(cfg.confirm_seeds):
                seed = cfg.seed + 1000 * (k + 1)
                idea = Idea(
                    idea_id=idea_id(cfg.name, epoch, index),
                    epoch=epoch,
                    index=index,
                    title=f"confirm {cand.title[:80]} (seed {seed})",
                    text=f"Re-run of {cand.idea_id} on fresh seed {seed}.",
                    origin="confirm",
                    parent_ids=[cand.idea_id],
                    recipe=cand.recipe,
                    seed=seed,
                    code_from=cand.idea_id,
                )
                index += 1
                jobs.append((cand, self._run_idea(cfg, spec, idea, None, reuse=cand)))
        outcomes = await asyncio.gather(*(j for _, j in jobs))
        for (cand, _), o in zip(jobs, outcomes, strict=True):
            self._state.archive.append(o.summary)
            if o.summary.status == "ok" and o.summary.metric is not None:
                cand.confirmed_metrics.append(o.summary.metric)

    async def _record_epoch(
        self,
        cfg: CampaignConfig,
        spec: EnvSpec,
        epoch: int,
        summary: dict[str, float] | None,
        run_id: str | None = None,
    ) -> RecordResult:
        return await workflow.execute_activity(
            names.RECORD_EPOCH,
            RecordEpochRequest(
                experiment=experiment_name(cfg.name),
                campaign=cfg.name,
                env=spec.name,
                epoch=epoch,
                workflow_id=workflow.info().workflow_id,
                config=cfg.model_dump(mode="json"),
                summary=summary,
                run_id=run_id,
            ),
            result_type=RecordResult,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RECORD_RETRY,
        )

    async def _save_state(self, cfg: CampaignConfig) -> None:
        await workflow.execute_activity(
            names.SAVE_STATE,
            SaveStateRequest(
                campaign=cfg.name, state_json=CampaignInput(config=cfg, state=self._state).model_dump_json()
            ),
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RECORD_RETRY,
        )


__all__ = ["CampaignWorkflow", "IdeaWorkflow"]
