"""PROTECTED. Training and validation problems, the prompt format, budget and paths of grpo_math.

IDEAFORGE_MATH_SOURCE = ``hub`` (default): MATH through ``datasets`` (training: IDEAFORGE_MATH_TRAIN,
default DigitalLearningGmbH/MATH-lighteval split train; validation: IDEAFORGE_MATH_VAL, default
HuggingFaceH4/MATH-500 split test, the first IDEAFORGE_VAL_SIZE problems). Offline runs need the datasets in
the local HF cache (HF_DATASETS_OFFLINE=1 is respected by ``datasets``). ``local``: the problems shipped
in smoke_problems.jsonl (for the CPU smoke profile).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from answer import last_boxed

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def out_dir() -> Path:
    return env_path("IDEAFORGE_OUT")


def data_dir() -> Path:
    return env_path("IDEAFORGE_DATA")


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def budget_steps() -> int:
    return int(os.environ.get("IDEAFORGE_STEPS", "100"))


def val_size() -> int:
    return int(os.environ.get("IDEAFORGE_VAL_SIZE", "500"))


def max_new_tokens() -> int:
    """Completion length limit for training samples and for evaluation."""
    return int(os.environ.get("IDEAFORGE_MAX_NEW_TOKENS", "1024"))


def source() -> str:
    name = os.environ.get("IDEAFORGE_MATH_SOURCE", "hub")
    if name not in ("hub", "local"):
        raise SystemExit(f"IDEAFORGE_MATH_SOURCE must be 'hub' or 'local', got {name!r}")
    return name


def _local() -> list[dict]:
    lines = (HERE / "smoke_problems.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _hub(name: str, split: str) -> list[dict]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, split=split)
    except Exception as e:  # offline without a cache, unknown name, ...
        raise SystemExit(f"cannot load dataset {name!r} split {split!r}: {e}") from e
    rows = []
    for row in ds:
        answer = row.get("answer") or last_boxed(row.get("solution", ""))
        if answer:
            rows.append({"problem": row["problem"], "answer": answer})
    return rows


def train_problems() -> list[dict]:
    if source() == "local":
        return _local()
    return _hub(os.environ.get("IDEAFORGE_MATH_TRAIN", "DigitalLearningGmbH/MATH-lighteval"), "train")


def val_problems() -> list[dict]:
    """The fixed validation problems (same for every run of a profile)."""
    rows = _local() if source() == "local" else _hub(os.environ.get("IDEAFORGE_MATH_VAL", "HuggingFaceH4/MATH-500"), "test")
    return rows[: val_size()]


def prompt_text(problem: str) -> str:
    return f"{problem}\n{INSTRUCTION}"
