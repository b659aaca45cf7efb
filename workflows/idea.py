"""IdeaWorkflow: one idea from text to metric — implement (with revisions) -> package -> run -> record.

Failures of the idea itself (no diff applies, crash, timeout, NaN, protected file) are results with a category;
infrastructure failures are retried by Temporal through the activity retry policies.

The reward is computed here, once, against the baseline metric: an idea started before the baseline finished
(``await_baseline``) holds its record until the campaign signals ``baseline_known``. A finished idea signals
``idea_done`` to its campaign (by workflow id, so it reaches the campaign's current run even after a
continue-as-new); the campaign starts ideas with ParentClosePolicy.ABANDON, so none is killed in flight.

A cancelled idea (its campaign was cancelled, or a person cancelled it) stops its training (the cancel reaches
the trainer through the activity's heartbeat, and the workflow waits until training stopped), tells its campaign
(``idea_done``, category ``cancelled``) and ends CANCELED.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from ideaforge import names
    from ideaforge.models import (
        ArtifactRef,
        FailureCategory,
        IdeaDone,
        IdeaInput,
        IdeaOutcome,
        IdeaSummary,
        Implementation,
        ImplementRequest,
        Package,
        PackageRequest,
        RecordIdeaRequest,
        RecordResult,
        RunRequest,
        RunResult,
        Usage,
    )
    from ideaforge.rewards import compute_reward

# workflow.patched ids: commands added since histories were recorded (old histories replay the old way)
PATCH_REPORT_CANCEL = "idea-reports-its-cancel"  # a cancelled idea signals idea_done (category cancelled)
PATCH_WAIT_TRAINING_CANCEL = "idea-waits-for-training-cancel"  # cancel waits until the trainer stopped

CPU_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=["EnvError", "ValidationError"],
)
# Recording must survive an MLflow outage of minutes: retry for a long time, never lose the result.
RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,
    non_retryable_error_types=["TrackingError"],
)
TRAIN_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=4,
    non_retryable_error_types=["EnvError", "ValidationError"],
)


@workflow.defn(name="IdeaWorkflow")
class IdeaWorkflow:
    def __init__(self) -> None:
        self._phase = "starting"
        self._baseline: float | None = None
        self._baseline_known = False

    @workflow.query
    def phase(self) -> str:
        return self._phase

    @workflow.signal
    def baseline_known(self, metric: float | None) -> None:
        """The campaign's baseline metric (None: the baseline failed, so no reward can be computed)."""
        self._baseline, self._baseline_known = metric, True

    @workflow.run
    async def run(self, inp: IdeaInput) -> IdeaOutcome:
        try:
            return await self._run(inp)
        except asyncio.CancelledError:  # cancelled while no activity ran (waiting for the baseline, a signal)
            if workflow.patched(PATCH_REPORT_CANCEL):
                await self._tell_campaign(self._ended(inp, "cancelled", "idea workflow cancelled"))
            raise
        except ActivityError as e:
            # cancelled during an activity (the campaign, or a person, cancelled this idea), or retries exhausted
            # or non-retryable: either way the campaign must hear of it. A cancel still ends the workflow CANCELED.
            category = "cancelled" if is_cancelled_exception(e) else "crashed"
            await self._tell_campaign(self._ended(inp, category, f"{e}: {e.cause}"))
            raise

    @staticmethod
    def _ended(inp: IdeaInput, category: FailureCategory, error: str) -> IdeaOutcome:
        return IdeaOutcome(summary=IdeaSummary.of(inp.idea, "failed", category=category), error=error[:2000])

    async def _run(self, inp: IdeaInput) -> IdeaOutcome:
        started = workflow.now()
        usage = Usage()
        revisions = 0
        diff: ArtifactRef | None = inp.reuse_diff
        code: ArtifactRef | None = inp.reuse_code
        impl: Implementation | None = None
        if code is None:
            if inp.idea.origin != "baseline":
                impl, revisions, usage = await self._implement(inp)
                if not impl.applies:
                    return await self._finish(inp, started, usage, revisions, None, impl, diff=impl.diff)
                diff = impl.diff
            self._phase = "packaging"
            pkg = await workflow.execute_activity(
                names.PACKAGE,
                PackageRequest(env=inp.spec.name, diff=diff),
                result_type=Package,
                task_queue=names.CPU_QUEUE,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=CPU_RETRY,
            )
            code = pkg.code
        self._phase = "training"
        res = inp.spec.resources_for(inp.profile)
        run = await workflow.execute_activity(
            names.RUN_EXPERIMENT,
            RunRequest(
                campaign=inp.campaign,
                idea_id=inp.idea.idea_id,
                env=inp.spec.name,
                code=code,
                profile=inp.profile,
                seed=inp.idea.seed,
            ),
            result_type=RunResult,
            task_queue=res.task_queue,
            # the runner enforces the env's time limit itself; this bound also covers prepare, eval and queueing
            start_to_close_timeout=timedelta(seconds=res.time_limit_s * 2 + 1800),
            # the activity heartbeats every few seconds; a dead worker's attempt is retried after this
            heartbeat_timeout=timedelta(seconds=res.heartbeat_timeout_s),
            retry_policy=TRAIN_RETRY,
            # a cancel reaches the trainer with the next heartbeat; the idea ends only once training stopped
            cancellation_type=(
                ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                if workflow.patched(PATCH_WAIT_TRAINING_CANCEL)
                else ActivityCancellationType.TRY_CANCEL
            ),
        )
        return await self._finish(inp, started, usage, revisions, run, impl, diff=diff, code=code)

    async def _implement(self, inp: IdeaInput) -> tuple[Implementation, int, Usage]:
        """Implement, and on a diff that does not apply, revise with the error fed back (<= max_revisions)."""
        usage = Usage()
        impl: Implementation | None = None
        revision = 0
        for revision in range(inp.max_revisions + 1):
            self._phase = "implementing" if revision == 0 else f"revising ({revision})"
            impl = await workflow.execute_activity(
                names.IMPLEMENT,
                ImplementRequest(
                    campaign=inp.campaign,
                    env=inp.spec.name,
                    idea=inp.idea,
                    provider=inp.implementer,
                    revision=revision,
                    parallel_samples=inp.parallel_samples,
                    previous_diff=impl.diff if impl else None,
                    previous_error=impl.error if impl else None,
                    parent_diff=inp.parent_diff,
                ),
                result_type=Implementation,
                task_queue=names.CPU_QUEUE,
                start_to_close_timeout=timedelta(minutes=15),
                heartbeat_timeout=timedelta(minutes=5),
                retry_policy=CPU_RETRY,
            )
            usage = usage + impl.usage
            if impl.applies or inp.implementer.kind == "offline":
                break  # the offline implementer is deterministic: a revision would give the same diff
        assert impl is not None
        return impl, revision, usage

    async def _finish(
        self,
        inp: IdeaInput,
        started,
        usage: Usage,
        revisions: int,
        run: RunResult | None,
        impl: Implementation | None,
        diff: ArtifactRef | None,
        code: ArtifactRef | None = None,
    ) -> IdeaOutcome:
        idea = inp.idea
        if run is None:
            status, category, metric = "failed", (impl.category if impl else None) or "patch_failed", None
        else:
            status, category, metric = run.status, run.category, run.metric
        baseline = inp.baseline_metric
        if idea.origin == "baseline" and status == "ok":
            baseline = metric
        elif baseline is None and inp.await_baseline and status == "ok":
            self._phase = "waiting for the baseline metric"
            await workflow.wait_condition(lambda: self._baseline_known)
            baseline = self._baseline
        reward = (
            compute_reward(metric if status == "ok" else None, baseline, inp.spec)
            if baseline is not None or status != "ok"
            else None
        )
        summary = IdeaSummary.of(
            idea,
            status,  # type: ignore[arg-type]
            category=category,
            metric=metric,
            reward=reward,
            code=code,
            diff=diff,
        )
        outcome = IdeaOutcome(
            summary=summary,
            revisions=revisions,
            usage=usage,
            run=run,
            error=(impl.error if impl and not impl.applies else None) or (run.error if run else None),
        )
        # everything but training itself and waiting for a free slot: ideate/implement/package/record, scheduling
        run_s = (run.finished_at - run.started_at + run.queued_s) if run and run.started_at else 0.0
        outcome.orchestration_s = max(0.0, (workflow.now() - started).total_seconds() - run_s)
        self._phase = "recording"
        info = workflow.info()
        rec = await workflow.execute_activity(
            names.RECORD_IDEA,
            RecordIdeaRequest(
                experiment=inp.experiment,
                campaign=inp.campaign,
                epoch_run_id=inp.epoch_run_id,
                idea=idea,
                outcome=outcome,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                env=inp.spec.name,
                profile=inp.profile,
                transcript=impl.transcript if impl else None,
            ),
            result_type=RecordResult,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=RECORD_RETRY,
        )
        outcome.mlflow_run_id = rec.run_id
        await self._tell_campaign(outcome)
        self._phase = "done"
        return outcome

    async def _tell_campaign(self, outcome: IdeaOutcome) -> None:
        """Signal the bounded outcome to the campaign that started this idea (if it did, and still runs)."""
        parent = workflow.info().parent
        if parent is None:
            return
        done = IdeaDone(
            summary=outcome.summary,
            revisions=outcome.revisions,
            usage=outcome.usage,
            mlflow_run_id=outcome.mlflow_run_id,
            error=(outcome.error or "")[:2000] or None,
        )
        try:
            await workflow.get_external_workflow_handle(parent.workflow_id).signal("idea_done", done)
        except Exception as e:  # noqa: BLE001 - a campaign that is gone reads the result on resume instead
            workflow.logger.warning("could not tell campaign %s that %s is done: %s", parent.workflow_id, outcome.summary.idea_id, e)
