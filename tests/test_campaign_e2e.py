"""End to end: real Temporal dev server, real MLflow server, real worker code, the toy env, the offline ideator."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from mlflow.tracking import MlflowClient
from temporalio.client import WorkflowExecutionStatus

from ideaforge import names
from ideaforge.cli import campaigns
from ideaforge.cli.campaigns import CampaignError
from ideaforge.config import Settings
from ideaforge.models import (
    CampaignConfig,
    CampaignResult,
    Idea,
    IdeaInput,
    IdeaOutcome,
    IdeaSummary,
    Mutation,
    ProviderConfig,
)
from ideaforge.names import BEST_METRIC, EPOCH, campaign_workflow_id, experiment_name, idea_id
from ideaforge.research_envs.registry import load_env
from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow
from tests.harness import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(name: str, **kw) -> CampaignConfig:
    base = dict(name=name, env="toy_quad", epochs=2, ideas_per_epoch=3, seed=1)
    base.update(kw)
    return CampaignConfig.model_validate(base)


def _full_archive(settings: Settings, result: CampaignResult) -> list[IdeaSummary]:
    """Every executed idea: the result carries a bounded population, the store holds the archive."""
    from ideaforge.activities.campaign import load_archive
    from ideaforge.store.artifacts import open_store

    return load_archive(open_store(settings), result.archive_ref)


def _idea_runs(mlflow_uri: str, campaign: str) -> list:
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(experiment_name(campaign))
    assert exp is not None, "campaign experiment missing in MLflow"
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_two_epoch_campaign_completes_and_mlflow_matches(served_settings: Settings, temporal_env) -> None:
    client = temporal_env.client
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    # synchronous epochs, mostly exploiting in epoch 1 (steady scheduling: tests/test_workflows_fast.py)
    cfg = _config(name, schedule="sync", search={"exploit_start": 1.0, "exploit_end": 1.0})

    async def go() -> CampaignResult:
        async with running_worker(client, served_settings):
            handle, what = await campaigns.start(client, cfg)
            assert what == "started"
            result = await asyncio.wait_for(handle.result(), 300)
            desc = await handle.describe()
            assert desc.typed_search_attributes.get(EPOCH) == 1
            assert desc.typed_search_attributes.get(BEST_METRIC) == pytest.approx(result.best.metric)
            return result

    result = asyncio.run(go())
    archive = _full_archive(served_settings, result)
    assert result.epochs_completed == 2
    origins = [s.origin for s in archive]
    assert origins.count("baseline") == 1
    assert len(archive) == result.ideas_done == 1 + 2 * cfg.ideas_per_epoch
    assert result.baseline_metric is not None
    # epoch 1 exploits: its exploit ideas descend from executed epoch-0 ideas
    epoch0 = {s.idea_id for s in archive if s.epoch == 0}
    exploit = [s for s in archive if s.origin == "exploit"]
    assert exploit and all(set(s.parent_ids) <= epoch0 for s in exploit)
    # every executed idea has exactly one MLflow run, with the workflow's status and metric
    runs = _idea_runs(served_settings.mlflow_uri, name)
    idea_runs = {r.data.tags["ideaforge.idea_id"]: r for r in runs if "ideaforge.idea_id" in r.data.tags}
    epoch_runs = [r for r in runs if r.data.tags.get("ideaforge.kind") == "epoch"]
    assert len(epoch_runs) == 2
    assert len([r for r in runs if "ideaforge.idea_id" in r.data.tags]) == len(archive)
    for s in archive:
        run = idea_runs[s.idea_id]
        assert run.data.tags["ideaforge.status"] == s.status
        assert run.data.tags["temporal.workflow_id"] == s.idea_id
        if s.status == "ok":
            assert run.data.metrics["metric"] == pytest.approx(s.metric)
            assert run.info.status == "FINISHED"
        else:
            assert run.data.tags["ideaforge.category"] == s.category


def test_failing_ideas_are_results_with_categories(served_settings: Settings, temporal_env) -> None:
    client = temporal_env.client
    name = f"fail-{uuid.uuid4().hex[:6]}"
    spec = load_env("toy_quad", served_settings.env_paths).spec
    crash = next(v.name for v in spec.offline.variants if "crash" in v.name)
    nan = next(v.name for v in spec.offline.variants if "nan" in v.name)
    cases = {  # category -> (recipe, preflight): a crash at start is caught by the preflight, else it trains
        "crashed": ([Mutation(op=f"variant:{crash}")], False),
        "preflight_failed": ([Mutation(op=f"variant:{crash}")], True),
        "nan": ([Mutation(op=f"variant:{nan}")], True),
        "patch_failed": ([Mutation(op="variant:does-not-exist")], True),
    }

    async def go() -> dict[str, IdeaOutcome]:
        out = {}
        async with running_worker(client, served_settings):
            for k, (category, (recipe, preflight)) in enumerate(cases.items()):
                idea = Idea(
                    idea_id=idea_id(name, 0, k),
                    epoch=0,
                    index=k,
                    title=f"bad {category}",
                    text="a deliberately bad idea",
                    recipe=recipe,
                )
                out[category] = await client.execute_workflow(
                    IdeaWorkflow.run,
                    IdeaInput(
                        campaign=name,
                        spec=spec,
                        idea=idea,
                        implementer=ProviderConfig(),
                        experiment=experiment_name(name),
                        preflight=preflight,
                    ),
                    id=idea.idea_id,
                    task_queue=names.ORCHESTRATOR_QUEUE,
                    result_type=IdeaOutcome,
                )
        return out

    outcomes = asyncio.run(go())
    for category, outcome in outcomes.items():
        assert outcome.summary.status == "failed"
        assert outcome.summary.category == category, outcome.error
        assert outcome.error
    runs = _idea_runs(served_settings.mlflow_uri, name)
    assert sorted(r.data.tags["ideaforge.category"] for r in runs) == sorted(cases)
    assert all(r.info.status == "FAILED" for r in runs)


def test_duplicate_start_attaches_or_is_refused(served_settings: Settings, temporal_env) -> None:
    client = temporal_env.client
    name = f"dup-{uuid.uuid4().hex[:6]}"
    cfg = _config(name, epochs=1, ideas_per_epoch=2)

    async def go() -> None:
        async with running_worker(client, served_settings):
            first, what = await campaigns.start(client, cfg)
            assert what == "started"
            second, what2 = await campaigns.start(client, cfg)
            assert what2 == "attached"
            assert (await second.describe()).run_id == (await first.describe()).run_id
            with pytest.raises(CampaignError, match="different config"):
                await campaigns.start(client, cfg.model_copy(update={"ideas_per_epoch": 3}))
            await first.result()
            _, what3 = await campaigns.start(client, cfg)  # a finished campaign is shown, not run again
            assert what3 == "finished"
        runs = [wf async for wf in client.list_workflows(f"WorkflowId='{campaign_workflow_id(name)}'")]
        assert len(runs) == 1

    asyncio.run(go())


def test_terminated_campaign_resumes_from_last_completed_epoch(
    served_settings: Settings, temporal_env
) -> None:
    from ideaforge.activities.campaign import load_saved_state
    from ideaforge.store.artifacts import open_store

    client = temporal_env.client
    name = f"resume-{uuid.uuid4().hex[:6]}"
    cfg = _config(name, epochs=3, ideas_per_epoch=2)
    store = open_store(served_settings)

    async def go() -> CampaignResult:
        async with running_worker(client, served_settings):
            handle, _ = await campaigns.start(client, cfg)
            for _ in range(600):  # wait until epoch 0 is saved
                saved = load_saved_state(store, name)
                if saved and saved.state.next_epoch >= 1:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("epoch 0 never completed")
            await handle.terminate("test: simulated crash")
            assert (await handle.describe()).status == WorkflowExecutionStatus.TERMINATED
            saved = load_saved_state(store, name)
            done_before = saved.state.next_epoch
            _, what = await campaigns.resume(client, name, saved)
            assert what.startswith(f"restarted after epoch {done_before} of 3")
            h2 = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
            return await asyncio.wait_for(h2.result(), 300)

    result = asyncio.run(go())
    archive = _full_archive(served_settings, result)
    assert result.epochs_completed == 3
    ids = [s.idea_id for s in archive]
    assert len(ids) == len(set(ids)), "an idea was executed twice"
    assert {s.epoch for s in archive} == {0, 1, 2}
    assert len(ids) == result.ideas_done == 1 + 3 * 2, "no idea lost across the crash"


def test_pause_and_inject_reach_the_workflow(served_settings: Settings, temporal_env) -> None:
    client = temporal_env.client
    name = f"pause-{uuid.uuid4().hex[:6]}"
    cfg = _config(name, epochs=2, ideas_per_epoch=2)

    async def go() -> CampaignResult:
        async with running_worker(client, served_settings):
            handle, _ = await campaigns.start(client, cfg)
            await campaigns.signal(client, name, "pause")
            await campaigns.signal(client, name, "inject", "Set lr to 0.05 please")
            st = await handle.query(CampaignWorkflow.status)
            assert st.paused
            for _ in range(300):
                st = await handle.query(CampaignWorkflow.status)
                if st.phase.startswith("paused") and st.ideas_running == 0:
                    break
                await asyncio.sleep(0.2)
            assert st.phase.startswith("paused") and st.ideas_running == 0
            ideas_when_paused = st.ideas_done
            await asyncio.sleep(1.5)
            assert (await handle.query(CampaignWorkflow.status)).ideas_done == ideas_when_paused
            await campaigns.resume(client, name, None)
            return await asyncio.wait_for(handle.result(), 300)

    result = asyncio.run(go())
    human = [s for s in _full_archive(served_settings, result) if s.origin == "human"]
    assert len(human) == 1 and human[0].epoch in (0, 1)


def test_confirmation_reruns_top_ideas_on_fresh_seeds(served_settings: Settings, temporal_env) -> None:
    client = temporal_env.client
    # The offline ideator is seeded by (seed, ideas planned so far), not by the name: with one batch per epoch
    # (sync) any name draws the same ideas, and seed 1's epoch 0 has ok ideas to confirm.
    name = f"confirm-{uuid.uuid4().hex[:6]}"
    cfg = _config(name, epochs=1, ideas_per_epoch=3, confirm_top_k=1, confirm_seeds=2, schedule="sync")

    async def go() -> CampaignResult:
        async with running_worker(client, served_settings):
            handle, _ = await campaigns.start(client, cfg)
            return await asyncio.wait_for(handle.result(), 300)

    result = asyncio.run(go())
    confirms = [s for s in _full_archive(served_settings, result) if s.origin == "confirm"]
    top = [s for s in result.archive if s.confirmed_metrics and s.origin != "baseline"]
    base = next(s for s in result.archive if s.origin == "baseline")
    assert len(top) == 1 and len(top[0].confirmed_metrics) == 2
    assert len(base.confirmed_metrics) == 2
    assert len(confirms) == 4 and {s.seed for s in confirms} == {cfg.seed + 1000, cfg.seed + 2000}
    assert all(s.code == top[0].code or s.code == base.code for s in confirms), "confirm runs reuse the code"
