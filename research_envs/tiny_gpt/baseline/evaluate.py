"""PROTECTED. Score a trained tiny_gpt: causality check, then loss on the fixed held-out plays.

The evaluator never imports editable code. The model runs in serve.py, in another sandbox, and answers token
windows with logits over channel.py; this process alone reads the held-out targets and writes
{"val_loss", "val_bpc", "params", "eval_tokens"} to $IDEAFORGE_METRIC_FILE ("params" as the server reports it).
Rejected (exit 2, no metric file): a model whose logits at a position depend on later tokens, and a model whose
per-window losses change when the same windows are evaluated in another order and batch size (a model that
looks at its batch). The checks use secret randomness (which windows, which positions, which order) and are
interleaved with the scoring requests, so the server cannot tell a check from a scored window by its place.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys

import torch
import torch.nn.functional as F

import channel
import data

CAUSAL_TOL = 1e-4
ORDER_TOL = 1e-3
CHECK_BATCHES = (1, 2, 5)
CHECK_POSITIONS = 4


class ModelServer:
    """The model as the evaluator sees it: int64 windows in, float32 logits out."""

    def __init__(self) -> None:
        self.reader, self.writer = channel.endpoints()
        self.params = channel.recv_hello(self.reader)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        channel.send_tokens(self.writer, x)
        return channel.recv_logits(self.reader, (*x.shape, data.VOCAB_SIZE))

    def close(self) -> None:
        self.writer.close()


def window_losses(logits: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each window of ``chunk`` given the logits of ``chunk[:, :-1]``."""
    losses = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), chunk[:, 1:].reshape(-1), reduction="none")
    return losses.view(len(chunk), -1).sum(dim=1).double()


def evaluate(model: ModelServer, windows: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, str | None]:
    """Per-window losses in the fixed order (batches of 32), and the first check that failed (or None)."""
    n = len(windows)
    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    first = torch.empty(n, dtype=torch.float64)
    again = torch.empty(n, dtype=torch.float64)
    jobs: list[tuple[str, torch.Tensor, object]] = []
    for idx in torch.arange(n).split(32):
        jobs.append(("first", windows[idx][:, :-1], idx))
    for idx in torch.randperm(n, generator=gen).split(7):
        jobs.append(("again", windows[idx][:, :-1], idx))
    checks: list[tuple[int, int, int, int]] = []  # (base request, perturbed request, position, batch)
    for batch in CHECK_BATCHES:
        x = windows[torch.randperm(n, generator=gen)[:batch]][:, :-1]
        base = len(jobs)
        jobs.append(("check", x, base))
        for t in sorted(rng.sample(range(1, data.CONTEXT), CHECK_POSITIONS)):
            x2 = x.clone()
            x2[:, t:] = torch.randint(0, data.VOCAB_SIZE, x2[:, t:].shape, generator=gen)
            checks.append((base, len(jobs), t, batch))
            jobs.append(("check", x2, len(jobs)))
    rng.shuffle(jobs)
    answers: dict[int, torch.Tensor] = {}
    for kind, x, key in jobs:
        logits = model.logits(x)
        if kind == "check":
            answers[key] = logits.clone()
        else:
            (first if kind == "first" else again)[key] = window_losses(logits, windows[key])
    for base, moved, t, batch in checks:
        before, after = answers[base][:, :t], answers[moved][:, :t]
        change = (after - before).abs().max().item()
        if not change <= CAUSAL_TOL * (1.0 + before.abs().max().item()):
            return first, f"causality check failed: logits before position {t} changed by {change:.3g} when later tokens changed (batch {batch})"
    drift = (first - again).abs().max().item()
    if not drift <= ORDER_TOL * (1.0 + first.abs().max().item()):
        return first, f"evaluation in another batch order disagrees (max window loss change {drift:.3g})"
    return first, None


def main() -> None:
    data.setup_threads()
    rng = random.Random(int.from_bytes(os.urandom(16), "little"))  # secret from the model server
    out = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not out:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    windows = data.eval_windows()
    try:
        model = ModelServer()
        losses, problem = evaluate(model, windows, rng)
        model.close()
    except (channel.ChannelClosed, BrokenPipeError) as e:
        print(f"the model server stopped answering ({e}); its log says why", file=sys.stderr)
        sys.exit(2)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    count = windows[:, 1:].numel()
    loss = losses.sum().item() / count
    metrics = {
        "val_loss": loss,
        "val_bpc": loss / math.log(2),
        "params": float(model.params),
        "eval_tokens": float(count),
    }
    with open(out, "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
