"""PROTECTED. Data, vocabulary, held-out split and training budget of tiny_gpt.

The task is fixed here: character-level modelling of Shakespeare plays, context CONTEXT characters,
validation on whole plays never seen in training, a budget of IDEAFORGE_STEPS optimizer steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CONTEXT = 128
CHARS = "\n" + "".join(chr(i) for i in range(32, 127))
VOCAB_SIZE = len(CHARS)
_TABLE = torch.full((256,), CHARS.index("?"), dtype=torch.long)
for _i, _c in enumerate(CHARS):
    _TABLE[ord(_c)] = _i


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    return Path(value)


def data_dir() -> Path:
    return env_path("IDEAFORGE_DATA")


def split_dir(split: str) -> Path:
    """Training plays live in IDEAFORGE_DATA; the held-out plays only in IDEAFORGE_EVAL_DATA (evaluation)."""
    return env_path("IDEAFORGE_EVAL_DATA") if split == "val" else data_dir()


def out_dir() -> Path:
    path = env_path("IDEAFORGE_OUT")
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def budget_steps() -> int:
    """Optimizer steps this run may take (the training budget)."""
    return int(os.environ.get("IDEAFORGE_STEPS", "400"))


def setup_threads() -> None:
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))


def encode(text: str) -> torch.Tensor:
    raw = bytearray(text.encode("ascii", errors="replace"))
    return _TABLE[torch.frombuffer(raw, dtype=torch.uint8).long()]


def decode(ids: torch.Tensor) -> str:
    return "".join(CHARS[i] for i in ids.tolist())


def load_split(split: str) -> torch.Tensor:
    """Token ids of ``train`` or ``val`` (whole plays) as a 1-D long tensor."""
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'val'")
    path = split_dir(split) / f"{split}.txt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run prepare.py first (the runner's prepare_command)")
    return encode(path.read_text())


class Batches:
    """Random training windows drawn with a seeded generator whose state can be checkpointed."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seed: int, context: int = CONTEXT) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.context = context
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - self.context - 1, (self.batch_size,), generator=self.gen)
        idx = starts[:, None] + torch.arange(self.context + 1)[None, :]
        chunk = self.tokens[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


def eval_windows() -> torch.Tensor:
    """The fixed held-out set: IDEAFORGE_EVAL_WINDOWS evenly spaced windows of CONTEXT + 1 val tokens."""
    tokens = load_split("val")
    n = int(os.environ.get("IDEAFORGE_EVAL_WINDOWS", "256"))
    span = CONTEXT + 1
    total = len(tokens) // span
    picks = torch.linspace(0, total - 1, steps=min(n, total)).long()
    return tokens[: total * span].view(total, span)[picks]
