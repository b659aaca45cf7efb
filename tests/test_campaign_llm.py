"""Campaigns driven by real anthropic/openai clients against a loopback server speaking their protocols."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from mlflow.tracking import MlflowClient

from ideaforge.activities.campaign import load_archive
from ideaforge.cli import campaigns
from ideaforge.config import Settings
from ideaforge.models import CampaignConfig, CampaignResult, ProviderConfig
from ideaforge.names import experiment_name
from ideaforge.store.artifacts import open_store
from tests.fakes.llm_server import FakeLLMServer
from tests.harness import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "sk-test-NEVER-LOG-ME-0123456789"


def _provider(kind: str, srv: FakeLLMServer) -> ProviderConfig:
    return ProviderConfig(
        kind=kind,
        base_url=srv.base_url(kind),
        api_key_env="IDEAFORGE_TEST_LLM_KEY",
        model="fake-model",
        price_in_per_mtok=1.0,
        price_out_per_mtok=2.0,
        max_retries=2,
    )


@pytest.mark.parametrize("kind", ["anthropic", "openai", "openai-compatible"])
def test_campaign_runs_with_each_llm_protocol(
    kind: str, served_settings: Settings, temporal_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDEAFORGE_TEST_LLM_KEY", SECRET)
    client = temporal_env.client
    name = f"llm-{kind.replace('-', '')}-{uuid.uuid4().hex[:6]}"
    with FakeLLMServer() as srv:
        srv.push_error(429, retry_after_ms=10)  # the first call is rate limited, then retried
        cfg = CampaignConfig(  # sync epochs: epoch 1 is planned once epoch 0's ideas can be parents
            name=name, env="toy_quad", epochs=2, ideas_per_epoch=2, ideator=_provider(kind, srv), schedule="sync"
        )

        async def go() -> CampaignResult:
            async with running_worker(client, served_settings):
                handle, _ = await campaigns.start(client, cfg)
                return await asyncio.wait_for(handle.result(), 300)

        result = asyncio.run(go())
        sent_keys = {r.headers.get("x-api-key") or r.headers.get("authorization", "") for r in srv.requests}
    assert result.epochs_completed == 2
    archive = load_archive(open_store(served_settings), result.archive_ref)  # every executed idea
    llm_ideas = [s for s in archive if s.origin in ("explore", "exploit")]
    assert len(llm_ideas) == 4 and all(s.recipe is None for s in llm_ideas)
    assert sum(s.status == "ok" for s in llm_ideas) >= 3, [(s.title, s.category) for s in llm_ideas]
    assert any(s.origin == "exploit" and s.parent_ids for s in llm_ideas if s.epoch == 1)
    assert result.usage.calls >= 2 + 4 and result.usage.cost_usd > 0
    # the key went to the provider (openai-compatible with an explicit key env sends it too) ...
    assert any(SECRET in k for k in sent_keys)
    # ... and nowhere into MLflow
    ml = MlflowClient(served_settings.mlflow_uri)
    exp = ml.get_experiment_by_name(experiment_name(name))
    runs = ml.search_runs([exp.experiment_id])
    # the implementer's stable block (env, protected files, baseline) is read from the cache after the first idea
    assert sum(r.data.metrics.get("cached_input_tokens", 0) for r in runs) > 0
    # each epoch run carries the campaign's LLM usage so far (cached, reasoning, cancelled tokens included)
    epoch_costs = [r.data.metrics["campaign_cost_usd"] for r in runs if "campaign_cost_usd" in r.data.metrics]
    assert len(epoch_costs) == 2 and 0 < max(epoch_costs) <= result.usage.cost_usd + 1e-9
    assert all("campaign_cached_input_tokens" in r.data.metrics for r in runs if "campaign_cost_usd" in r.data.metrics)
    for run in runs:
        blob = repr(run.data.params) + repr(run.data.tags)
        assert SECRET not in blob
        for art in ml.list_artifacts(run.info.run_id):
            if not art.is_dir:
                path = ml.download_artifacts(run.info.run_id, art.path)
                assert SECRET not in open(path, errors="replace").read()


def test_budget_cap_stops_new_llm_work(served_settings: Settings, temporal_env, monkeypatch) -> None:
    monkeypatch.setenv("IDEAFORGE_TEST_LLM_KEY", SECRET)
    client = temporal_env.client
    name = f"budget-{uuid.uuid4().hex[:6]}"
    with FakeLLMServer() as srv:
        provider = _provider("openai", srv).model_copy(update={"price_in_per_mtok": 1e6})
        cfg = CampaignConfig(
            name=name, env="toy_quad", epochs=4, ideas_per_epoch=2, ideator=provider, budget_usd=0.5
        )

        async def go() -> CampaignResult:
            async with running_worker(client, served_settings):
                handle, _ = await campaigns.start(client, cfg)
                return await asyncio.wait_for(handle.result(), 300)

        result = asyncio.run(go())
    assert result.stopped_reason == "budget_exhausted"
    assert result.epochs_completed < 4
    assert result.usage.cost_usd >= 0.5
