"""CampaignWorkflow: one research campaign (id ``campaign-<name>``), scheduled to keep training slots busy.

Scheduling (``config.schedule``):
- ``steady`` (default): ideas are planned in small batches whenever fewer than ``slots + ahead`` ideas are in
  flight, so every training slot is busy and at least one proposal is implemented and waiting for a slot.
- ``sync``: the paper's generations: epoch e+1 is planned only when every idea of epoch e has finished.

An epoch is ``ideas_per_epoch`` ideas (plus the baseline in epoch 0): it drives the exploit schedule, the MLflow
epoch run and the reports, and closes when all its ideas have finished. Idea children are started with
ParentClosePolicy.ABANDON and report completion with the ``idea_done`` signal, so a continue-as-new (after
each epoch, or when the history grows long) never kills an idea in flight: the next run carries their ids
and re-attaches. Workflow state stays bounded whatever the campaign size: completed ideas go to the artifact
store in chunks (``save_state``), the state keeps counters, the baseline, a bounded population of parent
candidates and the ideas in flight.

An idea that ends without signalling (terminated by hand, say) is counted failed with how it ended as its
category: a child started by this run is awaited on its handle; one re-attached from an earlier run is checked
on the server every ``check_in_flight_s``. Cancelling the campaign cancels every idea in flight.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import (
    CancelledError,
    ChildWorkflowError,
    TerminatedError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.exceptions import (
    TimeoutError as ChildTimeoutError,
)
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from ideaforge import names
    from ideaforge.models import (
        CampaignConfig,
        CampaignInput,
        CampaignResult,
        CampaignState,
        CampaignStatus,
        EnvSpec,
        EpochTally,
        FailureCategory,
        Idea,
        IdeaDone,
        IdeaInput,
        IdeaResults,
        IdeaSummary,
        IdeateRequest,
        IdeateResult,
        ParentStats,
        RecordEpochRequest,
        RecordResult,
        SaveStateRequest,
        SaveStateResult,
        ended_category,
    )
    from ideaforge.names import BEST_METRIC, ENV, EPOCH, experiment_name, idea_id
    from ideaforge.ranking import best_idea, score
    from ideaforge.workflows.idea import BUDGET_STOP, CPU_RETRY, RECORD_RETRY, IdeaWorkflow
    from ideaforge.workflows.selection import (
        CHILD_HISTORY,
        confirm_candidates,
        delta,
        exploit_share,
        plan_ideas,
        update_population,
    )

CHUNK = 32  # completed ideas per archive chunk in the store
MAX_NOTES = 10
HISTORY_LIMIT = 8_000  # events per run before a continue-as-new (Temporal warns at 10k, fails at 50k)
N_INSPIRATIONS = 3
# workflow.patched ids: commands added since histories were recorded (old histories replay the old way)
PATCH_CANCEL_IDEAS = "campaign-cancels-ideas-on-any-cancel"  # also when the cancel hits an activity; all at once
PATCH_CHECK_REATTACHED = "campaign-checks-reattached-ideas"  # ask the server about ideas it holds no handle on
PATCH_GPU_PROJECTED = "gpu-budget-counts-ideas-in-flight"  # stop planning when in-flight ideas will use the rest


@workflow.defn(name="CampaignWorkflow")
class CampaignWorkflow:
    @workflow.init
    def __init__(self, inp: CampaignInput) -> None:
        # state is set here, not in run(): signals delivered with the first task must land on the real state
        self._config: CampaignConfig = inp.config
        self._state: CampaignState = inp.state
        self._spec: EnvSpec | None = None
        self._phase = "starting"
        self._watches: list[asyncio.Task] = []
        self._watched: set[str] = set()  # ideas this run started (their handles report how they end)
        self._starting: list[asyncio.Task] = []  # child starts in progress

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
        """A human idea: it is planned next, ahead of the ideator's."""
        text = text.strip()
        if text:
            self._state.pending_human_ideas.append(text[:4000])

    @workflow.signal
    def idea_done(self, done: IdeaDone) -> None:
        """An idea of this campaign finished (sent by the IdeaWorkflow itself, to whichever run is current)."""
        self._absorb(done)

    @workflow.query
    def status(self) -> CampaignStatus:
        cfg, st = self._config, self._state
        direction = self._spec.direction if self._spec else None
        best = best_idea(st.population, direction) if direction else None
        return CampaignStatus(
            name=cfg.name,
            env=cfg.env,
            phase=self._phase,
            epoch=st.next_epoch,
            epochs=cfg.epochs,
            paused=st.paused,
            ideas_done=st.ideas_done,
            ideas_ok=st.ideas_ok,
            ideas_failed=st.ideas_done - st.ideas_ok,
            ideas_running=len(st.in_flight),
            best_metric=score(best) if best else None,
            best_idea=best.idea_id if best else None,
            baseline_metric=st.baseline_metric,
            direction=direction,
            usage=st.usage,
            epoch_bests=st.epoch_bests,
            schedule=cfg.schedule,
            slots=st.slots or 0,
            ideas_planned=st.n_planned,
            in_flight=sorted(st.in_flight),
            notes=st.notes,
            device_time=st.device_time,
            budget_gpu_hours=cfg.budget_gpu_hours,
            budget_usd=cfg.budget_usd,
            stopped_reason=st.stopped_reason,
        )

    @workflow.query
    def archive(self) -> list[IdeaSummary]:
        """A bounded view: the population of parent candidates and the ideas completed since the last flush.

        Every executed idea is in the store (``load_archive`` on the saved state's ``archive_head``)."""
        seen = {s.idea_id for s in self._state.recent}
        return [*self._state.recent, *(s for s in self._state.population if s.idea_id not in seen)]

    # ------------------------------------------------------------------ main loop

    @workflow.run
    async def run(self, inp: CampaignInput) -> CampaignResult:
        cfg, st = self._config, self._state
        self._spec = spec = await workflow.execute_activity(
            names.DESCRIBE_ENV,
            cfg.env,
            result_type=EnvSpec,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=CPU_RETRY,
        )
        if st.slots is None:
            st.slots = cfg.slots or await workflow.execute_activity(
                names.TRAIN_SLOTS,
                result_type=int,
                task_queue=names.CPU_QUEUE,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=CPU_RETRY,
            )
        self._upsert(EPOCH.value_set(st.next_epoch))
        try:
            if st.in_flight:
                await self._reattach()
            await self._loop(cfg, spec)
        except BaseException as e:
            # a cancel shows as asyncio.CancelledError, or as an ActivityError when it hit a running activity
            if is_cancelled_exception(e):
                if workflow.patched(PATCH_CANCEL_IDEAS):
                    await self._cancel_in_flight()
                elif isinstance(e, asyncio.CancelledError):
                    await self._cancel_in_flight_one_by_one()  # before the patch: kept for replay
            raise
        self._phase = "completed"
        await self._flush()
        best = best_idea(st.population, spec.direction)
        return CampaignResult(
            name=cfg.name,
            epochs_completed=st.next_epoch,
            best=best,
            baseline_metric=st.baseline_metric,
            archive=self.archive(),
            usage=st.usage,
            stopped_reason=(st.stopped_reason or "budget_exhausted") if st.budget_exhausted else "completed",
            ideas_done=st.ideas_done,
            archive_ref=st.archive_head,
            device_time=st.device_time,
        )

    async def _loop(self, cfg: CampaignConfig, spec: EnvSpec) -> None:
        st = self._state
        while True:
            await self._tell_baseline()
            await self._close_epochs(cfg, spec)
            if len(st.recent) >= CHUNK:
                await self._flush()
            if self._history_long():
                await self._continue_as_new()
            if self._planning_done(cfg) and not st.in_flight and not st.epochs_open:
                if cfg.confirm_top_k and not st.confirm_planned and not st.budget_exhausted:
                    await self._start_confirm(cfg, spec)
                    continue
                return
            if self._want_more(cfg):
                if await self._plan_and_start(cfg, spec):
                    continue
            self._phase = self._idle_phase(cfg)
            await self._wait_for_change(cfg)

    async def _wait_for_change(self, cfg: CampaignConfig) -> None:
        """Wait for ``_changed``; while ideas this run holds no handle on are in flight (re-attached after a
        continue-as-new or a restart), ask the server every ``check_in_flight_s`` how they are: one terminated by
        hand never signals ``idea_done``."""
        unwatched = [wid for wid in self._state.in_flight if wid not in self._watched]
        if not unwatched or not workflow.patched(PATCH_CHECK_REATTACHED):
            await workflow.wait_condition(lambda: self._changed(cfg))
            return
        try:
            await workflow.wait_condition(lambda: self._changed(cfg), timeout=timedelta(seconds=cfg.check_in_flight_s))
        except TimeoutError:  # asyncio's, on 3.11 the builtin
            await self._collect_closed(unwatched)

    def _changed(self, cfg: CampaignConfig) -> bool:
        """Something for the loop to do: an idea finished, an epoch closed, or room for more ideas."""
        st = self._state
        return (
            self._epoch_ready()
            or len(st.recent) >= CHUNK
            or (st.baseline_done and not st.baseline_sent)
            or self._want_more(cfg)
            or (self._planning_done(cfg) and not st.in_flight)
        )

    def _idle_phase(self, cfg: CampaignConfig) -> str:
        st = self._state
        if st.paused:
            return f"paused ({len(st.in_flight)} ideas finishing)"
        if st.confirm_planned:
            return f"confirming ({len(st.in_flight)} runs)"
        return f"epoch {st.next_epoch}: {len(st.in_flight)} ideas in flight"

    # ------------------------------------------------------------------ planning

    def _target(self, cfg: CampaignConfig) -> int:
        slots = self._state.slots or 1
        ahead = cfg.ahead if cfg.ahead is not None else max(1, slots // 4)
        return slots + ahead

    def _planning_done(self, cfg: CampaignConfig) -> bool:
        st = self._state
        return st.budget_exhausted or st.plan_epoch >= cfg.epochs

    def _want_more(self, cfg: CampaignConfig) -> bool:
        st = self._state
        if st.paused or self._planning_done(cfg):
            return False
        if cfg.schedule == "sync":
            return not st.in_flight and not st.epochs_open
        return len(st.in_flight) < self._target(cfg)

    async def _plan_and_start(self, cfg: CampaignConfig, spec: EnvSpec) -> bool:
        """Plan one batch (an epoch in sync mode), start its ideas; False when nothing could be planned."""
        st = self._state
        spent = self._budget_spent(cfg)
        if spent is not None:
            reason, why = spent
            self._stop_planning(reason, f"{why}: no more ideas are planned; ideas in flight finish")
            return False
        tally = await self._open_epoch(cfg, spec)
        size = self._epoch_size(cfg, tally.epoch)
        ideas: list[Idea] = []
        if cfg.run_baseline and not st.baseline_planned:
            ideas.append(self._idea(cfg, tally, "baseline", "The unmodified baseline codebase.", "baseline"))
            st.baseline_planned = True
        if cfg.schedule == "sync":
            n = size - tally.planned
        else:
            room = self._target(cfg) - len(st.in_flight) - len(ideas)
            n = min(room, cfg.ideate_batch, size - tally.planned)
        if n > 0:
            ideas.extend(await self._ideate(cfg, spec, tally, n))
        if cfg.schedule == "sync" or tally.planned >= size or not ideas:
            tally.closed = True
            st.plan_epoch = tally.epoch + 1
        await self._start_ideas([self._start_idea(cfg, spec, idea, tally.run_id) for idea in ideas])
        if ideas:
            await self._save_state()
        return bool(ideas)

    async def _open_epoch(self, cfg: CampaignConfig, spec: EnvSpec) -> EpochTally:
        st = self._state
        for t in st.epochs_open:
            if t.epoch == st.plan_epoch and not t.closed:
                return t
        t = EpochTally(epoch=st.plan_epoch)
        t.run_id = (await self._record_epoch(cfg, spec, t.epoch, summary=None)).run_id
        st.epochs_open.append(t)
        return t

    def _epoch_size(self, cfg: CampaignConfig, epoch: int) -> int:
        """Ideas of an epoch: ``ideas_per_epoch``, plus the baseline in epoch 0."""
        return cfg.ideas_per_epoch + (1 if epoch == 0 and cfg.run_baseline else 0)

    def _idea(self, cfg: CampaignConfig, tally: EpochTally, title: str, text: str, origin: str) -> Idea:
        """A new idea numbered next in its epoch (the tally counts it as planned)."""
        index = tally.planned
        tally.planned += 1
        return Idea(
            idea_id=idea_id(cfg.name, tally.epoch, index),
            epoch=tally.epoch,
            index=index,
            title=title,
            text=text,
            origin=origin,  # type: ignore[arg-type]
            seed=cfg.seed,
        )

    async def _ideate(self, cfg: CampaignConfig, spec: EnvSpec, tally: EpochTally, n: int) -> list[Idea]:
        st = self._state
        human, st.pending_human_ideas = st.pending_human_ideas[:n], st.pending_human_ideas[n:]
        noise = spec.seed_noise or 0.0
        rng = random.Random(f"{cfg.seed}:{st.n_planned}")
        child_counts = dict(st.n_children)
        for idea in st.in_flight.values():
            for pid in idea.parent_ids:
                child_counts[pid] = child_counts.get(pid, 0) + 1
        share = exploit_share(tally.epoch, cfg.epochs, cfg.search.exploit_start, cfg.search.exploit_end)
        plan = plan_ideas(
            n - len(human), st.population, child_counts, st.baseline_metric, noise, spec.direction,
            cfg.search, share, rng,
        )  # fmt: skip
        by_id = {s.idea_id: s for s in st.population}
        parent_ids = list(dict.fromkeys(pid for p in plan for pid in p.parent_ids))
        parents = [by_id[pid] for pid in parent_ids]
        others = [s for s in st.population if s.idea_id not in parent_ids and s.origin != "baseline"]
        req = IdeateRequest(
            campaign=cfg.name,
            env=cfg.env,
            epoch=tally.epoch,
            n=n,
            seed=cfg.seed,
            provider=cfg.ideator,
            strategy=cfg.search.strategy,
            exploit_share=sum(bool(p.parent_ids) for p in plan) / len(plan) if plan else 0.0,
            parents=parents,
            archive=[*st.population, *st.recent],
            baseline_metric=st.baseline_metric,
            human_ideas=human,
            plan=plan,
            n_planned=st.n_planned,
            archive_ref=st.archive_head,
            in_flight=list(st.in_flight.values()),
            parent_stats={
                p.idea_id: ParentStats(
                    delta=delta(p, st.baseline_metric, spec.direction),
                    children=child_counts.get(p.idea_id, 0),
                    child_deltas=st.children.get(p.idea_id, [])[-CHILD_HISTORY:],
                )
                for p in parents
            },
            inspirations=rng.sample(others, min(N_INSPIRATIONS, len(others))),
            noise=spec.seed_noise,
            max_changes=cfg.search.max_changes,
            budget_left_usd=None if cfg.budget_usd is None else max(0.0, cfg.budget_usd - st.usage.cost_usd),
        )
        self._phase = f"epoch {tally.epoch}: ideating {n}"
        res = await workflow.execute_activity(
            names.IDEATE,
            req,
            result_type=IdeateResult,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(minutes=1),  # it beats every 10 s: a lost attempt is retried within 1 min
            retry_policy=CPU_RETRY,
        )
        st.usage = st.usage + res.usage
        for e in res.errors:
            self._note(f"epoch {tally.epoch}: {e}")
        if len(res.ideas) < n:
            self._note(f"epoch {tally.epoch}: asked for {n} ideas, got {len(res.ideas)}")
        room = self._epoch_size(cfg, tally.epoch) - tally.planned
        return [
            self._idea(cfg, tally, i.title, i.text, i.origin).model_copy(
                update={"parent_ids": i.parent_ids, "recipe": i.recipe, "seed": i.seed}
            )
            for i in res.ideas[: max(0, room)]
        ]

    def _stop_planning(self, reason: str, note: str) -> None:
        """Plan no more ideas (a budget is spent); the open epochs close once their ideas in flight are done."""
        st = self._state
        st.budget_exhausted = True
        st.stopped_reason = reason
        for t in st.epochs_open:
            t.closed = True
        self._note(note)

    def _budget_spent(self, cfg: CampaignConfig) -> tuple[str, str] | None:
        """(stopped reason, why) once a budget is spent: ``budget_usd`` of LLM calls, or ``budget_gpu_hours`` of
        training by the finished ideas plus what the ideas in flight will use (the mean of the finished ones
        each); None while both last."""
        st = self._state
        if cfg.budget_usd is not None and st.usage.cost_usd >= cfg.budget_usd:
            return "budget_exhausted", f"budget of ${cfg.budget_usd} spent"
        if cfg.budget_gpu_hours is None:
            return None
        used, budget = st.device_time.gpu_hours, cfg.budget_gpu_hours
        if used >= budget:
            return "gpu_budget_exhausted", f"GPU budget of {budget:g} h spent ({used:.3g} GPU-h used)"
        coming = used / st.ideas_done * len(st.in_flight) if st.ideas_done else 0.0
        if used + coming >= budget and workflow.patched(PATCH_GPU_PROJECTED):
            return "gpu_budget_exhausted", (
                f"GPU budget of {budget:g} h spent once the {len(st.in_flight)} ideas in flight finish "
                f"({used:.3g} GPU-h used, about {coming:.3g} to come)"
            )
        return None

    def _note(self, text: str) -> None:
        workflow.logger.info("campaign %s: %s", self._config.name, text)
        self._state.notes = [*self._state.notes, text[:300]][-MAX_NOTES:]

    # ------------------------------------------------------------------ ideas in flight

    async def _start_idea(self, cfg: CampaignConfig, spec: EnvSpec, idea: Idea, epoch_run_id: str | None) -> None:
        st = self._state
        st.n_planned += 1
        by_id = {s.idea_id: s for s in st.population}
        parent = by_id.get(idea.parent_ids[0]) if idea.parent_ids else None
        source = by_id.get(idea.code_from) if idea.code_from else None
        st.in_flight[idea.idea_id] = idea
        try:
            handle = await workflow.start_child_workflow(
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
                    budget_left_usd=(
                        None if cfg.budget_usd is None else max(0.0, cfg.budget_usd - st.usage.cost_usd)
                    ),
                    reuse_code=source.code if source else None,
                    reuse_diff=source.diff if source else None,
                    epoch_run_id=epoch_run_id,
                    experiment=experiment_name(cfg.name),
                    baseline_metric=st.baseline_metric,
                    await_baseline=cfg.run_baseline and not st.baseline_done,
                    preflight=cfg.preflight,
                ),
                id=idea.idea_id,
                task_queue=names.ORCHESTRATOR_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                parent_close_policy=ParentClosePolicy.ABANDON,
            )
        except WorkflowAlreadyStartedError:
            return  # still running from before a restart: its idea_done signal will come here
        self._watched.add(idea.idea_id)
        self._watches.append(asyncio.create_task(self._watch(handle, idea)))

    async def _start_ideas(self, starts: list) -> None:
        """Start children together. Shielded: a cancel of the campaign lets started children be recorded as
        started, so ``_cancel_in_flight`` (which waits for these) reaches every one of them."""
        if not starts or not workflow.patched(PATCH_CANCEL_IDEAS):
            await asyncio.gather(*starts)  # before the patch: kept for replay
            return
        tasks = [asyncio.create_task(s) for s in starts]
        self._starting.extend(tasks)
        try:
            await asyncio.shield(asyncio.gather(*tasks))
        finally:
            if all(t.done() for t in tasks):
                self._starting = [t for t in self._starting if t not in tasks]

    async def _watch(self, handle, idea: Idea) -> None:
        """A child that fails, is cancelled or is terminated may send no signal: record it as a failed idea."""
        try:
            await handle
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any end of the child other than success is a failed idea
            how = "failed"
            if isinstance(e, ChildWorkflowError):
                cause = e.cause
                how = (
                    "terminated" if isinstance(cause, TerminatedError)
                    else "canceled" if isinstance(cause, CancelledError)
                    else "timed_out" if isinstance(cause, ChildTimeoutError)
                    else "failed"
                )  # fmt: skip
            self._absorb(self._failed(idea, f"idea workflow ended ({how}) without a result: {e}", ended_category(how)))

    def _failed(self, idea: Idea, error: str, category: FailureCategory = "crashed") -> IdeaDone:
        self._note(f"{idea.idea_id}: {error}")
        return IdeaDone(
            summary=IdeaSummary.of(idea, "failed", category=category),
            error=error[:2000],
        )

    async def _reattach(self) -> None:
        """After a continue-as-new or a restart: pick up the results of ideas that closed meanwhile."""
        await self._collect_closed(list(self._state.in_flight))

    async def _collect_closed(self, ids: list[str]) -> None:
        """Ask the server which of ``ids`` closed; take their results, or count them failed (e.g. terminated)."""
        res = await workflow.execute_activity(
            names.IDEA_RESULTS,
            ids,
            result_type=IdeaResults,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=CPU_RETRY,
        )
        for d in res.done:
            self._absorb(d)
        for wid, why in res.ended.items():
            idea = self._state.in_flight.get(wid)
            if idea is not None:
                self._absorb(self._failed(idea, why, res.categories.get(wid, "crashed")))

    def _absorb(self, done: IdeaDone) -> None:
        """Take a finished idea into the state (once): counters, epoch tally, population, children, recent."""
        st, s = self._state, done.summary
        idea = st.in_flight.pop(s.idea_id, None)
        if idea is None:
            return  # already absorbed (a signal and a watch, or a re-attach, can both report one idea)
        direction = self._spec.direction if self._spec else "min"
        st.usage = st.usage + done.usage
        st.device_time = st.device_time + s.device_time
        if s.category == "budget_exhausted" and not st.budget_exhausted and workflow.patched(BUDGET_STOP):
            self._stop_planning(
                "budget_exhausted", f"{s.idea_id}: LLM budget exhausted while implementing: no more ideas are planned"
            )
        st.ideas_done += 1
        st.ideas_ok += s.status == "ok"
        if s.origin == "baseline":
            st.baseline_done = True
            if s.status == "ok":
                st.baseline_metric = s.metric
        if s.origin == "confirm":
            for cand in st.population:
                if s.parent_ids and cand.idea_id == s.parent_ids[0] and s.status == "ok" and s.metric is not None:
                    cand.confirmed_metrics.append(s.metric)
        else:
            for t in st.epochs_open:
                if t.epoch == s.epoch:
                    t.done += 1
                    t.device_time = t.device_time + s.device_time
                    if s.status == "ok" and s.metric is not None:
                        t.ok += 1
                        if t.best is None or self._better(s.metric, t.best):
                            t.best = s.metric
            for pid in s.parent_ids:
                if pid in {p.idea_id for p in st.population}:
                    d = delta(s, st.baseline_metric, direction) if s.status == "ok" else None
                    st.children[pid] = [*st.children.get(pid, []), d][-CHILD_HISTORY:]
                    st.n_children[pid] = st.n_children.get(pid, 0) + 1
            size = self._config.search.population
            st.population = update_population(st.population, s, direction, size)
            keep = {p.idea_id for p in st.population}
            st.children = {k: v for k, v in st.children.items() if k in keep}
            st.n_children = {k: v for k, v in st.n_children.items() if k in keep}
        st.recent.append(s)

    def _better(self, a: float, b: float) -> bool:
        return self._spec.better(a, b) if self._spec else a < b

    async def _tell_baseline(self) -> None:
        """Once the baseline finished, tell the ideas in flight that wait for it to compute their reward."""
        st = self._state
        if not st.baseline_done or st.baseline_sent:
            return
        st.baseline_sent = True
        for wid in list(st.in_flight):
            try:
                await workflow.get_external_workflow_handle(wid).signal("baseline_known", st.baseline_metric)
            except Exception as e:  # noqa: BLE001 - an idea that already finished needs no signal
                workflow.logger.debug("baseline signal to %s not delivered: %s", wid, e)

    async def _cancel_in_flight(self) -> None:
        """The campaign was cancelled: cancel its ideas too (they are ABANDONed, so nothing else would).

        Children being started finish starting first (else a cancel could overtake its start); the requests
        are then sent together and awaited, so each is recorded on the server before the campaign closes."""
        self._phase = "cancelling"
        await asyncio.gather(*self._starting, return_exceptions=True)

        async def cancel(wid: str) -> None:
            try:
                await workflow.get_external_workflow_handle(wid).cancel()
            except Exception as e:  # noqa: BLE001 - already closed, or never started
                workflow.logger.info("cancel of idea %s not delivered: %s", wid, e)

        ids = list(self._state.in_flight)
        await asyncio.gather(*(cancel(wid) for wid in ids))
        self._note(f"cancelled: {len(ids)} ideas in flight asked to cancel")

    async def _cancel_in_flight_one_by_one(self) -> None:
        """``_cancel_in_flight`` before PATCH_CANCEL_IDEAS (only replays of older histories run this)."""
        for wid in list(self._state.in_flight):
            try:
                await workflow.get_external_workflow_handle(wid).cancel()
            except Exception as e:  # noqa: BLE001 - already finished
                workflow.logger.debug("cancel of %s not delivered: %s", wid, e)

    # ------------------------------------------------------------------ epochs, confirmation, persistence

    def _epoch_ready(self) -> bool:
        o = self._state.epochs_open
        return bool(o) and o[0].closed and o[0].done >= o[0].planned

    async def _close_epochs(self, cfg: CampaignConfig, spec: EnvSpec) -> None:
        """Close finished epochs in order: MLflow epoch summary, search attributes, save, continue-as-new."""
        st = self._state
        closed = False
        while self._epoch_ready():
            t = st.epochs_open.pop(0)
            st.epoch_bests.append(t.best)
            st.next_epoch = t.epoch + 1
            overall = best_idea(st.population, spec.direction)
            summary = {
                "ideas": float(t.done),
                "ideas_ok": float(t.ok),
                "execution_rate": t.ok / t.done if t.done else 0.0,
                **t.device_time.metrics(),
                **st.device_time.metrics("campaign_"),
                **st.usage.metrics("campaign_"),  # LLM usage of the whole campaign so far
            }
            if t.best is not None:
                summary["epoch_best_metric"] = t.best
            if overall is not None and overall.metric is not None:
                summary["best_metric"] = overall.metric
            await self._record_epoch(cfg, spec, t.epoch, summary=summary, run_id=t.run_id)
            attrs = [EPOCH.value_set(t.epoch)]
            if overall is not None and overall.metric is not None:
                attrs.append(BEST_METRIC.value_set(float(score(overall) or overall.metric)))
            self._upsert(*attrs)
            closed = True
        if closed:
            await self._flush()
            more = not (self._planning_done(cfg) and not st.in_flight and not st.epochs_open)
            if more:
                await self._continue_as_new()

    async def _start_confirm(self, cfg: CampaignConfig, spec: EnvSpec) -> None:
        """Re-run the top candidates (and the baseline) on fresh seeds; their mean decides the winner."""
        st = self._state
        st.confirm_planned = True
        self._phase = "confirming"
        epoch = st.next_epoch
        index = 0
        jobs = []
        for cand in confirm_candidates(st.population, spec.direction, cfg.confirm_top_k):
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
                jobs.append(self._start_idea(cfg, spec, idea, None))
        await self._start_ideas(jobs)
        await self._save_state()

    def _history_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_LIMIT

    async def _continue_as_new(self) -> None:
        """Flush, then continue as a fresh run with the bounded state; ideas in flight keep running."""
        self._phase = "continuing"
        await self._flush()
        # the watch tasks are not cancelled: cancelling a task that awaits a child handle would cancel the child
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(CampaignInput(config=self._config, state=self._state))

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

    async def _flush(self) -> None:
        """Append the ideas completed since the last flush to the archive in the store, and save the state."""
        await self._save_state(flush=True)

    async def _save_state(self, flush: bool = False) -> None:
        st = self._state
        flushed = {s.idea_id for s in st.recent} if flush else set()
        res = await workflow.execute_activity(
            names.SAVE_STATE,
            SaveStateRequest(
                campaign=self._config.name,
                state_json=CampaignInput(config=self._config, state=st).model_dump_json(),
                flush=flush,
            ),
            result_type=SaveStateResult,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RECORD_RETRY,
        )
        if flushed:
            st.archive_head = res.head
            st.recent = [s for s in st.recent if s.idea_id not in flushed]

    def _upsert(self, *updates) -> None:
        """Search attributes for the UI and ``ideaforge list``. Only where the campaign was started with its
        ``Env`` attribute (as the CLI does): a server without our attributes (the time-skipping test server)
        would fail the workflow task on an upsert."""
        if workflow.info().typed_search_attributes.get(ENV) is None:
            return
        workflow.upsert_search_attributes(list(updates))


__all__ = ["CampaignWorkflow", "IdeaWorkflow"]
