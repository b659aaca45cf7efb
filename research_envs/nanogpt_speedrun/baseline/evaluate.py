"""PROTECTED. Validation loss of the trained GPT on the fixed FineWeb validation tokens.

Reads $IDEAFORGE_OUT/model.pt, rebuilds GPT(GPTConfig(**config)) from the (editable) model.py, checks that
logits do not depend on future tokens, and writes {"val_loss", "params", "eval_tokens"} to
$IDEAFORGE_METRIC_FILE. Runs on one GPU (or the CPU for the smoke profile).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import data

CAUSAL_TOL = 2e-2  # bf16 on GPU


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != tuple(x.shape):
        raise SystemExit(f"model(x) must give logits shaped (B, T, vocab), got {getattr(logits, 'shape', None)}")
    return logits[..., : data.VOCAB_SIZE].float()


def causality_violation(model: torch.nn.Module, x: torch.Tensor) -> str | None:
    base = logits_of(model, x)
    gen = torch.Generator().manual_seed(1234)
    T = x.shape[1]
    for t in (1, T // 2, T - 1):
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, 50257, x2[:, t:].shape, generator=gen).to(x.device)
        moved = (logits_of(model, x2)[:, :t] - base[:, :t]).abs().max().item()
        if not moved <= CAUSAL_TOL * (1.0 + base[:, :t].abs().max().item()):
            return f"logits before position {t} changed by {moved:.3g} when later tokens changed"
    return None


def main() -> None:
    cuda = data.use_cuda()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    path = data.out_dir() / "model.pt"
    if not path.is_file():
        raise SystemExit(f"no trained model at {path}: train_gpt.py must save it there")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    windows = data.val_windows()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    batch = 16 if cuda else 8
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        problem = causality_violation(model, windows[:2, 0].to(device))
        if problem:
            print(f"causality check failed: {problem}", file=sys.stderr)
            sys.exit(2)
        for chunk in windows.split(batch):
            x, y = chunk[:, 0].to(device), chunk[:, 1].to(device)
            logits = logits_of(model, x)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    metrics = {
        "val_loss": total / count,
        "params": float(sum(p.numel() for p in model.parameters())),
        "eval_tokens": float(count),
    }
    out = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not out:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    with open(out, "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
