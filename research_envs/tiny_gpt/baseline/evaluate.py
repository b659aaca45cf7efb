"""PROTECTED. Score a trained tiny_gpt: causality check, then loss on the fixed held-out plays.

Reads $IDEAFORGE_OUT/model.pt (tensors and plain values only: loaded with weights_only=True), rebuilds
GPT(GPTConfig(**config)) from the (editable) model.py, and writes {"val_loss", "val_bpc", "params",
"eval_tokens"} to $IDEAFORGE_METRIC_FILE. Rejected (exit 2, no metric file): a model whose logits at a position
depend on later tokens (checked at batch sizes 1, 2 and 5), and a model whose per-window losses change when the
same windows are evaluated in another order and batch size (a model that looks at its batch).
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
ORDER_TOL = 1e-3


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
    for batch in (1, 2, 5):
        x = windows[:batch, :-1]
        base = logits_of(model, x)
        for t in (1, 7, data.CONTEXT // 2, data.CONTEXT - 1):
            x2 = x.clone()
            x2[:, t:] = torch.randint(0, data.VOCAB_SIZE, x2[:, t:].shape, generator=gen)
            moved = (logits_of(model, x2)[:, :t] - base[:, :t]).abs().max().item()
            if not moved <= CAUSAL_TOL * (1.0 + base[:, :t].abs().max().item()):
                return f"logits before position {t} changed by {moved:.3g} when later tokens changed (batch {batch})"
    return None


def window_losses(model: torch.nn.Module, windows: torch.Tensor, order: torch.Tensor, batch: int) -> torch.Tensor:
    """Summed cross-entropy of each window, evaluated in ``order`` with ``batch`` windows per forward pass."""
    out = torch.empty(len(windows), dtype=torch.float64)
    for idx in order.split(batch):
        chunk = windows[idx]
        logits = logits_of(model, chunk[:, :-1])
        losses = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), chunk[:, 1:].reshape(-1), reduction="none")
        out[idx] = losses.view(len(idx), -1).sum(dim=1).double()
    return out


def main() -> None:
    data.setup_threads()
    torch.manual_seed(0)
    path = data.out_dir() / "model.pt"
    if not path.is_file():
        raise SystemExit(f"no trained model at {path}: train.py must save it there")
    saved = torch.load(path, map_location="cpu", weights_only=True)
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
        first = window_losses(model, windows, torch.arange(len(windows)), 32)
        again = window_losses(model, windows, torch.randperm(len(windows), generator=torch.Generator().manual_seed(7)), 7)
    drift = (first - again).abs().max().item()
    if not drift <= ORDER_TOL * (1.0 + first.abs().max().item()):
        print(f"evaluation in another batch order disagrees (max window loss change {drift:.3g})", file=sys.stderr)
        sys.exit(2)
    count = windows[:, 1:].numel()
    loss = first.sum().item() / count
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
