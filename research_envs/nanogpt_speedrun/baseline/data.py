"""PROTECTED. Paths, device, time budget, token shards and the training loader of nanogpt_speedrun.

Shards use the llm.c / modded-nanogpt layout: a 256 x int32 header (magic 20240520, version 1, token count)
followed by uint16 GPT-2 token ids. Training shards ``<dataset>_train_NNNNNN.bin`` live in $IDEAFORGE_DATA;
the validation tokens live only in the evaluation data dir (``eval_data_dir()``), which training never needs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256
VOCAB_SIZE = 50257  # GPT-2 BPE
PAPER_VAL_TOKENS = 10_485_760  # the paper's fixed validation set: the first 10,485,760 FineWeb val tokens
DATASETS = ("fineweb", "synthetic")


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    return Path(value)


def data_dir() -> Path:
    return env_path("IDEAFORGE_DATA")


def eval_data_dir() -> Path:
    """Where the validation tokens are: $IDEAFORGE_EVAL_DATA, or $IDEAFORGE_DATA/eval when the runner has no
    separate evaluation data dir."""
    value = os.environ.get("IDEAFORGE_EVAL_DATA")
    return Path(value) if value else data_dir() / "eval"


def out_dir() -> Path:
    path = env_path("IDEAFORGE_OUT")
    path.mkdir(parents=True, exist_ok=True)
    return path


def dataset() -> str:
    name = os.environ.get("IDEAFORGE_DATASET", "fineweb")
    if name not in DATASETS:
        raise SystemExit(f"IDEAFORGE_DATASET must be one of {DATASETS}, got {name!r}")
    return name


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def want_cuda() -> bool:
    """True when the profile asks for GPUs (IDEAFORGE_DEVICE=cuda, the default); never falls back to CPU."""
    device = os.environ.get("IDEAFORGE_DEVICE", "cuda")
    if device not in ("cuda", "cpu"):
        raise SystemExit(f"IDEAFORGE_DEVICE must be 'cuda' or 'cpu', got {device!r}")
    return device == "cuda"


def require_device() -> bool:
    """Check the requested device exists; returns True for CUDA. A GPU profile without CUDA stops here."""
    if not want_cuda():
        return False
    if not torch.cuda.is_available():
        raise SystemExit(
            "this profile needs CUDA GPUs (IDEAFORGE_DEVICE=cuda) but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Install the GPU stack with "
            "./ops/install.sh --gpu, or run the 'smoke' profile on a CPU."
        )
    return True


def time_budget_s() -> float:
    """Wall-clock seconds one training run may use, compilation included (the paper: 1500 s)."""
    return float(os.environ.get("IDEAFORGE_TIME_BUDGET_S", "1500"))


def deadline() -> float:
    """Unix time at which training must stop and save: set by launch.py when it starts the clock."""
    value = os.environ.get("IDEAFORGE_DEADLINE")
    return float(value) if value else time.time() + time_budget_s()


def eval_seq_len() -> int:
    return int(os.environ.get("IDEAFORGE_EVAL_SEQ_LEN", "1024"))


def val_tokens() -> int:
    return int(os.environ.get("IDEAFORGE_VAL_TOKENS", str(PAPER_VAL_TOKENS)))


def shards(directory: Path, split: str) -> list[Path]:
    files = sorted(directory.glob(f"{dataset()}_{split}_*.bin"))
    if not files:
        raise SystemExit(f"no {dataset()}_{split}_*.bin shards in {directory}: run prepare.py first")
    return files


def write_shard(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, len(tokens))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    tmp.replace(path)


def shard_length(path: Path) -> int:
    """Token count of a shard after checking its header against the file size."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if len(header) < HEADER_INTS or header[0] != MAGIC or header[1] != VERSION:
        raise SystemExit(f"{path}: not a token shard (bad magic/version; want llm.c/modded-nanogpt .bin)")
    n = int(header[2])
    if path.stat().st_size != HEADER_INTS * 4 + 2 * n:
        raise SystemExit(f"{path}: header says {n} tokens but the file holds {(path.stat().st_size - 1024) // 2}")
    return n


def read_shard(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_INTS * 4, shape=(shard_length(path),))


class DistributedLoader:
    """The paper's loader: rank r reads the r-th (B*T + 1)-token slice of each global batch, shard by shard."""

    def __init__(self, batch_size: int, seq_len: int, rank: int, world: int) -> None:
        self.files = shards(data_dir(), "train")
        self.B, self.T, self.rank, self.world = batch_size, seq_len, rank, world
        self.file_index, self.pos = 0, 0
        self.tokens = read_shard(self.files[0])
        if len(self.tokens) < world * batch_size * seq_len + 1:
            raise SystemExit(f"{self.files[0]} is smaller than one global batch")

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
    """The fixed validation set, (N, 2, eval_seq_len) inputs/targets: the first val_tokens() tokens of the
    validation shards cut into consecutive windows, as the paper's validation loader reads them."""
    need, seq, parts, have = val_tokens(), eval_seq_len(), [], 0
    for path in shards(eval_data_dir(), "val"):
        parts.append(np.asarray(read_shard(path)[: need + 1 - have], dtype=np.int64))
        have += len(parts[-1])
        if have > need:
            break
    tokens = torch.from_numpy(np.concatenate(parts))
    n = min(need, len(tokens) - 1) // seq
    if n < 1:
        raise SystemExit(f"validation set has {len(tokens)} tokens, fewer than one window of {seq}")
    return torch.stack([tokens[: n * seq].view(n, seq), tokens[1 : n * seq + 1].view(n, seq)], dim=1)
