"""The production path, piece by piece with the programs docker-compose.yml runs (no Docker here).

One module-scoped deployment, all at once, on loopback:
- PostgreSQL 15 (a throwaway cluster, ``postgres`` fixture), databases made by compose's ``postgres-init``;
- S3 (moto server; compose runs MinIO), the bucket made as ``minio-init`` does;
- the Temporal dev server (compose runs ``temporalio/auto-setup`` on PostgreSQL: not installable here), with
  compose's ``temporal-init`` script run against it;
- ``mlflow server`` with compose's command, environment and healthcheck: backend on PostgreSQL, artifacts
  served from the bucket;
- the ``orchestrator`` service and two ``cpu-worker`` services ("training hosts"), each a separate OS process
  with its own IDEAFORGE_HOME (work dirs, data cache), sharing nothing but Temporal and S3 over loopback.

Every command, environment and healthcheck comes from ``docker-compose config`` of the repo's compose file;
only service hostnames and in-container ports are rewritten to loopback addresses (``tests.harness.Loopback``).
Run with ``-s`` to see the timings (total, recovery after the host kill, backup/restore).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio
from mlflow.tracking import MlflowClient
from temporalio.client import Client

from ideaforge import names
from ideaforge.activities.campaign import load_archive
from ideaforge.cli import campaigns
from ideaforge.cli.procs import free_port
from ideaforge.config import Settings
from ideaforge.models import (
    CampaignConfig,
    CampaignResult,
    DeviceTime,
    Idea,
    IdeaInput,
    IdeaOutcome,
    IdeaSummary,
    ProviderConfig,
)
from ideaforge.names import idea_id
from ideaforge.research_envs.registry import load_env
from ideaforge.store.artifacts import open_store
from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow
from tests.fixtures.changed_idea_workflow import ChangedIdeaWorkflow
from tests.harness import (
    REPO,
    Loopback,
    PostgresCluster,
    compose_env_file,
    compose_services,
    pending_progress,
    spawn_service,
    wait_healthy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIXTURE_ENVS = REPO / "tests" / "fixtures" / "envs"


def _load_ops_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "ops" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_replay = _load_ops_script("check_replay")  # the rollout gate

SMOKE = REPO / "ops" / "smoke_deploy.py"
HOSTS = ("host-a", "host-b")


@dataclass
class Deployment:
    root: Path
    pg: PostgresCluster
    compose: dict
    loop: Loopback
    bucket: str
    mlflow_uri: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    started_s: float = 0.0

    def service(self, name: str) -> dict:
        return self.compose["services"][name]

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, service: str, timeout_s: float = 120, **extra_env: str) -> None:
        """Start compose ``service`` as local process ``name`` and wait for its compose healthcheck."""
        svc = self.service(service)
        argv = self.loop.argv([*(svc.get("entrypoint") or []), *svc["command"]])
        env = self.loop.env(svc, **extra_env)
        self.envs[name] = env
        self.procs[name] = spawn_service(argv, env, self.log(name))
        wait_healthy(self.loop.healthcheck(svc), env, timeout_s, self.procs[name], self.log(name))

    def kill(self, name: str) -> None:
        """kill -9 the whole 'host' (worker and its training processes)."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def smoke(self, *args: str, stdin: bool = False) -> subprocess.CompletedProcess[str]:
        """ops/smoke_deploy.py with the orchestrator's environment (as ``docker compose exec`` would)."""
        env = self.envs["orchestrator"]
        if stdin:  # the documented form: `docker compose exec -T orchestrator python - ... < ops/smoke_deploy.py`
            argv, text = [sys.executable, "-", *args], SMOKE.read_text()
        else:
            argv, text = [sys.executable, str(SMOKE), *args], None
        return subprocess.run(argv, input=text, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def deployment(postgres, s3_server, temporal_env, tmp_path_factory):
    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("deployment")
    bucket = f"deploy-{uuid.uuid4().hex[:8]}"
    mlflow_port = free_port()
    temporal = temporal_env.ideaforge_address
    env_file = compose_env_file(
        root / ".env",
        POSTGRES_USER=postgres.user,
        POSTGRES_PASSWORD=postgres.password,
        MINIO_ROOT_USER=os.environ["AWS_ACCESS_KEY_ID"],
        MINIO_ROOT_PASSWORD=os.environ["AWS_SECRET_ACCESS_KEY"],
        IDEAFORGE_BUCKET=bucket,
        MLFLOW_WORKERS="1",  # memory: 2 processes instead of 3 on a shared machine
        IDEAFORGE_CPU_TRAIN_SLOTS="1",
        # the workers' addresses are set the way a worker on another host sets them (.env.example)
        IDEAFORGE_TEMPORAL_ADDRESS=temporal,
        IDEAFORGE_MLFLOW_URI=f"http://127.0.0.1:{mlflow_port}",
        IDEAFORGE_S3_ENDPOINT=s3_server,
    )
    compose = compose_services(env_file)
    loop = Loopback(
        {
            "postgres:5432": f"127.0.0.1:{postgres.port}",
            "http://minio:9000": f"http://{s3_server}",
            "temporal:7233": temporal,
            "--host 0.0.0.0 --port 5000": f"--host 127.0.0.1 --port {mlflow_port}",
            "127.0.0.1:5000": f"127.0.0.1:{mlflow_port}",
        }
    )
    d = Deployment(root, postgres, compose, loop, bucket, f"http://127.0.0.1:{mlflow_port}")
    # postgres: the image runs the init script on a fresh volume
    postgres.psql(compose["configs"]["postgres-init"]["content"])
    # minio-init: the bucket (mc is not installable here; the minio client does the same `mb`)
    Minio(s3_server, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], secure=False).make_bucket(
        bucket
    )
    # temporal-init: search attributes + retention, against the dev server (idempotent script)
    init = d.service("temporal-init")
    r = subprocess.run(
        loop.argv([*init["entrypoint"], *init["command"]]),
        env=loop.env(init),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"temporal-init failed: {r.stdout}{r.stderr}"
    try:
        d.start("mlflow", "mlflow", timeout_s=180)
        d.start(
            "orchestrator",
            "orchestrator",
            IDEAFORGE_HOME=str(root / "orchestrator"),
            IDEAFORGE_ENV_PATH=str(FIXTURE_ENVS),
        )
        for host in HOSTS:
            d.start(host, "cpu-worker", IDEAFORGE_HOME=str(root / host), IDEAFORGE_ENV_PATH=str(FIXTURE_ENVS))
            # the compose healthcheck greps the container hostname, which all our 'hosts' share: also wait
            # for this very process to poll
            asyncio.run(_wait_polling(temporal_env.client, "cpu-train", d.procs[host].pid))
        d.started_s = time.monotonic() - t0
        yield d
    finally:
        for name in reversed(list(d.procs)):
            d.stop(name)


async def _wait_polling(client: Client, queue: str, pid: int, timeout_s: float = 60) -> None:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    req = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    for _ in range(int(timeout_s / 0.5)):
        resp = await client.workflow_service.describe_task_queue(req)
        if any(_worker_pid(p.identity) == pid for p in resp.pollers):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"worker {pid} never polled {queue}")


def _worker_pid(identity: str) -> int | None:
    m = re.search(r":(\d+)(?:\s|$)", identity or "")  # "ideaforge@host:PID", training workers add " slots=N"
    return int(m.group(1)) if m else None


async def _training_idea(client: Client, campaign: str, min_step: int, timeout_s: float = 180):
    """(idea workflow id, pending activity, its progress) of an idea of ``campaign`` that heartbeated a checkpoint >= min_step."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        async for wf in client.list_workflows("WorkflowType = 'IdeaWorkflow' AND ExecutionStatus = 'Running'"):
            try:
                if names.parse_idea_id(wf.id).campaign != campaign:
                    continue
            except ValueError:
                continue
            p = await pending_progress(client, wf.id)
            if p is not None and (p.checkpoint_step or 0) >= min_step:
                desc = await client.get_workflow_handle(wf.id).describe()
                (pa,) = [a for a in desc.raw_description.pending_activities if a.heartbeat_details.payloads]
                return wf.id, pa, p
        await asyncio.sleep(0.3)
    raise AssertionError(f"no idea of {campaign} reached a checkpoint at step {min_step} in {timeout_s}s")


async def _pending_attempt(client: Client, workflow_id: str):
    desc = await client.get_workflow_handle(workflow_id).describe()
    for pa in desc.raw_description.pending_activities:
        if pa.activity_type.name == "run_experiment":
            return pa
    return None


def _baseline_input(campaign: str) -> IdeaInput:
    """The baseline of toy_quad under the ``fault`` profile (40 slow steps, checkpoints every 5, 3 s heartbeat)."""
    idea = Idea(idea_id=idea_id(campaign, 0, 0), epoch=0, index=0, title="baseline", text="baseline", origin="baseline")
    spec = load_env("toy_quad", [FIXTURE_ENVS]).spec
    return IdeaInput(campaign=campaign, spec=spec, idea=idea, profile="fault", implementer=ProviderConfig(),
                     experiment=names.experiment_name(campaign))  # fmt: skip


def _check_recorded(d: Deployment, campaign: str, summaries: list[IdeaSummary]) -> int:
    """Every idea has exactly one MLflow run (PostgreSQL) whose diff and log come back through the MLflow
    artifact proxy from the bucket (byte-equal to ideaforge's own S3 copy), and a curve. Returns the run count."""
    ml = MlflowClient(d.mlflow_uri)
    exp = ml.get_experiment_by_name(names.experiment_name(campaign))
    runs = [r for r in ml.search_runs([exp.experiment_id], max_results=1000) if "ideaforge.idea_id" in r.data.tags]
    per_idea = Counter(r.data.tags["ideaforge.idea_id"] for r in runs)
    assert per_idea == Counter({s.idea_id: 1 for s in summaries}), per_idea
    s3_endpoint = d.envs["orchestrator"]["IDEAFORGE_S3_ENDPOINT"]
    store = open_store(Settings(home=d.root, artifact_uri=f"s3://{d.bucket}/ideaforge", s3_endpoint=s3_endpoint))
    s3 = Minio(s3_endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], secure=False)
    # MLflow's artifacts live under <IDEAFORGE_ARTIFACT_URI>/mlflow, as in the embedded stack
    in_bucket = [o.object_name for o in s3.list_objects(d.bucket, prefix="ideaforge/mlflow/", recursive=True)]
    by_id = {r.data.tags["ideaforge.idea_id"]: r for r in runs}
    for s in summaries:
        run = by_id[s.idea_id]
        rid = run.info.run_id
        dst = str(d.root / "downloads" / rid)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        log = Path(ml.download_artifacts(rid, "train.log", dst)).read_text()
        # an idea resumed on another host starts with what the killed attempt trained up to its checkpoint
        earlier = "===== train, earlier attempts up to the checkpoint =====\n"
        assert log.startswith(("===== train =====\n", earlier)) and "===== train =====\n" in log, log[:300]
        assert any(rid in k and k.endswith("/train.log") for k in in_bucket), f"train.log of {rid} not in the bucket"
        if s.diff is not None:
            diff = Path(ml.download_artifacts(rid, "patch.diff", dst)).read_bytes()
            assert diff == store.get_bytes(s.diff)
        if s.status == "ok":
            curve = [k for k in run.data.metrics if len(ml.get_metric_history(rid, k)) > 1]
            assert curve, f"{s.idea_id}: no metric with a curve in MLflow"
    n = int(d.pg.psql(f"SELECT count(*) FROM runs WHERE experiment_id = {int(exp.experiment_id)}", db="mlflow"))
    assert n >= len(runs), "the runs MLflow lists are not in PostgreSQL"
    return len(runs)


def test_campaign_then_a_training_host_kill_on_the_deployment(deployment: Deployment, temporal_env) -> None:
    d = deployment
    client = temporal_env.client
    name = f"deploy-{uuid.uuid4().hex[:6]}"
    cfg = CampaignConfig(name=name, env="toy_quad", epochs=1, ideas_per_epoch=3, seed=1)
    pids = {d.procs[h].pid: h for h in HOSTS}

    # every service answers and both training hosts poll cpu-train (the smoke script a user runs)
    smoke = d.smoke("--queue", "cpu-train=2")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke: 8/8 ok" in smoke.stdout, smoke.stdout
    # the documented `python - < ops/smoke_deploy.py` form; a queue nobody polls is reported and fails it
    smoke = d.smoke("--queue", "gpu-h100", stdin=True)
    assert smoke.returncode == 1, smoke.stdout + smoke.stderr
    assert "FAIL queue gpu-h100: 0 poller(s) (need 1)" in smoke.stdout, smoke.stdout
    assert "smoke: 7/8 ok; failed: queue gpu-h100" in smoke.stdout, smoke.stdout

    async def campaign() -> tuple[CampaignResult, float]:
        t0 = time.monotonic()
        handle, what = await campaigns.start(client, cfg)
        assert what == "started"
        return await asyncio.wait_for(handle.result(), 600), time.monotonic() - t0

    async def host_kill(inp: IdeaInput) -> tuple[IdeaOutcome, str, str, float, float, DeviceTime]:
        await client.start_workflow(IdeaWorkflow.run, inp, id=inp.idea.idea_id, task_queue=names.ORCHESTRATOR_QUEUE)
        wf_id, pa, progress = await _training_idea(client, inp.campaign, min_step=10)
        # the checkpoint the other host will resume from is an object in the bucket, not a local file
        assert progress.checkpoint is not None
        assert progress.checkpoint.uri.startswith(f"s3://{d.bucket}/ideaforge/"), progress.checkpoint.uri
        victim = pids.get(_worker_pid(pa.last_worker_identity))
        assert victim is not None, f"training ran on no known host: {pa.last_worker_identity}"
        survivor = next(h for h in HOSTS if h != victim)
        killed = time.monotonic()
        d.kill(victim)
        resumed_s = None
        while resumed_s is None and time.monotonic() - killed < 180:
            cur = await _pending_attempt(client, wf_id)
            if cur is None:  # finished before we looked: it restarted and ran to the end
                resumed_s = time.monotonic() - killed
            elif cur.attempt > pa.attempt and pids.get(_worker_pid(cur.last_worker_identity)) == survivor:
                resumed_s = time.monotonic() - killed
            await asyncio.sleep(0.2)
        assert resumed_s is not None, "the experiment never restarted on the surviving host"
        outcome = await asyncio.wait_for(
            client.get_workflow_handle(wf_id, result_type=IdeaOutcome).result(), 300
        )
        return outcome, victim, survivor, resumed_s, time.monotonic() - killed, progress.device_time

    # 1. a campaign runs to the end on the deployment
    result, campaign_s = asyncio.run(campaign())
    # result.archive is the bounded population: every idea is in the store, read back digest-verified
    s3_endpoint = d.envs["orchestrator"]["IDEAFORGE_S3_ENDPOINT"]
    store = open_store(Settings(home=d.root, artifact_uri=f"s3://{d.bucket}/ideaforge", s3_endpoint=s3_endpoint))
    archive = load_archive(store, result.archive_ref)
    assert result.epochs_completed == 1 and len(archive) == result.ideas_done == 1 + cfg.ideas_per_epoch
    assert result.baseline_metric is not None
    n_runs = _check_recorded(d, name, archive)
    # the rollout gate (ops/check_replay.py): this code replays the campaign's histories; a changed
    # IdeaWorkflow does not
    query = f"WorkflowId STARTS_WITH 'campaign-{name}'"
    gate = subprocess.run(
        [sys.executable, str(REPO / "ops" / "check_replay.py"), "--query", query],
        env=d.envs["orchestrator"], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert f"replay: {len(archive) + 1}/{len(archive) + 1} histories" in gate.stdout, gate.stdout
    n, failures = asyncio.run(check_replay.check(
        Settings(home=d.root, temporal_address=d.envs["orchestrator"]["IDEAFORGE_TEMPORAL_ADDRESS"]), query, 100,
        workflows=[CampaignWorkflow, ChangedIdeaWorkflow],
    ))  # fmt: skip
    assert n == len(archive) + 1 and len(failures) == len(archive), failures

    # 2. a training host is kill -9ed mid-run; the experiment resumes on the other host from the S3 checkpoint
    inp = _baseline_input(f"{name}-kill")
    outcome, victim, survivor, resumed_s, done_s, seen = asyncio.run(host_kill(inp))
    assert outcome.summary.status == "ok", outcome.error
    assert outcome.run is not None and outcome.run.resumed_from_step is not None
    assert outcome.run.resumed_from_step >= 10
    # the survivor read the killed attempt's curve from S3: the result covers the run from step 1
    assert outcome.run.curve[0].step == 1 and outcome.run.curve[-1].step > outcome.run.resumed_from_step
    # device time: the killed attempt counts up to its last heartbeat (at least what we saw before the kill),
    # the attempt on the survivor on top of it
    spent = outcome.run.device_time
    assert seen.attempts >= 1 and seen.cpu_slot_seconds > 0, seen
    assert spent.attempts >= seen.attempts + 1 and outcome.summary.device_time == spent
    last = outcome.run.finished_at - outcome.run.started_at
    assert spent.cpu_slot_seconds >= seen.cpu_slot_seconds + last - 0.5, (spent, seen, last)
    _check_recorded(d, inp.campaign, [outcome.summary])
    # the hosts shared nothing: each prepared its own data cache and trained in its own work dir
    for host in HOSTS:
        assert (d.root / host / "data" / "toy_quad").is_dir(), f"{host} has no data cache of its own"
        assert (d.root / host / "work").is_dir(), f"{host} never trained"
    assert not (d.root / "orchestrator" / "work").exists(), "the orchestrator trained"
    print(
        f"\ndeployment: services up in {d.started_s:.1f}s; campaign of {len(archive)} ideas"
        f" ({n_runs} MLflow idea runs) in {campaign_s:.1f}s;"
        f" kill -9 {victim} mid-run: attempt restarted on {survivor} {resumed_s:.1f}s after the kill,"
        f" idea finished {done_s:.1f}s after the kill (resumed from step {outcome.run.resumed_from_step});"
        f" device time {spent.cpu_slot_seconds:.1f} slot-s over {spent.attempts} attempts"
        f" ({seen.cpu_slot_seconds:.1f} slot-s heartbeated by the killed attempt when we looked)"
    )


def _pg(d: Deployment, tool: str, *args: str, stdin=None, stdout=None) -> None:
    """A PostgreSQL client program as ``docker compose exec -T postgres <tool> -U $POSTGRES_USER ...`` runs it."""
    r = subprocess.run(
        [d.pg.bin(tool), "-U", d.pg.user, *args], env=d.pg.env, stdin=stdin, stdout=stdout,
        stderr=subprocess.PIPE, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, f"{tool} {args}: {r.stderr.decode()}"


def _all_runs(ml: MlflowClient) -> dict[str, str]:
    """run id -> status of every run of every experiment."""
    exps = [e.experiment_id for e in ml.search_experiments()]
    return {r.info.run_id: r.info.status for r in ml.search_runs(exps, max_results=5000)}


def test_postgres_backup_and_restore_brings_the_mlflow_runs_back(deployment: Deployment) -> None:
    """ops/DEPLOY.md "Back up and restore PostgreSQL": stop MLflow, pg_dump -Fc, lose the database, createdb,
    pg_restore from stdin, start MLflow: the same runs, and their artifacts still come back from the bucket."""
    d = deployment
    ml = MlflowClient(d.mlflow_uri)
    exp = ml.create_experiment(f"backup-{uuid.uuid4().hex[:6]}")
    run = ml.create_run(exp)
    ml.log_metric(run.info.run_id, "loss", 1.5, step=1)
    ml.log_text(run.info.run_id, "recorded before the backup\n", "note.txt")
    ml.set_terminated(run.info.run_id)
    before = _all_runs(ml)
    dump = d.root / "mlflow.dump"
    t0 = time.monotonic()
    d.stop("mlflow")  # docker compose stop mlflow (no connection may hold the database)
    with dump.open("wb") as out:
        _pg(d, "pg_dump", "-Fc", "mlflow", stdout=out)
    dumped_s = time.monotonic() - t0
    down = d.smoke()  # while MLflow is stopped, the smoke check says so
    assert down.returncode == 1 and "FAIL mlflow health" in down.stdout, down.stdout
    _pg(d, "dropdb", "mlflow")  # the disaster
    assert "mlflow" not in d.pg.psql("SELECT datname FROM pg_database").split()
    t1 = time.monotonic()
    _pg(d, "createdb", "mlflow")
    with dump.open("rb") as inp:
        _pg(d, "pg_restore", "--exit-on-error", "--no-owner", "-d", "mlflow", stdin=inp)
    d.start("mlflow", "mlflow", timeout_s=180)
    restored_s = time.monotonic() - t1
    after = _all_runs(ml)
    print(
        f"\npg backup: {len(before)} runs, dump {dump.stat().st_size / 1024:.0f} KiB in {dumped_s:.1f}s"
        f" (incl. stopping MLflow); restore + MLflow back up in {restored_s:.1f}s"
    )
    assert after == before
    assert ml.get_metric_history(run.info.run_id, "loss")[0].value == 1.5
    note = Path(ml.download_artifacts(run.info.run_id, "note.txt", str(d.root / "restored")))
    assert note.read_text() == "recorded before the backup\n"
