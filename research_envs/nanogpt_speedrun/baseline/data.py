"""PROTECTED. Token shards, the distributed batch loader, the fixed validation set and the time budget.

Shards use the llm.c / modded-nanogpt layout: a 256 x int32 header (magic 20240520, version 1, token count)
followed by uint16 GPT-2 token ids. Files: ``$IDEAFORGE_DATA/<dataset>_{train,val}_NNN.bin`` where
``<dataset>`` is IDEAFORGE_DATASET (``fineweb``, or ``synthetic`` for the CPU smoke profile).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
VOCAB_SIZE = 50304  # GPT-2's 50257 tokens padded to a multiple of 128


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    return Path(value)


def data_dir() -> Path:
    path = env_path("IDEAFORGE_DATA")
    path.mkdir(parents=True, exist_ok=True)
    return path


def out_dir() -> Path:
    path = env_path("IDEAFORGE_OUT")
    path.mkdir(parents=True, exist_ok=True)
    return path


def dataset() -> str:
    name = os.environ.get("IDEAFORGE_DATASET", "fineweb")
    if name not in ("fineweb", "synthetic"):
        raise SystemExit(f"IDEAFORGE_DATASET must be 'fineweb' or 'synthetic', got {name!r}")
    return name


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def time_budget_s() -> float:
    """Wall-clock seconds of training (excluding start-up and compilation warm-up) this run may use."""
    return float(os.environ.get("IDEAFORGE_TIME_BUDGET_S", "600"))


def eval_seq_len() -> int:
    return int(os.environ.get("IDEAFORGE_EVAL_SEQ_LEN", "1024"))


def val_tokens() -> int:
    return int(os.environ.get("IDEAFORGE_VAL_TOKENS", str(10 * 1024 * 1024)))


def use_cuda() -> bool:
    return os.environ.get("IDEAFORGE_DEVICE", "cuda") == "cuda" and torch.cuda.is_available()


def shards(split: str) -> list[Path]:
    files = sorted(data_dir().glob(f"{dataset()}_{split}_*.bin"))
    if not files:
        raise SystemExit(f"no {dataset()}_{split}_*.bin shards in {data_dir()}: run prepare.py first")
    return files


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, len(tokens))
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    tmp.replace(path)


def read_shard(path: Path) -> np.ndarray:
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC or header[1] != VERSION:
        raise SystemExit(f"{path}: not a token shard (bad magic/version)")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))


class DistributedLoader:
    """Each rank reads its own contiguous slice of every global batch, walking the shards in order."""

    def __init__(self, batch_size: int, seq_len: int, rank: int, world: int) -> None:
        self.files = shards("train")
        self.B, self.T, self.rank, self.world = batch_size, seq_len, rank, world
        self.file_index, self.pos = 0, 0
        self.tokens = read_shard(self.files[0])

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.B * self.T
        if self.pos + span * self.world + 1 > len(self.tokens):
            self.file_index = (self.file_index + 1) % len(self.files)
            self.tokens, self.pos = read_shard(self.files[self.file_index]), 0
        start = self.pos + self.rank * span
        buf = torch.from_numpy(self.tokens[start : start + span + 1].astype(np.int64))
        self.pos += span * self.world
        x, y = buf[:-1].view(self.B, self.T), buf[1:].view(self.B, self.T)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def val_windows() -> torch.Tensor:
    """The fixed validation set: the first val_tokens() tokens of the val shards as (N, eval_seq_len + 1)."""
    need, seq, parts, have = val_tokens(), eval_seq_len(), [], 0
    for path in shards("val"):
        parts.append(np.asarray(read_shard(path)[: need + 1 - have], dtype=np.int64))
        have += len(parts[-1])
        if have > need:
            break
    tokens = torch.from_numpy(np.concatenate(parts))
    n = (len(tokens) - 1) // seq
    if n < 1:
        raise SystemExit(f"validation set has {len(tokens)} tokens, fewer than one window of {seq}")
    x = tokens[: n * seq].view(n, seq)
    y = tokens[1 : n * seq + 1].view(n, seq)
    return torch.stack([x, y], dim=1)
