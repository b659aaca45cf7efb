"""Test helper: run a research env's prepare/train/eval commands the way PROTOCOL.md describes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ideaforge.research_envs.registry import ResearchEnv, expand_command
from ideaforge.run.model_channel import run_local_evaluation

PREFIXES = ("IDEAFORGE_PROGRESS ", "IDEAFORGE_CHECKPOINT ")


@dataclass
class EnvRun:
    """What one prepare+train+eval gave: metrics (None if eval failed) and the parsed protocol lines."""

    metrics: dict[str, float] | None
    train: subprocess.CompletedProcess
    evaluation: subprocess.CompletedProcess | None
    progress: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)


def make_workdir(env: ResearchEnv, dest: Path, files: dict[str, str] | None = None) -> Path:
    """Copy the baseline to ``dest`` and overwrite ``files`` (rel path -> content)."""
    shutil.copytree(env.baseline, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, text in (files or {}).items():
        (dest / rel).write_text(text)
    return dest


def command_env(
    env: ResearchEnv, profile: str, data: Path, out: Path, seed: int, extra: dict[str, str] | None = None
) -> dict[str, str]:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    base.update(
        IDEAFORGE_SEED=str(seed),
        IDEAFORGE_OUT=str(out),
        IDEAFORGE_DATA=str(data),
        IDEAFORGE_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        IDEAFORGE_DEVICE="cpu",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    base.update(env.spec.profiles[profile])
    base.update(extra or {})
    return base


def argv(command: list[str]) -> list[str]:
    return expand_command(command, sys.executable)


def parse_lines(stdout: str, prefix: str) -> list[dict]:
    return [json.loads(line[len(prefix) :]) for line in stdout.splitlines() if line.startswith(prefix)]


def run_env(
    env: ResearchEnv,
    root: Path,
    profile: str = "smoke",
    seed: int = 0,
    files: dict[str, str] | None = None,
    extra: dict[str, str] | None = None,
    data: Path | None = None,
    timeout: float = 600,
) -> EnvRun:
    """prepare (once per data dir), train, then eval with protected files from the pristine baseline."""
    root.mkdir(parents=True, exist_ok=True)
    work = make_workdir(env, root / "work", files)
    data = data or root / "data"
    out = root / "out"
    data.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    cenv = command_env(env, profile, data, out, seed, extra)
    # held-out data: written by prepare, read by the evaluator, never in training's environment (PROTOCOL.md)
    eval_data = {"IDEAFORGE_EVAL_DATA": str(data.parent / f"{data.name}-eval")}
    if env.spec.prepare_command and not (data / ".prepared").exists():
        subprocess.run(
            argv(env.spec.prepare_command), cwd=work, env=cenv | eval_data, check=True, timeout=timeout
        )
        (data / ".prepared").write_text("ok")
    train = subprocess.run(
        argv(env.spec.run_command), cwd=work, env=cenv, capture_output=True, text=True, timeout=timeout
    )
    result = EnvRun(
        metrics=None,
        train=train,
        evaluation=None,
        progress=parse_lines(train.stdout, PREFIXES[0]),
        checkpoints=parse_lines(train.stdout, PREFIXES[1]),
    )
    if train.returncode != 0:
        return result
    for rel in env.spec.protected_files:
        shutil.copy2(env.baseline / rel, work / rel)
    metric_file = root / "metrics.json"
    cenv = {k: v for k, v in cenv.items() if k != "IDEAFORGE_RESUME"} | eval_data | {
        "IDEAFORGE_METRIC_FILE": str(metric_file)
    }
    serve = argv(env.spec.serve_command) if env.spec.serve_command else None
    result.evaluation = run_local_evaluation(
        argv(env.spec.eval_command), serve, work, cenv, timeout=timeout, instances=env.spec.serve_instances
    )
    if result.evaluation.returncode == 0 and metric_file.is_file():
        result.metrics = json.loads(metric_file.read_text())
    return result
