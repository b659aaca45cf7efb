"""PROTECTED. Fill the data dirs for IDEAFORGE_DATASET from local files only. Idempotent; never downloads.

``fineweb``: pre-tokenised GPT-2 shards in the llm.c / modded-nanogpt format (``fineweb_train_NNNNNN.bin``,
``fineweb_val_NNNNNN.bin``, e.g. the kjj0/fineweb10B-gpt2 files modded-nanogpt's cached_fineweb10B.py fetches)
in the directory $IDEAFORGE_FINEWEB_DIR, next to a ``SHA256SUMS`` file (``sha256sum fineweb_*.bin >
SHA256SUMS``, made where the shards were downloaded). Every shard used is checked against it while it is
copied. The first IDEAFORGE_TRAIN_SHARDS training shards go to $IDEAFORGE_DATA; only the first
IDEAFORGE_VAL_TOKENS (+1) validation tokens go to the evaluation data dir (data.eval_data_dir()), so training
never needs the directory that holds the validation shard. No tokeniser runs: tiktoken is not needed.
``synthetic``: a deterministic Markov-chain token stream (CPU smoke profile).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import data  # noqa: E402

SUMS_FILE = "SHA256SUMS"


def synthetic(train_tokens: int, val_tokens: int) -> None:
    """Tokens from a fixed sparse Markov chain over 512 ids: learnable structure, no download."""
    rng = np.random.default_rng(0)
    successors = rng.integers(0, 512, size=(512, 4))
    probs = np.array([0.55, 0.25, 0.15, 0.05])
    for split, n, dest in (("train", train_tokens, data.data_dir()), ("val", val_tokens, data.eval_data_dir())):
        choice = rng.choice(4, size=n, p=probs)
        out = np.empty(n, dtype=np.uint16)
        tok = 0
        for i in range(n):
            tok = successors[tok, choice[i]]
            out[i] = tok
        data.write_shard(dest / f"synthetic_{split}_000000.bin", out)


def read_sums(source: Path) -> dict[str, str]:
    """file name -> sha256 from ``source/SHA256SUMS`` (sha256sum's output format)."""
    path = source / SUMS_FILE
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: write it where the shards were downloaded (cd DIR && sha256sum fineweb_*.bin > "
            f"{SUMS_FILE}) and copy it with them; prepare checks every shard against it"
        )
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def copy_verified(src: Path, dest: Path, expected: str) -> None:
    """Copy ``src`` to ``dest`` while hashing it; refuse (and leave nothing) when the digest differs."""
    h = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 22), b""):
            h.update(block)
            fout.write(block)
    if h.hexdigest() != expected:
        tmp.unlink()
        raise SystemExit(f"{src}: sha256 {h.hexdigest()} does not match {SUMS_FILE} ({expected})")
    tmp.replace(dest)


def verify(src: Path, expected: str) -> None:
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise SystemExit(f"{src}: sha256 {h.hexdigest()} does not match {SUMS_FILE} ({expected})")


def fineweb(val_tokens: int) -> None:
    raw = os.environ.get("IDEAFORGE_FINEWEB_DIR")
    if not raw:
        raise SystemExit(
            "IDEAFORGE_FINEWEB_DIR is not set: point it at a directory of fineweb_{train,val}_*.bin shards "
            "(modded-nanogpt format) plus SHA256SUMS; see research_envs/nanogpt_speedrun/README.md"
        )
    source = Path(raw)
    sums = read_sums(source)
    train = sorted(source.glob("fineweb_train_*.bin"))
    val = sorted(source.glob("fineweb_val_*.bin"))
    if not train or not val:
        raise SystemExit(f"{source} needs fineweb_train_*.bin and fineweb_val_*.bin shards")
    want = int(os.environ.get("IDEAFORGE_TRAIN_SHARDS", str(len(train))))
    if want > len(train):
        raise SystemExit(f"IDEAFORGE_TRAIN_SHARDS={want} but {source} has {len(train)} training shards")
    for shard in [*train[:want], *val]:
        if shard.name not in sums:
            raise SystemExit(f"{shard.name} is not listed in {source / SUMS_FILE}")
    for shard in val:  # checked in place: only a prefix is kept
        verify(shard, sums[shard.name])
    parts, have = [], 0
    for shard in val:
        data.shard_length(shard)
        parts.append(np.asarray(data.read_shard(shard)[: val_tokens - have]))
        have += len(parts[-1])
        if have >= val_tokens:
            break
    tokens = np.concatenate(parts)
    if len(tokens) < val_tokens:
        raise SystemExit(f"the validation shards hold {len(tokens)} tokens, fewer than {val_tokens}")
    if int(tokens.max()) >= data.VOCAB_SIZE:
        raise SystemExit(f"validation token id {int(tokens.max())} is outside the GPT-2 vocabulary")
    data.write_shard(data.eval_data_dir() / "fineweb_val_000000.bin", tokens)
    for i, shard in enumerate(train[:want]):
        copy_verified(shard, data.data_dir() / shard.name, sums[shard.name])
        data.shard_length(data.data_dir() / shard.name)
        print(f"train shard {i + 1}/{want}: {shard.name}", flush=True)


def digests(directory: Path) -> dict[str, str]:
    out = {}
    for p in sorted(directory.glob(f"{data.dataset()}_*.bin")):
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        out[p.name] = h.hexdigest()
    return out


def main() -> None:
    name = data.dataset()
    data_dir, eval_dir = data.data_dir(), data.eval_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (data_dir / f"{name}-manifest.json").is_file():  # written last: a half-done prepare starts over
            print(f"{name} shards already in {data_dir} and {eval_dir}")
            return
        val_tokens = data.val_tokens() + 1
        if name == "synthetic":
            synthetic(int(float(os.environ.get("IDEAFORGE_TRAIN_TOKENS", "200000"))), val_tokens)
        else:
            fineweb(val_tokens)
        manifest = {"dataset": name, "train": digests(data_dir), "val": digests(eval_dir)}
        (data_dir / f"{name}-manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"prepared {name}: {len(manifest['train'])} train shard(s) in {data_dir}, validation in {eval_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
