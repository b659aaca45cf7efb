"""Faults for real: kill -9 a training worker, SIGTERM it, kill the Temporal server, stop MLflow, kill the CLI.

Each test prints the time it took to recover (``pytest -s`` shows it); the figures go in the issue note.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from temporalio.client import WorkflowExecutionStatus

from ideaforge import names
from ideaforge.cli import campaigns, stack
from ideaforge.cli.procs import free_port
from ideaforge.config import Settings
from ideaforge.models import CampaignConfig, Idea, IdeaInput, IdeaOutcome, ProviderConfig
from ideaforge.names import campaign_workflow_id, experiment_name, idea_id
from ideaforge.research_envs.registry import load_env
from ideaforge.workers.main import connect
from ideaforge.workflows.idea import IdeaWorkflow
from tests.harness import REPO, processes_under, running_worker, spawn_worker, wait_for_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTROL = [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, names.PREFLIGHT_QUEUE]  # training runs in a subprocess


def _baseline_idea_input(settings: Settings, campaign: str, profile: str = "fault") -> IdeaInput:
    spec = load_env("toy_quad", settings.env_paths).spec
    idea = Idea(
        idea_id=idea_id(campaign, 0, 0),
        epoch=0,
        index=0,
        title="baseline",
        text="baseline",
        origin="baseline",
    )
    return IdeaInput(
        campaign=campaign,
        spec=spec,
        idea=idea,
        profile=profile,
        implementer=ProviderConfig(),
        experiment=experiment_name(campaign),
    )


def _stop(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _idea_run_count(mlflow_uri: str, campaign: str) -> int:
    ml = MlflowClient(mlflow_uri)
    exp = ml.get_experiment_by_name(experiment_name(campaign))
    return sum("ideaforge.idea_id" in r.data.tags for r in ml.search_runs([exp.experiment_id]))


async def _interrupt_training_worker(
    client, settings: Settings, tmp_path: Path, inp: IdeaInput, signum: int
) -> tuple[IdeaOutcome, float, float, list[int]]:
    """Run ``inp`` on a worker subprocess, send it ``signum`` after a checkpoint, finish on a fresh worker.

    Returns (outcome, seconds until the worker exited, seconds from the signal to the idea's end, training
    processes left under the work dir once the worker was gone).
    """
    async with running_worker(client, settings, CONTROL):
        w1 = spawn_worker(tmp_path / "w1.log")
        try:
            handle = await client.start_workflow(
                IdeaWorkflow.run, inp, id=inp.idea.idea_id, task_queue=names.ORCHESTRATOR_QUEUE
            )
            await wait_for_checkpoint(client, handle.id, 10)
            t0 = time.monotonic()
            os.kill(w1.pid, signum)  # the worker only: its training must stop with it
            await asyncio.to_thread(w1.wait, 60)
            exit_s = time.monotonic() - t0
            await asyncio.sleep(1.0)
            orphans = processes_under(settings.home / "work")
            w2 = spawn_worker(tmp_path / "w2.log")
            try:
                outcome = await asyncio.wait_for(handle.result(), 180)
            finally:
                _stop(w2)
            return outcome, exit_s, time.monotonic() - t0, orphans
        finally:
            _stop(w1)


def test_kill9_training_worker_resumes_from_checkpoint_on_a_new_worker(
    served_settings: Settings, temporal_env, tmp_path: Path
) -> None:
    campaign = f"kill9-{uuid.uuid4().hex[:6]}"
    inp = _baseline_idea_input(served_settings, campaign)
    outcome, _, recovery_s, orphans = asyncio.run(
        _interrupt_training_worker(temporal_env.client, served_settings, tmp_path, inp, signal.SIGKILL)
    )
    print(f"\nkill -9 training worker: idea finished {recovery_s:.1f}s after the kill")
    assert orphans == [], f"training processes survived their worker: {orphans}"
    assert outcome.summary.status == "ok", outcome.error
    assert outcome.run.resumed_from_step is not None and outcome.run.resumed_from_step >= 10
    assert _idea_run_count(served_settings.mlflow_uri, campaign) == 1
    _both_attempts_counted(outcome)


def test_sigterm_hands_running_experiment_back_and_it_resumes(
    served_settings: Settings, temporal_env, tmp_path: Path
) -> None:
    campaign = f"term-{uuid.uuid4().hex[:6]}"
    inp = _baseline_idea_input(served_settings, campaign)
    outcome, exit_s, recovery_s, orphans = asyncio.run(
        _interrupt_training_worker(temporal_env.client, served_settings, tmp_path, inp, signal.SIGTERM)
    )
    print(
        f"\nSIGTERM training worker: exited in {exit_s:.1f}s, idea finished {recovery_s:.1f}s after the signal"
    )
    assert exit_s < 30
    assert orphans == []
    assert outcome.summary.status == "ok", outcome.error
    assert outcome.run.resumed_from_step is not None and outcome.run.resumed_from_step >= 10
    _both_attempts_counted(outcome)


def _both_attempts_counted(outcome: IdeaOutcome) -> None:
    """The interrupted attempt's slot-seconds (up to its last heartbeat) are summed with the second one's."""
    spent, run = outcome.summary.device_time, outcome.run
    assert spent == run.device_time and spent.attempts == 2 and spent.gpu_seconds == 0, spent
    assert spent.cpu_slot_seconds > run.finished_at - run.started_at + 1.0, (spent, run.finished_at - run.started_at)


def test_campaign_survives_a_temporal_server_kill_and_restart(
    settings: Settings, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings.model_copy(update={"mlflow_uri": mlflow_server})
    monkeypatch.setenv("IDEAFORGE_MLFLOW_URI", mlflow_server)
    name = f"tkill-{uuid.uuid4().hex[:6]}"
    cfg = CampaignConfig(name=name, env="toy_quad", epochs=2, ideas_per_epoch=2, profile="slow")
    stack.start_temporal(s, timeout_s=60)
    try:

        async def go() -> tuple[str, float]:
            client = await connect(s)
            async with running_worker(client, s):
                handle, _ = await campaigns.start(client, cfg)
                for _ in range(300):
                    st = (await campaigns.status(client, name)).live
                    if st and st.ideas_running:
                        break
                    await asyncio.sleep(0.1)
                pid = json.loads((s.home / "run" / "temporal.pid").read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                await asyncio.sleep(3)
                await asyncio.to_thread(stack.start_temporal, s, 60)
                result = await asyncio.wait_for(handle.result(), 300)
                return f"{result.epochs_completed}/{result.ideas_done}", time.monotonic() - killed

        summary, recovery_s = asyncio.run(go())
    finally:
        stack.down(s)
    print(f"\nTemporal server kill -9 + restart after 3s: campaign finished {recovery_s:.1f}s after the kill")
    assert summary == "2/5"
    assert _idea_run_count(mlflow_server, name) == 5


def test_mlflow_outage_is_retried_and_nothing_is_lost(
    served_settings: Settings, temporal_env, tmp_path: Path
) -> None:
    ml = Settings(
        home=tmp_path / "ml",
        temporal_address=f"127.0.0.1:{free_port()}",
        mlflow_uri=f"http://127.0.0.1:{free_port()}",
    )
    s = served_settings.model_copy(update={"mlflow_uri": ml.mlflow_uri})
    name = f"mldown-{uuid.uuid4().hex[:6]}"
    cfg = CampaignConfig(name=name, env="toy_quad", epochs=1, ideas_per_epoch=3, profile="slow")
    stack.start_mlflow(ml, timeout_s=120)
    try:

        async def go():
            client = temporal_env.client
            async with running_worker(client, s):
                handle, _ = await campaigns.start(client, cfg)
                for _ in range(300):
                    st = (await campaigns.status(client, name)).live
                    if st and st.ideas_running:
                        break
                    await asyncio.sleep(0.1)
                stopped = stack.down(ml)
                assert stopped, "MLflow was not stopped"
                await asyncio.sleep(8)  # ideas finish while MLflow is down; recording keeps retrying
                t0 = time.monotonic()
                await asyncio.to_thread(stack.start_mlflow, ml, 120)
                back = time.monotonic()
                result = await asyncio.wait_for(handle.result(), 300)
                return result, time.monotonic() - back, back - t0

        result, drain_s, restart_s = asyncio.run(go())
        runs = _idea_run_count(ml.mlflow_uri, name)
    finally:
        stack.down(ml)
    print(
        f"\nMLflow down 8s: server restart {restart_s:.1f}s, campaign done {drain_s:.1f}s after it was back"
    )
    assert result.ideas_done == 4  # result.archive is the bounded population; the store has every idea
    assert runs == 4, "every idea recorded exactly once"


def test_killing_the_cli_leaves_the_campaign_running_and_status_reattaches(
    served_settings: Settings, temporal_env
) -> None:
    client = temporal_env.client
    name = f"cli-{uuid.uuid4().hex[:6]}"
    cli = [sys.executable, "-m", "ideaforge.cli.commands"]

    async def go() -> tuple[str, str]:
        async with running_worker(client, served_settings):
            proc = await asyncio.create_subprocess_exec(
                *cli,
                "start",
                "--name",
                name,
                "--env",
                "toy_quad",
                "--epochs",
                "2",
                "--ideas",
                "2",
                "--profile",
                "slow",
                "--no-up",
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ),
            )
            seen = b""
            while b"started" not in seen:
                line = await asyncio.wait_for(proc.stdout.readline(), 120)
                assert line, f"CLI ended early: {seen.decode()}"
                seen += line
            proc.kill()
            await proc.wait()
            desc = await client.get_workflow_handle(campaign_workflow_id(name)).describe()
            assert desc.status == WorkflowExecutionStatus.RUNNING
            status = await asyncio.create_subprocess_exec(
                *cli,
                "status",
                name,
                "--follow",
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ),
            )
            out, _ = await asyncio.wait_for(status.communicate(), 300)
            assert status.returncode == 0, out.decode()
            final = await client.get_workflow_handle(campaign_workflow_id(name)).describe()
            return out.decode(), final.status.name

    out, final = asyncio.run(go())
    assert final == "COMPLETED"
    assert f"campaign {name} completed" in out
    assert "leaderboard" in out


def test_supervised_worker_killed_is_restarted_and_nothing_is_lost(settings: Settings) -> None:
    """`ideaforge up` (supervisor + servers + worker), a campaign mid-training, kill -9 of the worker: the
    supervisor restarts it with no user action, the campaign completes, one MLflow run per idea."""
    name = f"supkill-{uuid.uuid4().hex[:6]}"
    cfg = CampaignConfig(name=name, env="toy_quad", epochs=1, ideas_per_epoch=2, profile="fault")
    stack.up(settings, with_worker=True, timeout_s=120)
    try:

        async def go() -> tuple[str, float, float]:
            client = await connect(settings)
            handle, _ = await campaigns.start(client, cfg)
            for _ in range(600):  # the baseline's idea workflow starts once the epoch is ideated
                if [w async for w in client.list_workflows(f"WorkflowId='{idea_id(name, 0, 0)}'")]:
                    break
                await asyncio.sleep(0.2)
            await wait_for_checkpoint(client, idea_id(name, 0, 0), min_step=5)
            old = stack.owned(settings, stack.WORKER)
            assert old is not None
            os.kill(old.pid, signal.SIGKILL)
            killed = time.monotonic()
            while (new := stack.owned(settings, stack.WORKER)) is None or new.pid == old.pid:
                assert time.monotonic() - killed < 30, "the supervisor did not restart the worker"
                await asyncio.sleep(0.1)
            back = time.monotonic() - killed
            result = await asyncio.wait_for(handle.result(), 300)
            return f"{result.epochs_completed}/{result.ideas_done}", back, time.monotonic() - killed

        summary, back_s, done_s = asyncio.run(go())
        runs = _idea_run_count(settings.mlflow_uri, name)  # while the stack's MLflow still runs
    finally:
        stack.down(settings)
    print(f"\nsupervised worker kill -9: new worker process {back_s:.1f}s after the kill, campaign done {done_s:.1f}s after")
    assert summary == "1/3"  # baseline + 2 ideas, none lost
    assert runs == 3
    log = (settings.home / "logs" / "supervisor.log").read_text()
    assert "worker died" in log and "worker restarted (restart #1)" in log


def test_a_cancel_pending_when_the_training_worker_dies_ends_the_idea_canceled(
    served_settings: Settings, temporal_env, tmp_path: Path
) -> None:
    """The worker dies (kill -9) with the idea's training running, then the idea is cancelled: the cancel can
    never reach that worker, the attempt times out on its heartbeat, and the idea still ends CANCELED (not
    FAILED), without another attempt."""
    from temporalio.client import WorkflowFailureError

    campaign = f"cxdie-{uuid.uuid4().hex[:6]}"
    inp = _baseline_idea_input(served_settings, campaign)

    async def scenario() -> tuple[WorkflowExecutionStatus, float, BaseException]:
        client = temporal_env.client
        async with running_worker(client, served_settings, CONTROL):
            w1 = spawn_worker(tmp_path / "w1.log")
            try:
                handle = await client.start_workflow(
                    IdeaWorkflow.run, inp, id=inp.idea.idea_id, task_queue=names.ORCHESTRATOR_QUEUE
                )
                await wait_for_checkpoint(client, handle.id, 5)
                os.killpg(w1.pid, signal.SIGKILL)
                await asyncio.to_thread(w1.wait, 60)
                t0 = time.monotonic()
                await handle.cancel()
                with pytest.raises(WorkflowFailureError) as failure:
                    await asyncio.wait_for(handle.result(), 120)
                return (await handle.describe()).status, time.monotonic() - t0, failure.value.cause
            finally:
                _stop(w1)

    status, seconds, cause = asyncio.run(scenario())
    print(f"\ncancel pending on a dead worker: the idea ended {seconds:.1f}s after the cancel")
    assert status == WorkflowExecutionStatus.CANCELED, cause
