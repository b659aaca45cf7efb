"""Train GPT-2 d12 on FineWeb until the wall-clock deadline, data-parallel under torchrun. Editable.

The paper's recipe (llm.c GPT-2 d12): AdamW lr 1.5e-3, betas (0.9, 0.95), weight decay 0.1, grad clip 1.0,
262,144-token batches of 1024-token sequences (32 per GPU; gradient accumulation makes up for fewer than 8
GPUs), 256 warmup iterations then linear decay over 26,880 iterations, bf16 autocast, torch.compile.
launch.py starts the clock and sets IDEAFORGE_DEADLINE; stop before it and save. Rank 0 writes
$IDEAFORGE_OUT/model.pt = {"config": GPTConfig fields, "state_dict": weights} for the evaluator, and
snapshots to $IDEAFORGE_OUT/snapshots/ from which the evaluator finds the time to the target loss.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
from model import GPT, GPTConfig

LEARNING_RATE = 1.5e-3
WARMUP_ITERS = 256
NUM_ITERATIONS = 26880
WEIGHT_DECAY = 0.1
BETA1 = 0.9
BETA2 = 0.95
GRAD_CLIP = 1.0
TOTAL_BATCH_TOKENS = 262144
MICRO_BATCH = 32
SEQ_LEN = 1024
N_LAYER = 12
N_HEAD = 12
N_EMBD = 768
COMPILE = True
SNAPSHOT_EVERY_S = 60.0
if os.environ.get("IDEAFORGE_TINY") == "1":  # smoke profile: the same code path at toy sizes on CPU
    LEARNING_RATE, WARMUP_ITERS, NUM_ITERATIONS, TOTAL_BATCH_TOKENS = 1e-2, 10, 400, 512
    MICRO_BATCH, SEQ_LEN, N_LAYER, N_HEAD, N_EMBD, SNAPSHOT_EVERY_S = 4, 64, 2, 2, 64, 10.0


def lr_at(it: int) -> float:
    """The paper's schedule: linear warmup, then linear decay to 0.1/1.1 of the peak at NUM_ITERATIONS."""
    if it < WARMUP_ITERS:
        return LEARNING_RATE * (it + 1) / WARMUP_ITERS
    decay = min(1.0, (it - WARMUP_ITERS) / (NUM_ITERATIONS - WARMUP_ITERS))
    return LEARNING_RATE * (0.1 + (1 - decay)) / 1.1


def save_async(state: dict, path, done: list[threading.Thread]) -> None:
    """Write ``state`` (already on the CPU) to ``path`` atomically in a background thread."""

    def write() -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    t = threading.Thread(target=write, daemon=False)
    t.start()
    done.append(t)


def cpu_state(raw: torch.nn.Module, cfg: GPTConfig) -> dict:
    return {"config": asdict(cfg), "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in raw.state_dict().items()}}


def main() -> None:
    cuda = data.require_device()
    stop_at = data.deadline()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    else:
        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    master = rank == 0

    cfg = GPTConfig(vocab_size=data.VOCAB_SIZE, block_size=SEQ_LEN, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)
    torch.manual_seed(data.seed())  # identical initial weights on every rank
    raw = GPT(cfg).to(device)
    model = torch.compile(raw) if (COMPILE and cuda) else raw
    model = DDP(model, device_ids=[local] if cuda else None)
    opt = torch.optim.AdamW(
        raw.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=WEIGHT_DECAY, fused=cuda
    )
    accum = TOTAL_BATCH_TOKENS // (MICRO_BATCH * SEQ_LEN * world)
    if accum < 1 or accum * MICRO_BATCH * SEQ_LEN * world != TOTAL_BATCH_TOKENS:
        raise SystemExit(f"TOTAL_BATCH_TOKENS={TOTAL_BATCH_TOKENS} is not a multiple of {MICRO_BATCH}x{SEQ_LEN}x{world}")
    loader = data.DistributedLoader(MICRO_BATCH, SEQ_LEN, rank, world)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    snapshots = data.out_dir() / "snapshots"
    snapshots.mkdir(exist_ok=True)
    writers: list[threading.Thread] = []
    t_start = time.time()
    next_snapshot = t_start + SNAPSHOT_EVERY_S
    if master:
        params = sum(p.numel() for p in raw.parameters())
        print(f"params={params} world={world} accum={accum} seconds_left={stop_at - t_start:.0f} device={device}", flush=True)

    step = 0
    while step < NUM_ITERATIONS:
        flag = torch.tensor([1.0 if time.time() >= stop_at else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        if flag.item() > 0:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        for micro in range(accum):
            x, y = loader.next(device)
            model.require_backward_grad_sync = micro == accum - 1
            with autocast:
                _, loss = model(x, y)
            (loss / accum).backward()
        norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        value = loss.item()
        if not math.isfinite(value):
            if master:
                print(f"IDEAFORGE_PROGRESS {json.dumps({'step': step, 'loss': value})}", flush=True)
            raise SystemExit(f"loss is {value} at step {step}")
        if master and (step % 10 == 0 or step == 1):
            info = {"step": step, "loss": value, "lr": lr_at(step - 1), "grad_norm": float(norm), "elapsed_s": round(time.time() - t_start, 2)}
            print(f"IDEAFORGE_PROGRESS {json.dumps(info)}", flush=True)
        if master and time.time() >= next_snapshot:
            next_snapshot += SNAPSHOT_EVERY_S
            save_async(cpu_state(raw, cfg), snapshots / f"step-{step:06d}.pt", writers)
    if master:
        save_async(cpu_state(raw, cfg), data.out_dir() / "model.pt", writers)
        for t in writers:
            t.join()
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0
        tokens = step * TOTAL_BATCH_TOKENS
        print(
            f"trained {step} steps ({tokens} tokens) in {time.time() - t_start:.1f}s, "
            f"{tokens / max(1e-9, time.time() - t_start):.0f} tokens/s, peak GPU memory {peak:.0f} MiB",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
