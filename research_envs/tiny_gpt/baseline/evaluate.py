"""PROTECTED. Score a trained tiny_gpt: loss on the fixed held-out plays, with causality and batch checks.

The evaluator never imports editable code. The model runs in two model servers (serve.py), each in a sandbox of
its own, that answer token windows with logits over channel.py; this process alone reads the held-out targets
and writes {"val_loss", "val_bpc", "params", "eval_tokens"} to $IDEAFORGE_METRIC_FILE ("params" as the scoring
server reports it).

- The scoring server gets every held-out window twice: in the fixed order in batches of 32 (the scored pass),
  and again in a secret random order in batches of 7, the two interleaved at random. Per-window losses that
  disagree (a model that looks at its batch) are rejected.
- The probing server is a fresh process that never sees a scored window whole: it gets each window once, with
  every token from a secret random position t on replaced by random tokens, in batches of 1, 2, 5 and 16. Its
  logits before t must equal the scoring server's for that window. A model that reads later tokens at position
  t - 1 is caught there, and remembering earlier answers cannot help: the process that answers the probe never
  saw the window it came from.
Rejected: exit 2, no metric file.
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
PROBE_BATCHES = (1, 2, 5, 16)


class ModelServer:
    """A model server as the evaluator sees it: int64 windows in, float32 logits out."""

    def __init__(self, reader, writer) -> None:  # noqa: ANN001 - binary file objects
        self.reader, self.writer = reader, writer
        self.params = channel.recv_hello(reader)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        channel.send_tokens(self.writer, x)
        return channel.recv_logits(self.reader, (*x.shape, data.VOCAB_SIZE))

    def close(self) -> None:
        self.writer.close()


def window_losses(logits: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each window of ``chunk`` given the logits of ``chunk[:, :-1]``."""
    losses = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), chunk[:, 1:].reshape(-1), reduction="none")
    return losses.view(len(chunk), -1).sum(dim=1).double()


def score(scorer: ModelServer, windows: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """Per-window losses of the scored pass, the logits behind them, and the batch check's failure (or None)."""
    n = len(windows)
    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    first = torch.empty(n, dtype=torch.float64)
    again = torch.empty(n, dtype=torch.float64)
    logits_of = torch.empty(n, data.CONTEXT, data.VOCAB_SIZE)
    jobs = [("first", idx) for idx in torch.arange(n).split(32)]
    jobs += [("again", idx) for idx in torch.randperm(n, generator=gen).split(7)]
    rng.shuffle(jobs)
    for kind, idx in jobs:
        logits = scorer.logits(windows[idx][:, :-1])
        if kind == "first":
            first[idx] = window_losses(logits, windows[idx])
            logits_of[idx] = logits
        else:
            again[idx] = window_losses(logits, windows[idx])
    if not torch.isfinite(first).all():
        return first, logits_of, None  # a non-finite loss is the result itself (the runner's "nan")
    drift = (first - again).abs().max().item()
    if not drift <= ORDER_TOL * (1.0 + first.abs().max().item()):
        return first, logits_of, f"evaluation in another batch order disagrees (max window loss change {drift:.3g})"
    return first, logits_of, None


def probe(prober: ModelServer, windows: torch.Tensor, scored: torch.Tensor, rng: random.Random) -> str | None:
    """Each window once, altered from a secret position on: logits before it must match the scored ones."""
    n = len(windows)
    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    order = torch.randperm(n, generator=gen).tolist()
    while order:
        batch = [order.pop() for _ in range(min(rng.choice(PROBE_BATCHES), len(order)))]
        cuts = [rng.randrange(1, data.CONTEXT) for _ in batch]
        x = windows[batch][:, :-1].clone()
        for row, t in enumerate(cuts):
            x[row, t:] = torch.randint(0, data.VOCAB_SIZE, (data.CONTEXT - t,), generator=gen)
        logits = prober.logits(x)
        for row, (w, t) in enumerate(zip(batch, cuts, strict=True)):
            before, after = scored[w, :t], logits[row, :t]
            change = (after - before).abs().max().item()
            if not change <= CAUSAL_TOL * (1.0 + before.abs().max().item()):
                return (
                    f"causality check failed: logits before position {t} changed by {change:.3g} when later tokens "
                    f"changed (batch {len(batch)})"
                )
    return None


def main() -> None:
    data.setup_threads()
    rng = random.Random(int.from_bytes(os.urandom(16), "little"))  # secret from the model servers
    out = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not out:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    windows = data.eval_windows()
    try:
        scorer, prober = (ModelServer(r, w) for r, w in channel.endpoints(2))
        losses, scored, problem = score(scorer, windows, rng)
        scorer.close()
        if torch.isfinite(losses).all():
            problem = problem or probe(prober, windows, scored, rng)
        prober.close()
    except (channel.ChannelClosed, BrokenPipeError) as e:
        print(f"a model server stopped answering ({e}); its log says why", file=sys.stderr)
        sys.exit(2)
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(2)
    count = windows[:, 1:].numel()
    loss = losses.sum().item() / count
    metrics = {
        "val_loss": loss,
        "val_bpc": loss / math.log(2),
        "params": float(scorer.params),
        "eval_tokens": float(count),
    }
    with open(out, "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
