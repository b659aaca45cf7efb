"""Train GPT-2 on FineWeb tokens for a fixed wall-clock budget, data-parallel under torchrun. Editable.

launch.py starts one process per GPU (or one CPU process for the smoke profile). Rank 0 writes
$IDEAFORGE_OUT/model.pt = {"config": GPTConfig fields, "state_dict": weights} for the evaluator.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
from model import GPT, GPTConfig

LEARNING_RATE = 6e-4
MIN_LR_FRACTION = 0.0
WARMUP_FRACTION = 0.02
WEIGHT_DECAY = 0.1
BETA1 = 0.9
BETA2 = 0.95
GRAD_CLIP = 1.0
TOTAL_BATCH_TOKENS = 524288
MICRO_BATCH = 32
SEQ_LEN = 1024
N_LAYER = 12
N_HEAD = 12
N_EMBD = 768
COMPILE = True
if os.environ.get("IDEAFORGE_TINY") == "1":  # smoke profile: the same code path at toy sizes on CPU
    LEARNING_RATE, TOTAL_BATCH_TOKENS, MICRO_BATCH, SEQ_LEN, N_LAYER, N_HEAD, N_EMBD = 1e-2, 256, 4, 64, 2, 2, 64


def lr_at(progress: float) -> float:
    """Learning rate at ``progress`` = elapsed / budget: linear warmup, then cosine to MIN_LR_FRACTION."""
    if progress < WARMUP_FRACTION:
        return LEARNING_RATE * max(progress, 1e-3) / WARMUP_FRACTION
    p = min(1.0, (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))
    return LEARNING_RATE * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * p)))


def main() -> None:
    cuda = data.use_cuda()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    torch.manual_seed(data.seed() + rank)
    master = rank == 0

    cfg = GPTConfig(vocab_size=data.VOCAB_SIZE, block_size=SEQ_LEN, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)
    torch.manual_seed(data.seed())  # identical initial weights on every rank
    raw = GPT(cfg).to(device)
    model = torch.compile(raw) if (COMPILE and cuda) else raw
    model = DDP(model, device_ids=[local] if cuda else None)
    opt = torch.optim.AdamW(
        raw.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=WEIGHT_DECAY, fused=cuda
    )
    accum = max(1, TOTAL_BATCH_TOKENS // (MICRO_BATCH * SEQ_LEN * world))
    loader = data.DistributedLoader(MICRO_BATCH, SEQ_LEN, rank, world)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    budget = data.time_budget_s()
    if master:
        params = sum(p.numel() for p in raw.parameters())
        print(f"params={params} world={world} accum={accum} budget={budget}s device={device}", flush=True)

    step, trained_s, stop = 0, 0.0, False
    while not stop:
        t0 = time.time()
        lr = lr_at(trained_s / budget)
        for group in opt.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            x, y = loader.next(device)
            model.require_backward_grad_sync = micro == accum - 1
            with autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(raw.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        step += 1
        if step > 3 or not COMPILE or not cuda:  # the first steps (compilation) do not count against the budget
            trained_s += time.time() - t0
        flag = torch.tensor([1.0 if trained_s >= budget else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = flag.item() > 0
        value = loss.item()
        if not math.isfinite(value):
            stop = True
        if master and (step % 10 == 0 or stop):
            print(f"IDEAFORGE_PROGRESS {json.dumps({'step': step, 'loss': value})}", flush=True)
    if master:
        torch.save({"config": asdict(cfg), "state_dict": raw.state_dict()}, data.out_dir() / "model.pt")
        print(f"trained {step} steps, {trained_s:.1f}s of budget {budget}s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
