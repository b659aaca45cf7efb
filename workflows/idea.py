"""IdeaWorkflow: one idea from text to metric — implement -> package -> preflight (revising on failure) -> run ->
record.

A diff that does not apply, or whose package crashes in the CPU preflight (compile, the env's first training
steps; activity ``preflight`` on the sandboxed ``preflight`` queue), goes back to the implementer with the error
(<= max_revisions revisions); after the last one the idea is a failed result (``patch_failed`` /
``preflight_failed``) that never reached a training slot. Histories from before the preflight (no ``preflight-before-training`` marker) replay
the old sequence: implement (revising on patch failure) -> package -> run.

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
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from ideaforge import names
    from ideaforge.models import (
        ArtifactRef,
        DeviceTime,
        FailureCategory,
        IdeaDone,
        IdeaInput,
        IdeaOutcome,
        IdeaSummary,
        Implementation,
        ImplementRequest,
        Package,
        PackageRequest,
        PreflightCost,
        PreflightRequest,
        PreflightResult,
        Progress,
        RecordIdeaRequest,
        RecordResult,
        RunRequest,
        RunResult,
        Usage,
    )
    from ideaforge.rewards import compute_reward

# workflow.patched ids: commands added since histories were recorded (old histories replay the old way)
BUDGET_STOP = "implement-budget-stop"  # workflow.patched id: an implement round refused for budget ends the loop
PATCH_REPORT_CANCEL = "idea-reports-its-cancel"  # a cancelled idea signals idea_done (category cancelled)
PATCH_WAIT_TRAINING_CANCEL = "idea-waits-for-training-cancel"  # cancel waits until the trainer stopped
PATCH_CANCEL_OUTLIVES_WORKER = "idea-cancel-outlives-its-worker"  # cancelled, then its worker died: CANCELED

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
PREFLIGHT_PATCH = "preflight-before-training"  # workflow.patched id: histories without it replay the old path
# covers a first prepare of the preflight profile's data on the worker; a dead worker is noticed by heartbeat
PREFLIGHT_TIMEOUT = timedelta(minutes=75)


def device_time_of(err: ActivityError) -> DeviceTime:
    """The device time of a training whose retries ran out: the error's details (set by ``run_experiment``), or
    the last heartbeat of an attempt that timed out (its worker died); nothing for other activities."""
    if err.activity_type != names.RUN_EXPERIMENT:
        return DeviceTime()
    cause = err.cause
    try:
        if isinstance(cause, ApplicationError) and cause.details:
            return DeviceTime.model_validate(cause.details[0])
        if isinstance(cause, ActivityTimeout) and cause.last_heartbeat_details:
            return Progress.model_validate(cause.last_heartbeat_details[0]).device_time
    except ValidationError:
        workflow.logger.warning("unreadable device time in the failure of %s", err.activity_type)
    return DeviceTime()


@workflow.defn(name="IdeaWorkflow")
class IdeaWorkflow:
    def __init__(self) -> None:
        self._phase = "starting"
        self._baseline: float | None = None
        self._baseline_known = False
        self._preflight: PreflightCost | None = None

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
            # or non-retryable: either way the campaign must hear of it. A cancel still ends the workflow CANCELED,
            # also when the activity could not confirm it (its worker died with the cancel pending: it timed out)
            late = not is_cancelled_exception(e) and workflow.cancellation_reason() is not None
            cancel_wins = late and workflow.patched(PATCH_CANCEL_OUTLIVES_WORKER)
            category = "cancelled" if is_cancelled_exception(e) or cancel_wins else "crashed"
            await self._tell_campaign(self._ended(inp, category, f"{e}: {e.cause}", device_time_of(e)))
            if cancel_wins:
                raise asyncio.CancelledError(f"cancelled; the activity then ended with: {e.cause}") from e
            raise

    def _ended(
        self, inp: IdeaInput, category: FailureCategory, error: str, device_time: DeviceTime | None = None
    ) -> IdeaOutcome:
        """The outcome of an idea that ended without a result: its training time and preflight still count."""
        summary = IdeaSummary.of(
            inp.idea, "failed", category=category, device_time=device_time or DeviceTime(), preflight=self._preflight
        )
        return IdeaOutcome(summary=summary, error=error[:2000])

    async def _run(self, inp: IdeaInput) -> IdeaOutcome:
        started = workflow.now()
        usage = Usage()
        revisions = 0
        diff: ArtifactRef | None = inp.reuse_diff
        code: ArtifactRef | None = inp.reuse_code
        impl: Implementation | None = None
        if code is None and inp.idea.origin != "baseline" and inp.preflight and workflow.patched(PREFLIGHT_PATCH):
            impl, revisions, usage, code = await self._implement_checked(inp)
            if code is None:  # no diff applied, or every one crashed in the preflight: never trained
                return await self._finish(inp, started, usage, revisions, None, impl, diff=impl.diff)
            diff = impl.diff
        if code is None:
            if inp.idea.origin != "baseline":
                impl, revisions, usage = await self._implement(inp)
                if not impl.applies:
                    return await self._finish(inp, started, usage, revisions, None, impl, diff=impl.diff)
                diff = impl.diff
            code = await self._package(inp, diff)
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
        """Implement, and on a diff that does not apply, revise with each failed sample's reply and error fed
        back (<= max_revisions). Each round may spend what is left of the campaign's budget after this idea's
        earlier rounds; a round refused for budget ends the loop (category ``budget_exhausted``).

        The path of histories recorded before the preflight existed (see :meth:`_implement_checked`)."""
        usage = Usage()
        impl: Implementation | None = None
        revision = 0
        for revision in range(inp.max_revisions + 1):
            impl = await self._implement_once(inp, revision, impl, usage)
            usage = usage + impl.usage
            if impl.applies or inp.implementer.kind == "offline":
                break  # the offline implementer is deterministic: a revision would give the same diff
            if impl.category == "budget_exhausted" and workflow.patched(BUDGET_STOP):
                break  # the LLM budget is spent: stop, a revision would be refused as well
        assert impl is not None
        return impl, revision, usage

    async def _implement_checked(self, inp: IdeaInput) -> tuple[Implementation, int, Usage, ArtifactRef | None]:
        """Implement -> package -> preflight; a diff that does not apply or crashes in the preflight is revised
        with its error fed back (<= max_revisions). Returns the last implementation, the revisions, the usage,
        and the package to train (None: nothing passed; the implementation then says why)."""
        usage, cost = Usage(), PreflightCost()
        impl: Implementation | None = None
        revision = 0
        for revision in range(inp.max_revisions + 1):
            impl = await self._implement_once(inp, revision, impl, usage)
            usage = usage + impl.usage
            if impl.category == "budget_exhausted":
                break  # the LLM budget is spent: stop, a revision would be refused as well
            if impl.applies:
                code = await self._package(inp, impl.diff)
                check = await self._check(inp, code, revision)
                cost = cost + (check.cost if check else PreflightCost(runs=1, inconclusive=1))
                self._preflight = cost
                if check is None or check.status != "failed":
                    return impl, revision, usage, code
                impl = impl.model_copy(
                    update={"applies": False, "category": "preflight_failed", "error": check.error}
                )
            if inp.implementer.kind == "offline":
                break  # the offline implementer is deterministic: a revision would give the same diff
        assert impl is not None
        return impl, revision, usage, None

    async def _implement_once(
        self, inp: IdeaInput, revision: int, previous: Implementation | None, spent: Usage
    ) -> Implementation:
        """One implement round; ``spent`` is what this idea's earlier rounds cost (taken off the budget left)."""
        self._phase = "implementing" if revision == 0 else f"revising ({revision})"
        return await workflow.execute_activity(
            names.IMPLEMENT,
            ImplementRequest(
                campaign=inp.campaign,
                env=inp.spec.name,
                idea=inp.idea,
                provider=inp.implementer,
                revision=revision,
                parallel_samples=inp.parallel_samples,
                previous_diff=previous.diff if previous else None,
                previous_error=previous.error if previous else None,
                previous_category=previous.category if previous and previous.error else None,
                previous_samples=previous.samples if previous else [],
                parent_diff=inp.parent_diff,
                budget_left_usd=(
                    None if inp.budget_left_usd is None else max(0.0, inp.budget_left_usd - spent.cost_usd)
                ),
            ),
            result_type=Implementation,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(minutes=1),  # it beats every 10 s: a lost attempt is retried within 1 min
            retry_policy=CPU_RETRY,
        )

    async def _package(self, inp: IdeaInput, diff: ArtifactRef | None) -> ArtifactRef:
        self._phase = "packaging"
        pkg = await workflow.execute_activity(
            names.PACKAGE,
            PackageRequest(env=inp.spec.name, diff=diff),
            result_type=Package,
            task_queue=names.CPU_QUEUE,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=CPU_RETRY,
        )
        return pkg.code

    async def _check(self, inp: IdeaInput, code: ArtifactRef, revision: int) -> PreflightResult | None:
        """The CPU preflight of ``code``; None when it could not run (the code then trains unchecked)."""
        self._phase = "preflight" if revision == 0 else f"preflight ({revision})"
        try:
            return await workflow.execute_activity(
                names.PREFLIGHT,
                PreflightRequest(
                    campaign=inp.campaign, idea_id=inp.idea.idea_id, env=inp.spec.name, code=code, profile=inp.profile
                ),
                result_type=PreflightResult,
                task_queue=names.PREFLIGHT_QUEUE,
                # no preflight worker for this long (an old deployment): train unchecked rather than wait forever
                schedule_to_start_timeout=timedelta(minutes=30),
                start_to_close_timeout=PREFLIGHT_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=CPU_RETRY,
            )
        except ActivityError as e:  # no preflight worker, its sandbox broke, an old worker without the activity
            if is_cancelled_exception(e):
                raise  # the idea was cancelled: never train it
            workflow.logger.warning("preflight of %s could not run (%s: %s); training it unchecked", inp.idea.idea_id, e, e.cause)
            return None

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
            device_time=run.device_time if run else DeviceTime(),
            preflight=self._preflight,
        )
        outcome = IdeaOutcome(
            summary=summary,
            revisions=revisions,
            usage=usage,
            run=run,
            preflight=self._preflight,
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
