"""Smoke check of a deployed ideaforge stack: does every service answer, does every worker poll its queue?

Run it after ``docker compose up`` inside a worker container, where the addresses and keys already are:

    docker compose exec -T orchestrator python - < ops/smoke_deploy.py
    docker compose exec -T orchestrator python - --queue cpu-train --queue gpu-h100=2 < ops/smoke_deploy.py

or on any machine with ideaforge installed and the ``IDEAFORGE_*``/``AWS_*`` variables of a worker set:
``python ops/smoke_deploy.py [--queue NAME[=MIN_POLLERS]]...``. It checks

- Temporal: the frontend's health service answers SERVING (namespace ``IDEAFORGE_TEMPORAL_NAMESPACE``);
- MLflow: ``/health``, a search in the backend store (PostgreSQL), a listing of the served artifact root
  (MLflow -> MinIO);
- S3/MinIO: the artifact bucket of ``IDEAFORGE_ARTIFACT_URI`` exists and answers;
- workers: each queue (default ``orchestrator`` for workflows, ``cpu`` for activities, plus every
  ``--queue``) has at least MIN_POLLERS (default 1) pollers seen in the last ``--recent`` seconds.

Prints one line per check and exits 1 when any fails. Standard library plus ideaforge's own dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from ideaforge.config import Settings

WORKFLOW_QUEUES = {"orchestrator"}  # queues polled by workflow workers; all others by activity workers


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _http_json(url: str, timeout_s: float) -> object:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        body = r.read().decode()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def check_mlflow(uri: str, timeout_s: float) -> list[Check]:
    base = uri.rstrip("/")
    out = []
    for name, path in (
        ("mlflow health", "/health"),
        ("mlflow backend store", "/api/2.0/mlflow/experiments/search?max_results=1"),
        ("mlflow artifact proxy", "/api/2.0/mlflow-artifacts/artifacts"),
    ):
        try:
            body = _http_json(base + path, timeout_s)
            out.append(Check(name, True, f"{base}{path}"))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            body = getattr(e, "read", lambda: b"")()
            detail = body.decode(errors="replace")[:300] if isinstance(body, bytes) else ""
            out.append(Check(name, False, f"{base}{path}: {e} {detail}".strip()))
    return out


def check_s3(settings: Settings) -> Check:
    from ideaforge.store.artifacts import StorageError, open_store

    try:
        store = open_store(settings)
        return Check("artifact store", True, getattr(store, "root", settings.artifact_root))
    except StorageError as e:
        return Check("artifact store", False, str(e))


async def check_temporal(settings: Settings, queues: dict[str, int], recent_s: float) -> list[Check]:
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    try:
        client = await asyncio.wait_for(
            Client.connect(settings.temporal_address, namespace=settings.temporal_namespace), 15
        )
        serving = await client.service_client.check_health()
    except Exception as e:  # any connection failure is the finding
        return [Check("temporal", False, f"{settings.temporal_address}: {e}")]
    out = [Check("temporal", serving, f"{settings.temporal_address} namespace {settings.temporal_namespace}")]
    now = time.time()
    for queue, need in queues.items():
        kind = (
            TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
            if queue in WORKFLOW_QUEUES
            else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        )
        try:
            resp = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=kind,
                )
            )
        except Exception as e:
            out.append(Check(f"queue {queue}", False, str(e)))
            continue
        live = [
            p.identity
            for p in resp.pollers
            if p.HasField("last_access_time") and now - p.last_access_time.ToSeconds() <= recent_s
        ]
        out.append(
            Check(
                f"queue {queue}",
                len(live) >= need,
                f"{len(live)} poller(s) (need {need}): {', '.join(sorted(live)) or 'none'}",
            )
        )
    return out


def parse_queues(specs: list[str]) -> dict[str, int]:
    """``NAME`` or ``NAME=MIN_POLLERS`` -> {name: min}; the defaults come first."""
    queues = {"orchestrator": 1, "cpu": 1}
    for spec in specs:
        name, _, n = spec.partition("=")
        if not name or (n and not n.isdigit()):
            raise SystemExit(f"bad --queue {spec!r}: use NAME or NAME=MIN_POLLERS")
        queues[name] = int(n) if n else 1
    return queues


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", action="append", default=[], help="NAME[=MIN_POLLERS]; repeatable")
    p.add_argument("--recent", type=float, default=90.0, help="a poller counts if seen this many seconds ago")
    p.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout per check, seconds")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    checks = [
        *asyncio.run(check_temporal(settings, parse_queues(args.queue), args.recent)),
        *check_mlflow(settings.mlflow_uri, args.timeout),
        check_s3(settings),
    ]
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    failed = [c.name for c in checks if not c.ok]
    print(f"smoke: {len(checks) - len(failed)}/{len(checks)} ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    code = run(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # temporalio can crash at interpreter exit in short processes (sdk-python#300)
