"""PROTECTED. Paths, device, budget, the r1_zero prompt and the MATH problems of grpo_math.

Training problems: $IDEAFORGE_DATA/math_train.jsonl; validation (MATH-500): only in the evaluation data dir
(eval_data_dir()/math500.jsonl); the initial policy: $IDEAFORGE_DATA/policy-init/ (all written by prepare.py).
Rows are {"problem": str, "answer": str}.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT_FILE = HERE / "r1_zero.prompt"


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    return Path(value)


def data_dir() -> Path:
    return env_path("IDEAFORGE_DATA")


def eval_data_dir() -> Path:
    """$IDEAFORGE_EVAL_DATA, or $IDEAFORGE_DATA/eval when the runner has no separate evaluation data dir."""
    value = os.environ.get("IDEAFORGE_EVAL_DATA")
    return Path(value) if value else data_dir() / "eval"


def out_dir() -> Path:
    path = env_path("IDEAFORGE_OUT")
    path.mkdir(parents=True, exist_ok=True)
    return path


def init_policy_dir() -> Path:
    path = data_dir() / "policy-init"
    if not (path / "config.json").is_file():
        raise SystemExit(f"no initial policy in {path}: run prepare.py first")
    return path


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def want_cuda() -> bool:
    device = os.environ.get("IDEAFORGE_DEVICE", "cuda")
    if device not in ("cuda", "cpu"):
        raise SystemExit(f"IDEAFORGE_DEVICE must be 'cuda' or 'cpu', got {device!r}")
    return device == "cuda"


def require_device() -> bool:
    """True for CUDA; a GPU profile on a machine without CUDA stops here, it never runs on the CPU."""
    if not want_cuda():
        return False
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "this profile needs a CUDA GPU (IDEAFORGE_DEVICE=cuda) but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Install the GPU stack with "
            "./ops/install.sh --gpu, or run the 'smoke' profile on a CPU."
        )
    return True


def grpo_steps() -> int:
    """GRPO iterations (rollout batch + updates) the recipe should run; the paper: 20."""
    return int(os.environ.get("IDEAFORGE_GRPO_STEPS", "20"))


def time_budget_s() -> float:
    return float(os.environ.get("IDEAFORGE_TIME_BUDGET_S", "8400"))


def deadline() -> float:
    """Unix time by which training must have saved the policy (set by launch.py)."""
    value = os.environ.get("IDEAFORGE_DEADLINE")
    return float(value) if value else time.time() + time_budget_s()


def max_tokens() -> int:
    """Sampled response length limit, in training and in evaluation (the paper: 1024)."""
    return int(os.environ.get("IDEAFORGE_MAX_TOKENS", "1024"))


def prompt(problem: str) -> str:
    return PROMPT_FILE.read_text().format(question=problem)


def read_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("problem"), str) or not isinstance(row.get("answer"), str):
            raise SystemExit(f"{path}:{n}: every row needs string fields 'problem' and 'answer'")
        rows.append({"problem": row["problem"], "answer": row["answer"]})
    return rows


def train_problems() -> list[dict]:
    return read_rows(data_dir() / "math_train.jsonl")


def val_problems() -> list[dict]:
    """MATH-500 (the fixed validation set; only the evaluation step sees it)."""
    return read_rows(eval_data_dir() / "math500.jsonl")
