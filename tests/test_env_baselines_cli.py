"""Every research env runs its baseline from the CLI (smoke profile: the GPU envs' same code path on CPU)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from ideaforge.research_envs.registry import available_envs, load_env
from ideaforge.workflows.campaign import CampaignWorkflow

from ideaforge.config import Settings
from ideaforge.models import CampaignResult
from ideaforge.names import campaign_workflow_id
from tests.harness import REPO, running_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUILTIN = ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"]


def test_builtin_envs_are_discovered() -> None:
    assert set(BUILTIN) <= set(available_envs())


@pytest.mark.parametrize("env", BUILTIN)
def test_env_baseline_runs_from_the_cli(
    env: str, served_settings: Settings, temporal_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDEAFORGE_ENV_PATH", "")  # the built-in envs, as a user sees them
    settings = served_settings.model_copy(update={"env_paths": []})
    client = temporal_env.client
    name = f"base-{env.replace('_', '')}-{uuid.uuid4().hex[:6]}"

    async def go() -> tuple[int, str, CampaignResult]:
        async with running_worker(client, settings):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ideaforge.cli.commands",
                "start",
                "--name",
                name,
                "--env",
                env,
                "--epochs",
                "1",
                "--ideas",
                "1",
                "--profile",
                "smoke",
                "--no-up",
                cwd=REPO,
                env=dict(os.environ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 600)
            result = await client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name)).result()
            return proc.returncode, out.decode(), result

    rc, out, result = asyncio.run(go())
    assert rc == 0, out
    assert f"campaign {name} completed" in out
    base = next(s for s in result.archive if s.origin == "baseline")
    spec = load_env(env).spec
    assert base.status == "ok", base.category
    lo, hi = spec.plausible_range
    assert lo <= base.metric <= hi
