"""PROTECTED. The model server: the trained tiny_gpt answering the evaluator's token windows with logits.

Runs in its own sandbox, apart from the evaluator: it loads $IDEAFORGE_OUT/model.pt (weights_only=True), builds
GPT(GPTConfig(**config)) from the (editable) model.py and answers each request of channel.py with model(x)'s
logits in eval mode. It never sees the held-out data beyond the windows it is sent, nor the metric file. The
evaluator runs two of these: one scores the held-out windows, the other sees only altered windows (the causality
probes) and never the scored ones, so a model that remembers what it answered cannot keep its story straight.
"""

from __future__ import annotations

import sys

import torch

import channel
import data


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    logits = out[0] if isinstance(out, tuple | list) else out
    if not isinstance(logits, torch.Tensor) or logits.shape != (*x.shape, data.VOCAB_SIZE):
        shape = getattr(logits, "shape", type(logits))
        raise SystemExit(f"model(x) must give logits of shape {(*x.shape, data.VOCAB_SIZE)}, got {shape}")
    return logits


def main() -> None:
    data.setup_threads()
    torch.manual_seed(0)
    [(reader, writer)] = channel.endpoints(1)
    path = data.out_dir() / "model.pt"
    if not path.is_file():
        raise SystemExit(f"no trained model at {path}: train.py must save it there")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(**saved["config"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    channel.send_hello(writer, sum(p.numel() for p in model.parameters()))
    with torch.no_grad():
        while (x := channel.recv_tokens(reader)) is not None:
            channel.send_logits(writer, logits_of(model, x))


if __name__ == "__main__":
    try:
        main()
    except (channel.ChannelClosed, BrokenPipeError) as e:
        sys.exit(f"model server: {e}")
