"""Train the character-level GPT within the step budget. Editable: hyperparameters, loop, optimizer.

Writes $IDEAFORGE_OUT/model.pt = {"config": GPTConfig fields, "state_dict": weights} for the evaluator.
Progress: ``IDEAFORGE_PROGRESS {...}`` lines; checkpoints: ``IDEAFORGE_CHECKPOINT {...}`` lines.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict

import torch

import data
from model import GPT, GPTConfig, count_params

LEARNING_RATE = 1e-3
BATCH_SIZE = 32
N_LAYER = 4
N_HEAD = 4
N_EMBD = 128
DROPOUT = 0.0
WEIGHT_DECAY = 0.1
BETA2 = 0.99
GRAD_CLIP = 1.0
CHECKPOINT_EVERY = int(os.environ.get("IDEAFORGE_CHECKPOINT_EVERY", "100"))


def lr_at(step: int, total: int) -> float:
    """Learning rate for ``step`` of ``total``: cosine decay to zero."""
    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / total))


def emit(kind: str, payload: dict) -> None:
    print(f"IDEAFORGE_{kind} {json.dumps(payload)}", flush=True)


def save_checkpoint(path, model, opt, batches, step: int) -> None:
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "batches": batches.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "py_rng": random.getstate(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    emit("CHECKPOINT", {"step": step, "path": str(path)})


def load_checkpoint(path: str, model, opt, batches) -> int:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    batches.load_state_dict(state["batches"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["py_rng"])
    return int(state["step"])


def main() -> None:
    data.setup_threads()
    seed = data.seed()
    torch.manual_seed(seed)
    random.seed(seed)
    steps = data.budget_steps()
    out = data.out_dir()
    cfg = GPTConfig(
        vocab_size=data.VOCAB_SIZE,
        block_size=data.CONTEXT,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        n_embd=N_EMBD,
        dropout=DROPOUT,
    )
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, BETA2), weight_decay=WEIGHT_DECAY)
    batches = data.Batches(data.load_split("train"), BATCH_SIZE, seed)
    start = 0
    resume = os.environ.get("IDEAFORGE_RESUME")
    if resume:
        start = load_checkpoint(resume, model, opt, batches)
        print(f"resumed from {resume} at step {start}", flush=True)
    print(f"params={count_params(model)} steps={steps} batch={BATCH_SIZE}x{data.CONTEXT}", flush=True)
    t0 = time.time()
    model.train()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        x, y = batches.next()
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        done = step + 1
        value = loss.item()
        if done % 10 == 0 or done == steps or not math.isfinite(value):
            emit("PROGRESS", {"step": done, "loss": value})
        if not math.isfinite(value):
            print(f"non-finite loss at step {done}; stopping", flush=True)
            break
        if CHECKPOINT_EVERY > 0 and done % CHECKPOINT_EVERY == 0 and done < steps:
            save_checkpoint(out / "checkpoint.pt", model, opt, batches, done)
    torch.save({"config": asdict(cfg), "state_dict": model.state_dict()}, out / "model.pt")
    print(f"trained {steps - start} steps in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
