"""PROTECTED. The shared SFT starting point: built once per data dir (deterministic seed), then reused."""

from __future__ import annotations

import fcntl
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

import task
from policy import Policy, accuracy

log = logging.getLogger(__name__)
SFT_BATCH = 64
SFT_LR = 1e-3


def sft_path(steps: int) -> Path:
    return task.data_dir() / f"sft-{steps}.pt"


def train_sft(steps: int) -> tuple[Policy, float]:
    """Teacher-forced training on the answers; returns the policy and its held-out greedy accuracy."""
    torch.manual_seed(task.SFT_SEED)
    gen = torch.Generator().manual_seed(task.SFT_SEED)
    policy = Policy()
    opt = torch.optim.AdamW(policy.parameters(), lr=SFT_LR, weight_decay=0.0)
    for _ in range(steps):
        prompts, answers = task.sample_problems(SFT_BATCH, gen)
        seq = torch.cat([prompts, answers], dim=1)
        logits = policy(seq[:, :-1])[:, task.PROMPT_LEN - 1 :]
        loss = F.cross_entropy(logits.reshape(-1, task.VOCAB_SIZE), answers.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return policy, accuracy(policy, *task.val_problems())


def ensure_sft(steps: int | None = None) -> Path:
    """Path of the SFT checkpoint for ``steps`` (IDEAFORGE_SFT_STEPS), training it under a lock if missing."""
    steps = task.sft_steps() if steps is None else steps
    path = sft_path(steps)
    if path.is_file():  # built by prepare.py: training sees the data directory read-only
        return path
    with open(task.data_dir() / "sft.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            policy, acc = train_sft(steps)
            tmp = path.with_suffix(".tmp")
            torch.save(policy.state_dict(), tmp)
            tmp.replace(path)
            info = {"sft_steps": steps, "val_accuracy": acc, "val_size": task.val_size()}
            path.with_suffix(".json").write_text(json.dumps(info))
            log.info("trained SFT policy: %s", info)
    return path


def sft_accuracy(steps: int | None = None) -> float | None:
    info = sft_path(task.sft_steps() if steps is None else steps).with_suffix(".json")
    return json.loads(info.read_text())["val_accuracy"] if info.is_file() else None
