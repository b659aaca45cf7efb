"""RLCampaignWorkflow: online RL of the ideator (id ``rl-<name>``), one durable GRPO step at a time.

First the baseline runs once (its metric is what every reward is measured against). Then each step k:
1. ``rl_sample``: a group of ``rl.num_generations`` replies to the step's prompt from the served ideator, with
   the adapter of step k-1 (the base model at step 1);
2. each reply that holds an idea runs as a normal IdeaWorkflow child (implement -> package -> train ->
   evaluate -> record), ids ``campaign-<name>/e<k>/i<j>``; its reward is the child's (env reward against the
   baseline, or the env's failure reward); a reply without an idea gets the failure reward, not executed; a
   reply repeating an earlier reply's idea (a collapsing ideator's group) shares that reply's run and reward;
3. ``rl_update`` on the ``rl`` queue: one GRPO update on (prompt, replies, rewards), checkpointed to the store;
4. ``rl_load_adapter``: the new adapter is loaded into the server, and step k+1 samples from it.
Durability: the samples of the step in progress are workflow state, the children are workflows, the update is
idempotent (a retry returns the stored step, an interrupted one restarts from the last checkpoint in the
store). The workflow continues as new every ``steps_per_run`` steps, between steps (no child in flight). A
campaign started again under its name (after it failed or was terminated) reads the store's last completed
step (``rl_resume``), has its adapter loaded and goes on from there.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from ideaforge import names
    from ideaforge.models import (
        MAX_RL_HISTORY,
        ArtifactRef,
        EnvSpec,
        Idea,
        IdeaDone,
        IdeaInput,
        IdeaOutcome,
        ProviderConfig,
        RLCampaignInput,
        RLCampaignResult,
        RLCampaignStatus,
        RLLoadAdapterRequest,
        RLResumePoint,
        RLSampleRequest,
        RLSamples,
        RLScored,
        RLStepRequest,
        RLStepResult,
    )
    from ideaforge.names import experiment_name, idea_id
    from ideaforge.rewards import compute_reward
    from ideaforge.workflows.idea import CPU_RETRY, IdeaWorkflow

SAMPLE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=10,  # the server may be restarting
)
TRAIN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=5,
    non_retryable_error_types=["RLStateError", "ValueError", "ValidationError", "FileNotFoundError"],
)
MAX_NOTES = 10
SAME_IDEA_ONCE = "rl-same-idea-once"  # workflow.patched id: a group that repeats an idea executes it once


@workflow.defn(name="RLCampaignWorkflow")
class RLCampaignWorkflow:
    @workflow.init
    def __init__(self, inp: RLCampaignInput) -> None:
        self._config = inp.config
        self._state = inp.state
        self._phase = "starting"

    @workflow.signal
    def idea_done(self, done: IdeaDone) -> None:
        """Sent by each IdeaWorkflow child; its outcome is read from the child's result instead."""

    @workflow.query
    def status(self) -> RLCampaignStatus:
        cfg, st = self._config, self._state
        return RLCampaignStatus(
            name=cfg.name,
            env=cfg.env,
            phase=self._phase,
            steps_done=st.steps_done,
            steps=cfg.rl.steps,
            adapter_name=st.adapter_name,
            baseline_metric=st.baseline_metric,
            best_reward=st.best_reward,
            last=st.history[-1] if st.history else None,
            history=st.history,
            sampled_from=st.sampled_from,
            notes=st.notes,
        )

    @workflow.run
    async def run(self, inp: RLCampaignInput) -> RLCampaignResult:
        cfg, st = self._config, self._state
        spec = await workflow.execute_activity(
            names.DESCRIBE_ENV,
            cfg.env,
            result_type=EnvSpec,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=CPU_RETRY,
        )
        if not st.store_checked:
            await self._resume_from_store()
        if st.adapter is not None and st.adapter_name is not None:
            await self._load_adapter(st.adapter_name, st.adapter)  # the server may have restarted meanwhile
        if not st.baseline_done:
            await self._baseline(spec)
        run_start = st.steps_done
        while st.steps_done < cfg.rl.steps:
            if st.steps_done - run_start >= cfg.steps_per_run or workflow.info().is_continue_as_new_suggested():
                self._phase = "continuing"
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(RLCampaignInput(config=cfg, state=st))
            await self._step(spec, st.steps_done + 1)
        self._phase = "completed"
        return RLCampaignResult(
            name=cfg.name,
            steps_done=st.steps_done,
            adapter_name=st.adapter_name,
            baseline_metric=st.baseline_metric,
            best_reward=st.best_reward,
            history=st.history,
            sampled_from=st.sampled_from,
        )

    # ------------------------------------------------------------------ one step

    async def _step(self, spec: EnvSpec, k: int) -> None:
        cfg, st = self._config, self._state
        if st.pending is None or st.pending.step != k:
            self._phase = f"step {k}: sampling {cfg.rl.num_generations} ideas"
            st.pending = await workflow.execute_activity(
                names.RL_SAMPLE,
                RLSampleRequest(
                    campaign=cfg.name,
                    env=cfg.env,
                    step=k,
                    provider=ProviderConfig(
                        kind="openai-compatible",
                        base_url=cfg.server_url,
                        model=st.adapter_name or cfg.served_model,
                        temperature=cfg.rl.temperature,
                        max_tokens=max(16, cfg.rl.max_completion_length),
                        prompt_cache=False,
                        concurrency=min(64, cfg.rl.num_generations),
                    ),
                    n=cfg.rl.num_generations,
                    reply_format=cfg.reply_format,
                ),
                result_type=RLSamples,
                task_queue=names.CPU_QUEUE,
                start_to_close_timeout=timedelta(minutes=30),
                retry_policy=SAMPLE_RETRY,
            )
        samples = st.pending
        n = len(samples.samples)
        twin = samples.first_of_each_idea() if workflow.patched(SAME_IDEA_ONCE) else list(range(n))
        run = sorted(set(twin))
        self._phase = f"step {k}: executing {len(run)} ideas" + (f" ({n - len(run)} repeats)" if len(run) < n else "")
        ran = dict(zip(run, await asyncio.gather(*(self._execute(spec, k, j) for j in run)), strict=True))
        outcomes = [ran[twin[j]] for j in range(n)]  # a repeated idea gets its first sample's outcome
        scored = []
        for s, o in zip(samples.samples, outcomes, strict=True):
            ok = o is not None and o.summary.status == "ok"
            reward = o.summary.reward if o is not None else None
            if reward is None:
                reward = compute_reward(None, st.baseline_metric, spec)
            scored.append(RLScored(completion=s.completion, finished=s.finished, reward=reward, executed=ok))
        self._phase = f"step {k}: GRPO update"
        res = await workflow.execute_activity(
            names.RL_UPDATE,
            RLStepRequest(rl=cfg.rl, step=k, model_path=cfg.model_path, messages=samples.messages, scored=scored),
            result_type=RLStepResult,
            task_queue=names.RL_QUEUE,
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(seconds=cfg.trainer_heartbeat_s),
            retry_policy=TRAIN_RETRY,
        )
        await self._load_adapter(res.adapter_name, res.adapter)
        st.adapter_name, st.adapter = res.adapter_name, res.adapter
        st.history = [*st.history, res.metrics][-MAX_RL_HISTORY:]
        st.sampled_from = [*st.sampled_from, samples.model][-MAX_RL_HISTORY:]
        best = max(sc.reward for sc in scored)
        st.best_reward = best if st.best_reward is None else max(st.best_reward, best)
        st.pending = None
        st.steps_done = k

    async def _load_adapter(self, name: str, adapter: ArtifactRef) -> None:
        """Have the server load ``adapter`` as model ``name`` (idempotent: a loaded one stays)."""
        cfg = self._config
        self._phase = f"loading adapter {name}"
        await workflow.execute_activity(
            names.RL_LOAD_ADAPTER,
            RLLoadAdapterRequest(
                server_url=cfg.server_url, adapter_name=name, adapter=adapter, adapter_root=cfg.adapter_root
            ),
            result_type=str,
            task_queue=names.RL_QUEUE,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=SAMPLE_RETRY,
        )

    async def _resume_from_store(self) -> None:
        """A campaign started again under its name goes on from the last step its trainer completed."""
        st = self._state
        point = await workflow.execute_activity(
            names.RL_RESUME,
            self._config.rl.run_name,
            result_type=RLResumePoint,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=CPU_RETRY,
        )
        st.store_checked = True
        if point.last is not None and point.last.step > st.steps_done:
            st.steps_done = point.last.step
            st.adapter_name, st.adapter = point.last.adapter_name, point.last.adapter
            st.history = point.history
            st.sampled_from = []  # not known for the steps of an earlier workflow
            self._note(f"resumed from step {point.last.step} in the store")

    async def _execute(self, spec: EnvSpec, k: int, j: int) -> IdeaOutcome | None:
        """Sample ``j`` of step ``k`` through the normal idea machinery; None when it holds no idea."""
        cfg, st = self._config, self._state
        s = st.pending.samples[j] if st.pending else None
        if s is None or s.title is None or s.text is None:
            return None
        idea = Idea(
            idea_id=idea_id(cfg.name, k, j),
            epoch=k,
            index=j,
            title=s.title,
            text=s.text,
            origin="explore",
            seed=cfg.seed,
        )
        return await self._run_idea(spec, idea)

    async def _run_idea(self, spec: EnvSpec, idea: Idea) -> IdeaOutcome | None:
        cfg, st = self._config, self._state
        try:
            return await workflow.execute_child_workflow(
                IdeaWorkflow.run,
                IdeaInput(
                    campaign=cfg.name,
                    spec=spec,
                    idea=idea,
                    profile=cfg.profile,
                    implementer=cfg.implementer,
                    max_revisions=cfg.max_revisions,
                    experiment=experiment_name(cfg.name),
                    baseline_metric=st.baseline_metric,
                ),
                id=idea.idea_id,
                task_queue=names.ORCHESTRATOR_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
        except Exception as e:  # noqa: BLE001 - a child that fails is a failed idea (failure reward)
            self._note(f"{idea.idea_id}: idea workflow failed: {e}")
            return None

    async def _baseline(self, spec: EnvSpec) -> None:
        cfg, st = self._config, self._state
        self._phase = "running the baseline"
        idea = Idea(
            idea_id=idea_id(cfg.name, 0, 0),
            epoch=0,
            index=0,
            title="baseline",
            text="The unmodified baseline codebase.",
            origin="baseline",
            seed=cfg.seed,
        )
        out = await self._run_idea(spec, idea)
        if out is None or out.summary.status != "ok" or out.summary.metric is None:
            raise ApplicationError(
                f"the baseline of {cfg.env} failed, so no idea can be rewarded: "
                f"{(out.error if out else None) or 'see the idea workflow ' + idea.idea_id}",
                non_retryable=True,
            )
        st.baseline_metric = out.summary.metric
        st.baseline_done = True

    def _note(self, text: str) -> None:
        workflow.logger.info("rl campaign %s: %s", self._config.name, text)
        self._state.notes = [*self._state.notes, text[:300]][-MAX_NOTES:]


__all__ = ["RLCampaignWorkflow"]
