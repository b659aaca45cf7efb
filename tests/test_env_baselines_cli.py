"""The built-in envs as a user runs them: ``ideaforge start --profile smoke`` (the CLI, a subprocess) ->
Temporal -> worker -> sandboxed training -> locked evaluation -> MLflow.

Each env's own smoke training is tested once, in test_env_smoke_runs.py. Here: every built-in env is found
and schedules its smoke profile on the CPU training queue (no training), and the whole CLI path runs on the
cheapest one (each run through it costs several times the plain training: a worker, a sandbox, and an idea
trained next to the baseline)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from ideaforge.config import Settings
from ideaforge.models import CampaignResult
from ideaforge.names import campaign_workflow_id
from ideaforge.research_envs.registry import available_envs, load_env
from ideaforge.workflows.campaign import CampaignWorkflow
from tests.harness import REPO, running_worker
from tests.mlflow_rows import campaign_runs

BUILTIN = ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"]
CHEAPEST = "tiny_gpt"  # through the CLI path: ~1/4 of the time of tiny_grpo or grpo_math on 2 loaded cores


def test_builtin_envs_are_discovered() -> None:
    assert set(BUILTIN) <= set(available_envs())


@pytest.mark.parametrize("env", BUILTIN)
def test_smoke_profile_trains_on_the_cpu_queue(env: str) -> None:
    """``--profile smoke`` must run anywhere: even a GPU env schedules its smoke run on ``cpu-train``."""
    spec = load_env(env).spec
    assert "smoke" in spec.profiles
    assert spec.resources_for("smoke").task_queue == "cpu-train"


def _start_from_cli(name: str, env: str) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "ideaforge.cli.commands", "start", "--name", name, "--env", env),
            *("--epochs", "1", "--ideas", "1", "--profile", "smoke", "--no-up"),
            cwd=REPO,
            env=dict(os.environ),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        return proc.returncode or 0, out.decode()

    return asyncio.run(go())


@pytest.mark.integration
@pytest.mark.slow
def test_env_baseline_runs_from_the_cli(
    served_settings: Settings, temporal_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = CHEAPEST
    monkeypatch.setenv("IDEAFORGE_ENV_PATH", "")  # the built-in envs, as a user sees them
    settings = served_settings.model_copy(update={"env_paths": []})
    client = temporal_env.client
    name = f"base-{env.replace('_', '')}-{uuid.uuid4().hex[:6]}"

    async def go() -> tuple[int, str, CampaignResult]:
        async with running_worker(client, settings):
            rc, out = await asyncio.to_thread(_start_from_cli, name, env)
            handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
            return rc, out, await handle.result()

    rc, out, result = asyncio.run(go())
    assert rc == 0, out
    assert f"campaign {name} completed" in out
    base = next(s for s in result.archive if s.origin == "baseline")
    spec = load_env(env).spec
    assert base.status == "ok", base.category
    lo, hi = spec.plausible_range
    assert lo <= base.metric <= hi

    # the protocol, as the product recorded it: one loss point per reported step, up to the step budget
    ml = MlflowClient(tracking_uri=settings.mlflow_uri)
    (row,) = [r for r in campaign_runs(ml, name) if r["idea_id"] == base.idea_id]
    steps = [m.step for m in ml.get_metric_history(row["run_id"], "train_loss")]
    assert steps, "training must report IDEAFORGE_PROGRESS lines with a loss"
    assert len(set(steps)) == len(steps), f"a step reported twice: {sorted(steps)}"
    budget = spec.profiles["smoke"].get("IDEAFORGE_STEPS")
    if budget is not None:  # step-budgeted envs end exactly there (the others stop on a time/token budget)
        assert max(steps) == int(budget)
