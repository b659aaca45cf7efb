"""PROTECTED. Score a trained tiny_gpt: causality check, then loss on the fixed held-out plays.

Reads $IDEAFORGE_OUT/model.pt, rebuilds GPT(GPTConfig(**config)) from the (editable) model.py, and writes
{"val_loss", "val_bpc", "params", "eval_tokens"} to $IDEAFORGE_METRIC_FILE. A model whose logits at a
position depend on later tokens is rejected (exit 2, no metric file).
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F

import data

CAUSAL_TOL = 1e-4


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(logits, torch.Tensor) or logits.shape != (*x.shape, data.VOCAB_SIZE):
        shape = getattr(logits, "shape", type(logits))
        raise SystemExit(f"model(x) must give logits of shape {(*x.shape, data.VOCAB_SIZE)}, got {shape}")
    return logits.float()


def causality_violation(model: torch.nn.Module, windows: torch.Tensor) -> str | None:
    """Change every token from position t on; logits before t must not move. Returns a message or None."""
    gen = torch.Generator().manual_seed(1234)
    x = windows[:2, :-1]
    base = logits_of(model, x)
    for t in (1, 7, data.CONTEXT // 2, data.CONTEXT - 1):
        x2 = x.clone()
        x2[:, t:] = torch.randint(0, data.VOCAB_SIZE, x2[:, t:].shape, generator=gen)
        moved = (logits_of(model, x2)[:, :t] - base[:, :t]).abs().max().item()
        if not moved <= CAUSAL_TOL * (1.0 + base[:, :t].abs().max().item()):
            return f"logits before position {t} changed by {moved:.3g} when later tokens changed"
    return None


def main() -> None:
    data.setup_threads()
    torch.manual_seed(0)
    path = data.out_dir() / "model.pt"
    if not path.is_file():
        raise SystemExit(f"no trained model at {path}: train.py must save it there")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    windows = data.eval_windows()
    with torch.no_grad():
        problem = causality_violation(model, windows)
        if problem:
            print(f"causality check failed: {problem}", file=sys.stderr)
            sys.exit(2)
        total, count = 0.0, 0
        for chunk in windows.split(32):
            logits = logits_of(model, chunk[:, :-1])
            targets = chunk[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), targets.reshape(-1), reduction="sum").item()
            count += targets.numel()
    loss = total / count
    metrics = {
        "val_loss": loss,
        "val_bpc": loss / math.log(2),
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
