"""Fast workflow tests (temporalio samples style): the real CampaignWorkflow and IdeaWorkflow, stub activities
registered under the real activity names, on Temporal's time-skipping test server (never downloaded).

The stubs stand in for the LLM, the patcher and training: "training" sleeps a few milliseconds and returns a
metric computed from the idea's recipe, so a campaign of a dozen ideas runs in about a second. ``save_state``
and ``idea_results`` are the real activities over a real local artifact store.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from ideaforge import names
from ideaforge.activities.campaign import CampaignActivities, load_archive, load_saved_state
from ideaforge.config import Settings
from ideaforge.models import (
    ArtifactRef,
    CampaignConfig,
    CampaignInput,
    DeviceTime,
    EnvSpec,
    Idea,
    IdeateRequest,
    IdeateResult,
    Implementation,
    ImplementRequest,
    Mutation,
    Package,
    PackageRequest,
    PreflightCost,
    PreflightRequest,
    PreflightResult,
    ProviderConfig,
    RecordEpochRequest,
    RecordIdeaRequest,
    RecordResult,
    Resources,
    RLCampaignConfig,
    RLCampaignInput,
    RLConfig,
    RLLoadAdapterRequest,
    RLResumePoint,
    RLSample,
    RLSampleRequest,
    RLSamples,
    RLStepRequest,
    RLStepResult,
    RunRequest,
    RunResult,
    StepMetrics,
    Usage,
)
from ideaforge.names import campaign_workflow_id
from ideaforge.research_envs.registry import load_env
from ideaforge.store.artifacts import LocalStore
from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow
from ideaforge.workflows.rl_campaign import RLCampaignWorkflow

FIXTURES = [Path(__file__).parent / "fixtures" / "envs"]
TEST_SERVER = shutil.which("temporal-test-server") or str(Path(__file__).parents[1] / ".venv/bin/temporal-test-server")


def code_ref(changes: int, title: str) -> ArtifactRef:
    return ArtifactRef(uri=f"stub://{changes}/{title}", sha256="0" * 64, size=0)



@dataclass
class Stubs:
    """Stub activities and what they saw. Metric of "idea N" = 1 - 0.01 * changes - 0.0001 * N (lower is better),
    the same on every seed."""

    spec: EnvSpec
    slots: int = 2
    run_s: float = 0.02
    slow: dict[str, float] = field(default_factory=dict)  # idea title -> run seconds
    ideate_cost: float = 0.0
    implement_cost: float = 0.0  # per implement call; refused (budget_exhausted) when the budget left is less
    ideate_s: dict[int, float] = field(default_factory=dict)  # ideate call number (from 1) -> seconds it takes
    bad_titles: set[str] = field(default_factory=set)  # implement fails on the first attempt
    hopeless_titles: set[str] = field(default_factory=set)  # implement always fails
    crashing_titles: set[str] = field(default_factory=set)  # the preflight fails on the first attempt
    always_crashing_titles: set[str] = field(default_factory=set)  # the preflight always fails
    preflights: list[PreflightRequest] = field(default_factory=list)
    ideate_calls: list[IdeateRequest] = field(default_factory=list)
    implement_calls: list[ImplementRequest] = field(default_factory=list)
    idea_records: list[RecordIdeaRequest] = field(default_factory=list)
    epoch_records: list[RecordEpochRequest] = field(default_factory=list)
    runs: dict[str, tuple[float, float]] = field(default_factory=dict)  # idea id -> (start, end) of training
    trained: list[str] = field(default_factory=list)  # idea ids, once per training run
    running: int = 0
    max_running: int = 0
    counter: int = 0
    gpu_s_per_run: float = 0.0  # device time each training run reports (as one GPU held that long)
    broken_titles: set[str] = field(default_factory=set)  # training fails for good, reporting its device time

    def activities(self, real: CampaignActivities) -> list:
        @activity.defn(name=names.DESCRIBE_ENV)
        async def describe_env(name: str) -> EnvSpec:
            return self.spec

        @activity.defn(name=names.TRAIN_SLOTS)
        async def train_slots() -> int:
            return self.slots

        @activity.defn(name=names.IDEATE)
        async def ideate(req: IdeateRequest) -> IdeateResult:
            self.ideate_calls.append(req)
            await asyncio.sleep(self.ideate_s.get(len(self.ideate_calls), 0.0))
            ideas = [
                Idea(idea_id=f"h{k}", epoch=req.epoch, index=k, title=t[:50], text=t, origin="human")
                for k, t in enumerate(req.human_ideas)
            ]
            plans = req.plan or []
            for k in range(req.n - len(ideas)):
                self.counter += 1
                parents = plans[k].parent_ids if k < len(plans) else []
                by_id = {p.idea_id: p for p in req.parents}
                recipe = [m for p in parents for m in (by_id[p].recipe or [])]
                recipe.append(Mutation(op=f"knob:x{self.counter}", value=1))
                ideas.append(
                    Idea(
                        idea_id=f"s{self.counter}",
                        epoch=req.epoch,
                        index=k,
                        title=f"idea {self.counter}",
                        text=f"stub idea {self.counter}",
                        origin="exploit" if parents else "explore",
                        parent_ids=parents,
                        recipe=recipe,
                    )
                )
            return IdeateResult(ideas=ideas, usage=Usage(calls=1, cost_usd=self.ideate_cost))

        @activity.defn(name=names.IMPLEMENT)
        async def implement(req: ImplementRequest) -> Implementation:
            self.implement_calls.append(req)
            title = req.idea.title
            if req.budget_left_usd is not None and req.budget_left_usd < self.implement_cost:
                return Implementation(applies=False, category="budget_exhausted", error="LLM budget exhausted")
            if title in self.hopeless_titles or (title in self.bad_titles and req.revision == 0):
                return Implementation(applies=False, category="patch_failed", error="hunk 1 does not apply")
            # the "diff" names the number of changes and the title: package and run read them back
            return Implementation(
                applies=True,
                diff=code_ref(len(req.idea.recipe or []), title),
                usage=Usage(calls=1, cost_usd=self.implement_cost),
            )

        @activity.defn(name=names.PACKAGE)
        async def package(req: PackageRequest) -> Package:
            return Package(code=req.diff or code_ref(0, "baseline"), files=1)

        @activity.defn(name=names.PREFLIGHT)
        async def preflight(req: PreflightRequest) -> PreflightResult:
            title = req.code.uri.removeprefix("stub://").split("/", 1)[1]
            first = not any(p.idea_id == req.idea_id for p in self.preflights)
            self.preflights.append(req)
            cost = PreflightCost(runs=1, wall_s=0.5, cpu_s=0.4)
            if title in self.always_crashing_titles or (title in self.crashing_titles and first):
                cost = cost.model_copy(update={"failures": 1, "saved_train_s": 5.0, "saved_basis": "time_limit_s"})
                return PreflightResult(status="failed", stage="run", error="ImportError: no module x", cost=cost)
            return PreflightResult(status="passed", stage="run", cost=cost)

        @activity.defn(name=names.RUN_EXPERIMENT)
        async def run_experiment(req: RunRequest) -> RunResult:
            changes, title = req.code.uri.removeprefix("stub://").split("/", 1)
            if title in self.broken_titles:  # as run_experiment raises: the device time spent in the details
                spent = DeviceTime.held("gpu", 2, 900.0, attempts=4)
                raise ApplicationError("sandbox broke on every host", spent, type="SandboxUnavailable", non_retryable=True)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            start = time.monotonic()
            try:  # heartbeats like the real activity: a cancel reaches training only through them
                deadline = start + self.slow.get(title, self.run_s)
                while (left := deadline - time.monotonic()) > 0:
                    activity.heartbeat()
                    await asyncio.sleep(min(left, 0.2))
            finally:
                self.running -= 1
            self.runs[req.idea_id] = (start, time.monotonic())
            self.trained.append(req.idea_id)
            number = int(title.split()[-1]) if title.split()[-1].isdigit() else 0
            spent = DeviceTime.held("gpu", 1, self.gpu_s_per_run) if self.gpu_s_per_run else DeviceTime()
            return RunResult(
                status="ok", metric=1.0 - 0.01 * int(changes) - 0.0001 * number, device_time=spent, devices=1
            )

        @activity.defn(name=names.RECORD_IDEA)
        async def record_idea(req: RecordIdeaRequest) -> RecordResult:
            self.idea_records.append(req)
            return RecordResult(run_id=f"run-{req.idea.idea_id}", experiment_id="1")

        @activity.defn(name=names.RECORD_EPOCH)
        async def record_epoch(req: RecordEpochRequest) -> RecordResult:
            self.epoch_records.append(req)
            return RecordResult(run_id=f"epoch-{req.epoch}", experiment_id="1")

        return [
            describe_env, train_slots, ideate, implement, package, preflight, run_experiment, record_idea, record_epoch,
            real.save_state, real.idea_results,
        ]  # fmt: skip



@pytest.fixture(scope="module")
def env() -> WorkflowEnvironment:
    e = asyncio.run(
        WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=TEST_SERVER, data_converter=pydantic_data_converter
        )
    )
    yield e
    asyncio.run(e.shutdown())


@pytest.fixture
def stubs() -> Stubs:
    return Stubs(spec=load_env("toy_quad", FIXTURES).spec)


def config(**kw) -> CampaignConfig:
    base = dict(name=f"fast-{uuid.uuid4().hex[:6]}", env="toy_quad", epochs=3, ideas_per_epoch=4, seed=1)
    base.update(kw)
    return CampaignConfig.model_validate(base)


def stub_workers(
    client: Client, stubs: Stubs, store: LocalStore, tmp: Path, profile: str, workflows: list, cpu_extra=(), more=()
) -> list[Worker]:
    """Workers over the stubs, one per queue as a deployment splits them: ``workflows`` on the orchestrator
    queue, training on the env's queue (``stubs.slots`` at once), the preflight on its own, the rest (and
    ``cpu_extra``) on the cpu queue; ``more`` are further workers."""
    acts = stubs.activities(CampaignActivities(Settings(home=tmp / "home", env_paths=FIXTURES), store))
    train = [a for a in acts if a.__name__ == "run_experiment"]
    checks = [a for a in acts if a.__name__ == "preflight"]
    return [
        Worker(client, task_queue=names.ORCHESTRATOR_QUEUE, workflows=workflows),
        Worker(client, task_queue=names.CPU_QUEUE, activities=[*(a for a in acts if a not in train + checks), *cpu_extra]),
        Worker(client, task_queue=names.PREFLIGHT_QUEUE, activities=checks),
        Worker(
            client,
            task_queue=stubs.spec.resources_for(profile).task_queue,
            activities=train,
            max_concurrent_activities=stubs.slots,
        ),
        *more,
    ]


async def run_campaign(
    client: Client, stubs: Stubs, tmp: Path, cfg: CampaignConfig, during=None, search_attributes=None
):
    """Run ``cfg`` to its end on workers with the stubs; ``during(handle)`` runs alongside. Returns
    (result, store, handle). ``during`` may return a new handle (a campaign it restarted) to wait on."""
    store = LocalStore(tmp / "store")
    async with AsyncExitStack() as running:
        for w in stub_workers(client, stubs, store, tmp, cfg.profile, [CampaignWorkflow, IdeaWorkflow]):
            await running.enter_async_context(w)
        handle = await client.start_workflow(
            CampaignWorkflow.run,
            CampaignInput(config=cfg),
            id=campaign_workflow_id(cfg.name),
            task_queue=names.ORCHESTRATOR_QUEUE,
            search_attributes=search_attributes,
        )
        if during is not None:
            handle = (await during(handle)) or handle
        result = await asyncio.wait_for(handle.result(), 180)
    return result, store, handle


async def campaign_runs(client: Client, handle) -> int:  # noqa: ANN001
    """How many runs the campaign took: 1 + its continue-as-news, following the chain from the first run."""
    n, rid = 0, handle.first_execution_run_id
    while rid:
        n += 1
        hist = await client.get_workflow_handle(handle.id, run_id=rid).fetch_history()
        last = hist.events[-1]
        cont = last.HasField("workflow_execution_continued_as_new_event_attributes")
        rid = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id if cont else None
    return n


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_implementer_refused_for_budget_stops_the_campaign(env, stubs, tmp_path) -> None:
    stubs.implement_cost, stubs.slots = 1.0, 1
    cfg = config(epochs=5, ideas_per_epoch=4, budget_usd=1.5, ahead=0)  # steady, one idea at a time
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    # idea 1 gets the whole budget and spends 1.0; idea 2 gets what is left, is refused, and is not revised;
    # the epoch it belongs to closes unfinished and nothing more is planned
    assert [r.budget_left_usd for r in stubs.implement_calls] == [1.5, 0.5]
    assert result.stopped_reason == "budget_exhausted" and result.usage.cost_usd == 1.0
    assert result.ideas_done == 3  # baseline, idea 1, idea 2
    archive = {s.title: s for s in load_archive(store, result.archive_ref)}
    assert archive["idea 2"].category == "budget_exhausted" and archive["idea 2"].idea_id not in stubs.trained
    campaign_costs = [r.summary["campaign_cost_usd"] for r in stubs.epoch_records if r.summary]
    assert campaign_costs == [1.0]  # the epoch run carries the campaign's LLM usage


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_steady_campaign_runs_every_epoch_and_rewards_every_idea(env, stubs, tmp_path) -> None:
    cfg = config(epochs=3, ideas_per_epoch=4)
    result, store, handle = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    assert result.epochs_completed == 3 and result.ideas_done == 1 + 3 * 4
    archive = load_archive(store, result.archive_ref)
    assert sorted(s.idea_id for s in archive) == sorted(stubs.trained), "every idea trained once, archived once"
    assert [s.origin for s in archive].count("baseline") == 1
    per_epoch = defaultdict(int)
    for s in archive:
        per_epoch[s.epoch] += 1
    assert dict(per_epoch) == {0: 5, 1: 4, 2: 4}
    # the epoch runs: opened (no summary) and closed (summary) once per epoch, in order
    closes = [r for r in stubs.epoch_records if r.summary is not None]
    assert [r.epoch for r in closes] == [0, 1, 2]
    assert [r.summary["ideas"] for r in closes] == [5.0, 4.0, 4.0]
    # the reward is computed once, in the idea workflow, for every idea - epoch 0 included
    assert len(stubs.idea_records) == 13
    assert all(r.outcome.summary.reward is not None for r in stubs.idea_records)
    assert {s.idea_id: s.reward for s in archive} == {
        r.idea.idea_id: r.outcome.summary.reward for r in stubs.idea_records
    }
    assert any(s.origin == "exploit" for s in archive), "later epochs build on parents"
    assert asyncio.run(campaign_runs(env.client, handle)) >= 3, "continue-as-new after each epoch"
    saved = load_saved_state(store, cfg.name)
    assert saved is not None and len(saved.state.archive) == 13 and not saved.state.in_flight


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_steady_keeps_slots_busy_while_sync_waits_for_the_slowest(env, tmp_path) -> None:
    spec = load_env("toy_quad", FIXTURES).spec
    out = {}
    for schedule in ("sync", "steady"):
        st = Stubs(spec=spec, slots=2, run_s=0.05, slow={"idea 1": 1.0})
        cfg = config(epochs=2, ideas_per_epoch=3, schedule=schedule, run_baseline=False)
        asyncio.run(run_campaign(env.client, st, tmp_path / schedule, cfg))
        first_e1 = min(start for i, (start, _) in st.runs.items() if "/e001/" in i)
        last_e0 = max(end for i, (_, end) in st.runs.items() if "/e000/" in i)
        out[schedule] = (first_e1 < last_e0, st.max_running)
    assert out["sync"][0] is False, "sync: no idea of epoch 1 trains before epoch 0 is over"
    assert out["steady"][0] is True, "steady: epoch 1 fills the slot the slow idea leaves idle"
    assert out["steady"][1] == 2 and out["sync"][1] <= 2


def test_patch_failure_is_revised_then_counted_as_a_failed_idea(env, stubs, tmp_path) -> None:
    stubs.bad_titles = {"idea 1"}
    stubs.hopeless_titles = {"idea 2"}
    llm = ProviderConfig(kind="openai-compatible", model="stub", base_url="http://127.0.0.1:9/v1")
    cfg = config(epochs=1, ideas_per_epoch=3, implementer=llm, max_revisions=2, run_baseline=False)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    by_title = {s.title: s for s in load_archive(store, result.archive_ref)}
    calls = defaultdict(list)
    for c in stubs.implement_calls:
        calls[c.idea.title].append(c.revision)
    assert calls["idea 1"] == [0, 1] and by_title["idea 1"].status == "ok"
    assert calls["idea 2"] == [0, 1, 2]
    assert by_title["idea 2"].status == "failed" and by_title["idea 2"].category == "patch_failed"
    revision = next(c for c in stubs.implement_calls if c.idea.title == "idea 1" and c.revision == 1)
    assert revision.previous_error == "hunk 1 does not apply", "the error is fed back"
    revisions = {r.idea.title: r.outcome.revisions for r in stubs.idea_records}
    assert revisions["idea 1"] == 1 and revisions["idea 2"] == 2


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_a_preflight_crash_is_revised_and_never_trained(env, stubs, tmp_path) -> None:
    """Code that crashes in the CPU preflight goes back to the implementer with the error; after the last
    revision the idea fails as preflight_failed, and no crashing package ever reaches run_experiment."""
    stubs.crashing_titles = {"idea 1"}
    stubs.always_crashing_titles = {"idea 2"}
    llm = ProviderConfig(kind="openai-compatible", model="stub", base_url="http://127.0.0.1:9/v1")
    cfg = config(epochs=1, ideas_per_epoch=3, implementer=llm, max_revisions=2, run_baseline=False)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    by_title = {s.title: s for s in load_archive(store, result.archive_ref)}
    calls = defaultdict(list)
    for c in stubs.implement_calls:
        calls[c.idea.title].append((c.revision, c.previous_category))
    assert calls["idea 1"] == [(0, None), (1, "preflight_failed")]
    assert calls["idea 2"] == [(0, None), (1, "preflight_failed"), (2, "preflight_failed")]
    assert calls["idea 3"] == [(0, None)]
    revision = next(c for c in stubs.implement_calls if c.idea.title == "idea 1" and c.revision == 1)
    assert revision.previous_error == "ImportError: no module x", "the traceback is fed back"
    trained = {by_id.title for by_id in by_title.values() if by_id.idea_id in stubs.trained}
    assert trained == {"idea 1", "idea 3"}, "the idea that always crashed never reached training"
    assert len(stubs.trained) == 2 and len(stubs.preflights) == 2 + 3 + 1
    assert by_title["idea 2"].status == "failed" and by_title["idea 2"].category == "preflight_failed"
    assert by_title["idea 1"].status == "ok"
    rec = {r.idea.title: r.outcome for r in stubs.idea_records}
    assert rec["idea 2"].revisions == 2 and rec["idea 2"].error == "ImportError: no module x"
    cost = rec["idea 2"].preflight
    assert (cost.runs, cost.failures, cost.saved_train_s) == (3, 3, 15.0) and cost.wall_s == pytest.approx(1.5)
    assert (rec["idea 1"].preflight.runs, rec["idea 1"].preflight.failures) == (2, 1)
    assert by_title["idea 1"].preflight == rec["idea 1"].preflight  # in the archive too (the report reads it)


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_preflight_off_trains_without_it(env, stubs, tmp_path) -> None:
    stubs.always_crashing_titles = {"idea 1"}
    cfg = config(epochs=1, ideas_per_epoch=2, run_baseline=False, preflight=False)
    asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    assert stubs.preflights == [] and len(stubs.trained) == 2


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_pause_inject_resume_survive_continue_as_new(temporal_env, stubs, tmp_path) -> None:
    # on the dev server: the time-skipping server's RPCs timed out under a loaded full suite
    stubs.run_s = 0.1
    cfg = config(epochs=3, ideas_per_epoch=2)
    seen = {}

    async def during(handle) -> None:  # noqa: ANN001
        for _ in range(3000):  # pause once epoch 0 is planned (baseline + 2 ideas), so it can close while paused
            if (await handle.query(CampaignWorkflow.status)).ideas_planned >= 3:
                break
            await asyncio.sleep(0.01)
        await handle.signal(CampaignWorkflow.pause)
        await handle.signal(CampaignWorkflow.inject_idea, "Try a human idea: momentum 0.5")
        for _ in range(3000):  # the ideas already in flight finish; epoch 0 closes; the campaign continues
            st = await handle.query(CampaignWorkflow.status)
            if st.paused and st.ideas_running == 0 and await campaign_runs(temporal_env.client, handle) >= 2:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"epoch 0 did not close while paused: {st}")
        seen["paused"] = st
        seen["runs_of_paused"] = await campaign_runs(temporal_env.client, handle)
        seen["runs_while_paused"] = len(stubs.runs)
        await asyncio.sleep(0.3)
        seen["runs_later"] = len(stubs.runs)
        await handle.signal(CampaignWorkflow.resume)

    result, store, handle = asyncio.run(run_campaign(temporal_env.client, stubs, tmp_path, cfg, during))
    assert seen["paused"].paused and seen["paused"].ideas_running == 0
    assert seen["runs_later"] == seen["runs_while_paused"], "nothing starts while paused"
    assert result.ideas_done == 1 + 3 * 2
    human = [s for s in load_archive(store, result.archive_ref) if s.origin == "human"]
    assert len(human) == 1 and "momentum 0.5" in human[0].text
    assert seen["runs_of_paused"] >= 2, "the pause was carried across a continue-as-new"


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_budget_cap_stops_planning_and_finishes_what_runs(env, stubs, tmp_path) -> None:
    stubs.ideate_cost = 1.0
    cfg = config(epochs=5, ideas_per_epoch=4, budget_usd=1.5, ideate_batch=2)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    assert result.stopped_reason == "budget_exhausted"
    assert len(stubs.ideate_calls) == 2 and result.usage.cost_usd == 2.0
    assert result.ideas_done == len(stubs.runs) == 1 + stubs.counter, "ideas already planned still run"


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_gpu_budget_stops_new_training_and_finishes_what_runs(env, stubs, tmp_path) -> None:
    stubs.spec = stubs.spec.model_copy(
        update={
            "resources": Resources(device="gpu", gpu_type="h100"),
            "resources_by_profile": {"smoke": {"device": "cpu"}},  # its preflight runs on the CPU
        }
    )
    stubs.gpu_s_per_run = 1800.0  # half a GPU-hour per idea
    cfg = config(epochs=5, ideas_per_epoch=4, budget_gpu_hours=1.0, ideate_batch=1, slots=2, ahead=1)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    assert result.stopped_reason == "gpu_budget_exhausted"
    assert result.ideas_done == len(stubs.runs), "ideas already planned still train and finish"
    # planning stops once the finished ideas and those in flight (half a GPU-hour each, the finished ones' mean)
    # reach the budget: when the first finished, at most slots + ahead - 1 = 2 others were in flight, so at most
    # 3 train (counting only finished ideas, a 4th was planned; without the budget 1 + 5 x 4 = 21 would run)
    assert 2 <= result.ideas_done <= 3
    assert result.device_time == DeviceTime(gpu_seconds=1800.0 * result.ideas_done, attempts=result.ideas_done)
    assert all(r.outcome.summary.device_time.gpu_seconds == 1800.0 for r in stubs.idea_records)
    closes = [r.summary for r in stubs.epoch_records if r.summary is not None]
    assert sum(c["gpu_seconds"] for c in closes) == result.device_time.gpu_seconds, "epochs add up"
    assert closes[-1]["campaign_gpu_seconds"] == result.device_time.gpu_seconds
    saved = load_saved_state(store, cfg.name)
    assert saved is not None and saved.state.stopped_reason == "gpu_budget_exhausted"
    assert any("GPU budget of 1 h spent once the" in n for n in saved.state.notes), saved.state.notes
    assert {s.idea_id: s.device_time.gpu_seconds for s in saved.state.archive} == dict.fromkeys(stubs.runs, 1800.0)


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_device_time_of_a_training_that_failed_for_good_is_counted(env, stubs, tmp_path) -> None:
    stubs.gpu_s_per_run = 60.0
    stubs.broken_titles = {"idea 1"}
    cfg = config(epochs=1, ideas_per_epoch=2, run_baseline=False)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    by_title = {s.title: s for s in load_archive(store, result.archive_ref)}
    assert by_title["idea 1"].status == "failed" and by_title["idea 1"].category == "crashed"
    assert by_title["idea 1"].device_time == DeviceTime(gpu_seconds=1800.0, attempts=4)
    assert by_title["idea 2"].device_time == DeviceTime(gpu_seconds=60.0, attempts=1)
    assert result.device_time == DeviceTime(gpu_seconds=1860.0, attempts=5)


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_confirmation_reruns_the_best_and_the_baseline_on_fresh_seeds(env, stubs, tmp_path) -> None:
    cfg = config(epochs=2, ideas_per_epoch=3, confirm_top_k=1, confirm_seeds=2)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    archive = load_archive(store, result.archive_ref)
    confirms = [s for s in archive if s.origin == "confirm"]
    assert len(confirms) == 4 and {s.seed for s in confirms} == {1001, 2001}
    assert result.best is not None and len(result.best.confirmed_metrics) == 2
    base = next(s for s in result.archive if s.origin == "baseline")
    assert len(base.confirmed_metrics) == 2


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_ideas_in_flight_survive_continue_as_new_and_are_reattached(temporal_env, stubs, tmp_path) -> None:
    # On the real dev server: the time-skipping server does not apply parent-close policies, so there a
    # TERMINATE policy would pass this test too (tried). Epoch 0 closes while epoch-1 ideas (one of them
    # slow) are still training, and the campaign continues as new.
    client = temporal_env.client
    stubs.slow = {"idea 3": 0.8}
    cfg = config(epochs=2, ideas_per_epoch=2, run_baseline=False, ahead=2)
    result, store, handle = asyncio.run(run_campaign(client, stubs, tmp_path, cfg))
    assert result.ideas_done == 4 and asyncio.run(campaign_runs(client, handle)) >= 2
    slow = next(r.idea.idea_id for r in stubs.idea_records if r.idea.title == "idea 3")
    desc = asyncio.run(client.get_workflow_handle(slow).describe())
    assert desc.status == WorkflowExecutionStatus.COMPLETED, "not terminated by the parent's continue-as-new"
    assert desc.parent_run_id != result_run(handle), "started by an earlier run, finished into the last one"
    assert {s.idea_id for s in load_archive(store, result.archive_ref)} == set(stubs.runs)


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_a_reattached_idea_terminated_by_hand_is_counted_failed(temporal_env, stubs, tmp_path) -> None:
    # On the dev server. The first run starts epochs 0 and 1 (slow "idea 1" holds epoch 0 open), then continues
    # as new while "idea 3" trains; the new run holds no handle on it, so when a person terminates it (no
    # idea_done signal ever comes) only the periodic check can notice.
    client = temporal_env.client
    stubs.slow = {"idea 1": 3.0, "idea 3": 120.0}
    cfg = config(epochs=2, ideas_per_epoch=2, run_baseline=False, ahead=2, check_in_flight_s=1.0)
    seen = {}

    async def during(handle):  # noqa: ANN001, ANN202
        for _ in range(3000):
            slow = next((c.idea.idea_id for c in stubs.implement_calls if c.idea.title == "idea 3"), None)
            st = await handle.query(CampaignWorkflow.status)
            if slow in st.in_flight and st.ideas_done == 3 and await campaign_runs(client, handle) >= 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"idea 3 was never re-attached: {st}")
        seen["started_by"] = (await client.get_workflow_handle(slow).describe()).parent_run_id
        await client.get_workflow_handle(slow).terminate("stopped by hand")
        seen["slow"] = slow

    result, store, handle = asyncio.run(run_campaign(client, stubs, tmp_path, cfg, during=during))
    last = asyncio.run(client.get_workflow_handle(handle.id).describe()).run_id
    assert seen["started_by"] == handle.first_execution_run_id != last, "started by the first run, re-attached"
    assert result.ideas_done == 4
    by_id = {s.idea_id: s for s in load_archive(store, result.archive_ref)}
    assert by_id[seen["slow"]].status == "failed" and by_id[seen["slow"]].category == "terminated"


def result_run(handle) -> str:  # noqa: ANN001
    desc = asyncio.run(handle.describe())
    return desc.run_id


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_a_terminated_campaign_restarted_from_its_saved_state_loses_no_idea(temporal_env, stubs, tmp_path) -> None:
    """Crash (terminate) mid-campaign, restart from the saved state as ``ideaforge resume`` does: every planned
    idea is executed exactly once, including those that were in flight at the crash (re-attached)."""
    from tests.record_histories import crash_then_resume

    client = temporal_env.client
    stubs.run_s = 0.1
    cfg = config(epochs=3, ideas_per_epoch=2)
    during = crash_then_resume(client, tmp_path / "store", None)
    result, store, _ = asyncio.run(run_campaign(client, stubs, tmp_path, cfg, during=during))
    ids = [s.idea_id for s in load_archive(store, result.archive_ref)]
    assert result.epochs_completed == 3 and result.ideas_done == 1 + 3 * 2
    assert sorted(ids) == sorted(set(ids)) == sorted(stubs.trained), "each idea trained once and archived once"


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_payloads_do_not_grow_with_the_campaign(env, tmp_path) -> None:
    """The largest event of a campaign's histories (all its runs) stays the same for 3x as many ideas.
    (best-of-N: the stub's exploit recipes grow with lineage depth, which would blur the comparison.)"""
    spec = load_env("toy_quad", FIXTURES).spec
    largest = {}
    for epochs in (4, 12):
        st = Stubs(spec=spec, run_s=0.005)
        cfg = config(epochs=epochs, ideas_per_epoch=4, search={"population": 4, "strategy": "best_of_n"})
        _, _, handle = asyncio.run(run_campaign(env.client, st, tmp_path / str(epochs), cfg))
        largest[epochs] = asyncio.run(largest_event(env.client, handle))
    assert largest[12] <= 1.25 * largest[4], largest  # an archive carried in the state would double it


async def largest_event(client: Client, handle) -> int:  # noqa: ANN001
    size, rid = 0, handle.first_execution_run_id
    while rid:
        hist = await client.get_workflow_handle(handle.id, run_id=rid).fetch_history()
        size = max([size, *(ev.ByteSize() for ev in hist.events)])
        last = hist.events[-1]
        cont = last.HasField("workflow_execution_continued_as_new_event_attributes")
        rid = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id if cont else None
    return size


@pytest.mark.slow  # 15-220 s on this 2-core machine
def test_the_archive_read_back_is_verified_chunk_by_chunk(env, stubs, tmp_path) -> None:
    from ideaforge.store.artifacts import StorageError

    cfg = config(epochs=2, ideas_per_epoch=3)
    result, store, _ = asyncio.run(run_campaign(env.client, stubs, tmp_path, cfg))
    assert len(load_archive(store, result.archive_ref)) == result.ideas_done == 7
    chunks = sorted((tmp_path / "store").rglob("cas/archive/*/*"))
    assert len(chunks) >= 2, "one chunk per flush, linked"
    first = min(chunks, key=lambda p: p.stat().st_mtime)
    first.write_bytes(first.read_bytes().replace(b"idea", b"IDEA", 1))  # tamper with the oldest chunk
    with pytest.raises(StorageError, match="sha256"):
        load_archive(store, result.archive_ref)
    with pytest.raises(StorageError):
        load_saved_state(store, cfg.name)


@pytest.mark.slow  # 15-220 s on this 2-core machine
@pytest.mark.parametrize("cancelled_in", ["activity", "wait"])
def test_cancel_stops_the_campaign_and_its_ideas_in_flight(temporal_env, stubs, tmp_path, cancelled_in) -> None:
    # On the dev server. A cancel that hits the campaign while it awaits an activity (here a slow ideate call)
    # surfaces as an ActivityError, not asyncio.CancelledError: the ideas were then never cancelled (the bug of
    # issue 13). "wait": the cancel hits the campaign waiting for its ideas. Training stops through its
    # heartbeats (profile "fault": heartbeat timeout 3 s).
    """Idea children are ABANDONed (they outlive a continue-as-new), so a cancelled campaign cancels them."""
    from temporalio.client import WorkflowFailureError

    stubs.run_s = 30.0
    stubs.ideate_s = {2: 60.0}  # the second batch (epoch 1) is still being ideated when the cancel comes
    # target = slots 2 + ahead: "activity" plans epoch 1 while epoch 0's 3 ideas run; "wait" waits for them
    cfg = config(epochs=2, ideas_per_epoch=2, profile="fault", ahead=2 if cancelled_in == "activity" else 1)
    seen = {}

    async def during(handle):  # noqa: ANN001, ANN202
        for _ in range(3000):
            st = await handle.query(CampaignWorkflow.status)
            busy = "ideating" in st.phase if cancelled_in == "activity" else "in flight" in st.phase
            if len(st.in_flight) >= 3 and busy:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"never reached the state to cancel in: {st}")
        seen["in_flight"] = st.in_flight
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        deadline = time.monotonic() + 60  # a running activity learns of the cancel with its next heartbeat
        while True:
            states = [(await temporal_env.client.get_workflow_handle(i).describe()).status for i in st.in_flight]
            # (an attempt that timed out under load may still run on the worker: it stops at its next heartbeat)
            closed = all(s != WorkflowExecutionStatus.RUNNING for s in states)
            if (closed and stubs.running == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        seen["states"] = states
        seen["campaign"] = (await handle.describe()).status
        seen["training"] = (stubs.running, list(stubs.trained))  # still training; trained to the end
        raise asyncio.CancelledError  # nothing left to wait for

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_campaign(temporal_env.client, stubs, tmp_path, cfg, during=during))
    assert seen["campaign"] == WorkflowExecutionStatus.CANCELED, seen
    assert seen["states"] and all(s == WorkflowExecutionStatus.CANCELED for s in seen["states"]), seen
    assert seen["training"] == (0, []), "training stopped early (cancelled through its heartbeats), none runs on"


@pytest.mark.slow  # a time-skipping campaign: seconds
def test_rl_group_that_repeats_an_idea_executes_it_once(env, stubs, tmp_path) -> None:
    """A collapsing ideator samples the same idea twice in a group (case and spacing aside): it trains once, and
    both replies get its reward for the GRPO update. A reply with no idea still gets the failure reward."""
    replies = [
        RLSample(completion="a", title="idea 1", text="Warm up the learning rate."),
        RLSample(completion="b", title="Idea 1 ", text="warm  up the learning rate."),  # the same idea again
        RLSample(completion="c", title="idea 2", text="Use a cosine schedule."),
        RLSample(completion="d"),  # no idea in the reply
    ]
    updates: list[RLStepRequest] = []

    @activity.defn(name=names.RL_RESUME)
    async def rl_resume(run_name: str) -> RLResumePoint:
        return RLResumePoint()

    @activity.defn(name=names.RL_SAMPLE)
    async def rl_sample(req: RLSampleRequest) -> RLSamples:
        return RLSamples(step=req.step, messages=[{"role": "user", "content": "ideas"}], samples=replies, model="base")

    @activity.defn(name=names.RL_UPDATE)
    async def rl_update(req: RLStepRequest) -> RLStepResult:
        updates.append(req)
        rewards = [s.reward for s in req.scored]
        metrics = StepMetrics(
            mean_reward=sum(rewards) / len(rewards), max_reward=max(rewards), distinct_ideas=2, distinct_fraction=0.5,
            semantic_diversity=0.0, category_entropy=0.0, reply_length=1.0, reasoning_length=0.0,
            execution_rate=0.75, n=len(rewards),
        )  # fmt: skip
        return RLStepResult(step=req.step, adapter=code_ref(0, "adapter"), adapter_name="a1", metrics=metrics)

    @activity.defn(name=names.RL_LOAD_ADAPTER)
    async def rl_load_adapter(req: RLLoadAdapterRequest) -> str:
        return req.adapter_name

    name = f"rl{uuid.uuid4().hex[:6]}"
    cfg = RLCampaignConfig(
        name=name, env="toy_quad", model_path=str(tmp_path), rl=RLConfig(run_name=name, steps=1, num_generations=4)
    )
    async def main():
        client = env.client
        rl = Worker(client, task_queue=names.RL_QUEUE, activities=[rl_update, rl_load_adapter])
        workers = stub_workers(client, stubs, LocalStore(tmp_path / "store"), tmp_path, "default",
                               [RLCampaignWorkflow, IdeaWorkflow], cpu_extra=[rl_resume, rl_sample], more=[rl])  # fmt: skip
        async with AsyncExitStack() as running:
            for w in workers:
                await running.enter_async_context(w)
            return await client.execute_workflow(
                RLCampaignWorkflow.run, RLCampaignInput(config=cfg), id=f"rl-{cfg.name}",
                task_queue=names.ORCHESTRATOR_QUEUE,
            )  # fmt: skip

    result = asyncio.run(asyncio.wait_for(main(), 180))
    assert result.steps_done == 1
    # the baseline, then idea 1 and idea 2 trained once each; the repeat of idea 1 did not train
    assert sorted(stubs.trained) == sorted([f"campaign-{cfg.name}/e000/i00", f"campaign-{cfg.name}/e001/i00",
                                            f"campaign-{cfg.name}/e001/i02"])  # fmt: skip
    [update] = updates
    r = [s.reward for s in update.scored]
    assert r[0] == r[1] and r[0] != r[2], r
    assert [s.executed for s in update.scored] == [True, True, True, False]
    assert r[3] == stubs.spec.reward.failure_reward
