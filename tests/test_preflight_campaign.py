"""The preflight in real campaigns: a real Temporal dev server, the real worker (cpu + cpu-train queues, bubblewrap
sandbox), MLflow, and real anthropic/openai clients against the loopback LLM server.

A diff that crashes at import or at the first training step must reach training 0 times: the runner's training
entry point is counted (every package it trains, by digest), so these tests fail if the preflight is removed.
Then an 80-idea epoch goes through the CampaignWorkflow with the preflight on.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from mlflow.tracking import MlflowClient

from ideaforge.activities.campaign import load_archive
from ideaforge.cli import campaigns
from ideaforge.config import Settings
from ideaforge.models import (
    CampaignConfig,
    CampaignResult,
    IdeaOutcome,
    ProviderConfig,
    RunRequest,
)
from ideaforge.run.runner import ExperimentRunner
from ideaforge.store.artifacts import open_store
from tests.fakes.llm_server import FakeLLMServer
from tests.harness import run_llm_idea, running_worker

pytestmark = [pytest.mark.integration]  # the crash tests take 2-3 s (toy_quad trains in under a second)

KEY_ENV = "IDEAFORGE_TEST_PREFLIGHT_KEY"


def block(search: str, replace: str) -> str:
    return f"The change.\n\ntrain.py\n```python\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"


# applies cleanly, compiles, and crashes when train.py is imported (a module that does not exist)
CRASH_AT_IMPORT = block("MOMENTUM = 0.0", "from momentum_schedules import warm_momentum\n\nMOMENTUM = 0.9")
# applies, imports, and crashes inside the first training step (a shape mistake in the update)
CRASH_AT_STEP = block(
    "        w = [wi - LR * vi for wi, vi in zip(w, v, strict=True)]",
    "        w = [wi - LR * vi for wi, vi in zip(w, v[:-1], strict=True)]",
)
GOOD = block("MOMENTUM = 0.0", "MOMENTUM = 0.9")


@pytest.fixture
def trained(monkeypatch) -> list[RunRequest]:
    """Every request the runner trains (the training entry point behind run_experiment)."""
    seen: list[RunRequest] = []
    original = ExperimentRunner.run

    async def counting(self, req, **kw):  # noqa: ANN001, ANN202
        seen.append(req)
        return await original(self, req, **kw)

    monkeypatch.setattr(ExperimentRunner, "run", counting)
    return seen


def run_idea(settings: Settings, client, replies: list[str]) -> tuple[IdeaOutcome, list[str]]:
    return run_llm_idea(settings, client, replies, KEY_ENV, "pf")


@pytest.mark.parametrize(
    ("crash", "expected"),
    [
        (CRASH_AT_IMPORT, "ModuleNotFoundError: No module named 'momentum_schedules'"),
        (CRASH_AT_STEP, "ValueError: zip() argument 2 is shorter than argument 1"),
    ],
    ids=["at-import", "at-first-step"],
)
@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_a_crashing_diff_never_trains_and_its_revision_does(
    crash: str, expected: str, served_settings, temporal_env, trained, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "sk-preflight")
    outcome, prompts = run_idea(served_settings, temporal_env.client, [crash, GOOD])

    assert outcome.summary.status == "ok", outcome.error
    assert outcome.revisions == 1 and len(prompts) == 2
    # the traceback went back to the implementer, without host paths
    assert "Your previous change crashed before training" in prompts[1] and expected in prompts[1]
    assert 'File "train.py", line' in prompts[1] and str(served_settings.home) not in prompts[1]
    # trained exactly once: the revised code, never the crashing one
    assert [r.idea_id for r in trained] == [outcome.summary.idea_id]
    assert trained[0].code == outcome.summary.code
    store = open_store(served_settings)
    diff = store.get_text(outcome.summary.diff)
    assert "+MOMENTUM = 0.9" in diff and "momentum_schedules" not in diff and "v[:-1]" not in diff
    # the cost and the slot time saved, in the result contract and in MLflow
    pf = outcome.preflight
    assert pf.runs == 2 and pf.failures == 1 and pf.wall_s > 0 and pf.cpu_s > 0
    assert pf.saved_train_s == 5 and pf.saved_basis == "time_limit_s"  # toy_quad: 5 s time limit
    run = MlflowClient(served_settings.mlflow_uri).get_run(outcome.mlflow_run_id)
    assert run.data.metrics["preflight_runs"] == 2 and run.data.metrics["preflight_failures"] == 1
    assert run.data.metrics["preflight_wall_s"] == pytest.approx(pf.wall_s)
    assert run.data.metrics["preflight_saved_train_s"] == 5
    assert run.data.tags["ideaforge.preflight_saved_basis"] == "time_limit_s"


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_a_diff_that_always_crashes_is_a_failed_idea_that_never_trained(
    served_settings, temporal_env, trained, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, "sk-preflight")
    outcome, prompts = run_idea(served_settings, temporal_env.client, [CRASH_AT_IMPORT, CRASH_AT_STEP, CRASH_AT_IMPORT])

    assert len(prompts) == 3 and outcome.revisions == 2
    assert outcome.summary.status == "failed" and outcome.summary.category == "preflight_failed"
    assert "momentum_schedules" in outcome.error and outcome.run is None and outcome.summary.code is None
    assert trained == []
    assert outcome.preflight.failures == 3 and outcome.preflight.saved_train_s == 15
    run = MlflowClient(served_settings.mlflow_uri).get_run(outcome.mlflow_run_id)
    assert run.data.tags["ideaforge.category"] == "preflight_failed"


@pytest.mark.slow  # 55-200 s on this 2-core machine
def test_an_80_idea_epoch_goes_through_the_campaign_with_the_preflight(
    served_settings: Settings, temporal_env, trained, monkeypatch
) -> None:
    """80 ideas per epoch from the loopback server (openai protocol), each implemented, preflighted and trained on
    toy_quad through CampaignWorkflow: at least 76 distinct ideas, every trained package preflighted first."""
    monkeypatch.setenv(KEY_ENV, "sk-preflight")
    client = temporal_env.client
    name = f"pf80-{uuid.uuid4().hex[:6]}"
    with FakeLLMServer() as srv:  # smart mode: distinct ideas, and a one-line change per implementation
        provider = ProviderConfig(
            kind="openai", base_url=srv.base_url("openai"), api_key_env=KEY_ENV, model="fake-model",
            price_in_per_mtok=1.0, price_out_per_mtok=2.0, concurrency=8,
        )  # fmt: skip
        cfg = CampaignConfig(
            name=name, env="toy_quad", profile="smoke", epochs=1, ideas_per_epoch=80, ideator=provider,
            implementer=provider, slots=2, ahead=8, ideate_batch=80, run_baseline=False,
        )  # fmt: skip

        async def go() -> CampaignResult:
            async with running_worker(client, served_settings, slots=2):
                handle, _ = await campaigns.start(client, cfg)
                return await asyncio.wait_for(handle.result(), 1500)

        result = asyncio.run(go())
    archive = load_archive(open_store(served_settings), result.archive_ref)
    ideas = [s for s in archive if s.origin in ("explore", "exploit")]
    assert result.epochs_completed == 1 and len(ideas) >= 80
    assert len({(s.title, s.text) for s in ideas}) >= 76
    assert all(s.preflight is not None and s.preflight.runs >= 1 for s in ideas if s.code is not None)
    ok = [s for s in ideas if s.status == "ok"]
    assert len(ok) >= 76, {s.category for s in ideas if s.status != "ok"}
    assert len(trained) == len({r.idea_id for r in trained}) == sum(s.code is not None for s in ideas)
