"""PROTECTED. Fill $IDEAFORGE_DATA with token shards for IDEAFORGE_DATASET. Idempotent.

``synthetic``: a deterministic Markov-chain token stream (offline, for the CPU smoke profile).
``fineweb``: FineWeb text through ``datasets`` (local files from IDEAFORGE_FINEWEB_FILES, a glob of parquet/jsonl,
or the hub dataset HuggingFaceFW/fineweb ``sample-10BT`` when online; HF_DATASETS_OFFLINE is respected),
tokenised with GPT-2 BPE from ``tiktoken`` into IDEAFORGE_TRAIN_TOKENS training tokens and
IDEAFORGE_VAL_TOKENS validation tokens. Shards already there (e.g. copied from modded-nanogpt's
fineweb10B cache, renamed fineweb_{train,val}_NNN.bin) are used as they are.
"""

from __future__ import annotations

import fcntl
import os
import sys

import numpy as np

import data

SHARD_TOKENS = 100_000_000


def synthetic(train_tokens: int, val_tokens: int) -> None:
    """Tokens from a fixed sparse Markov chain over 512 ids: learnable structure, no download."""
    rng = np.random.default_rng(0)
    successors = rng.integers(0, 512, size=(512, 4))
    probs = np.array([0.55, 0.25, 0.15, 0.05])
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        choice = rng.choice(4, size=n, p=probs)
        out = np.empty(n, dtype=np.uint16)
        tok = 0
        for i in range(n):
            tok = successors[tok, choice[i]]
            out[i] = tok
        data.write_shard(data.data_dir() / f"synthetic_{split}_000.bin", out)


def fineweb(train_tokens: int, val_tokens: int) -> None:
    try:
        import tiktoken
    except ImportError as e:
        raise SystemExit("preparing FineWeb needs the 'tiktoken' package: pip install tiktoken") from e
    from datasets import load_dataset

    files = os.environ.get("IDEAFORGE_FINEWEB_FILES")
    try:
        if files:
            kind = "parquet" if files.endswith(".parquet") else "json"
            ds = load_dataset(kind, data_files=files, split="train", streaming=True)
        else:
            ds = load_dataset("HuggingFaceFW/fineweb", name="sample-10BT", split="train", streaming=True)
    except Exception as e:  # datasets raises many types when offline or the files are missing
        raise SystemExit(
            f"cannot load FineWeb ({e}). Offline? Set IDEAFORGE_FINEWEB_FILES to local parquet/jsonl files, "
            "or put fineweb_{train,val}_NNN.bin shards into $IDEAFORGE_DATA."
        ) from e
    try:
        _write_shards(tiktoken.get_encoding("gpt2"), iter(ds), train_tokens, val_tokens)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # streaming datasets fail lazily, e.g. when offline
        raise SystemExit(f"reading/tokenising FineWeb failed: {e}") from e


def _write_shards(enc, docs, train_tokens: int, val_tokens: int) -> None:
    # validation first (the first documents), then training shards
    for split, total in (("val", val_tokens), ("train", train_tokens)):
        written, index = 0, 0
        while written < total:
            chunk = _collect(enc, docs, min(SHARD_TOKENS, total - written))
            if chunk is None:
                raise SystemExit(f"FineWeb source ran out after {written} {split} tokens (wanted {total})")
            data.write_shard(data.data_dir() / f"fineweb_{split}_{index:03d}.bin", chunk)
            written, index = written + len(chunk), index + 1
            print(f"{split}: {written}/{total} tokens", flush=True)


def _collect(enc, docs, want: int) -> np.ndarray | None:
    """Tokenise documents (each preceded by <|endoftext|>) in parallel batches until ``want`` tokens."""
    parts: list[np.ndarray] = []
    have = 0
    while have < want:
        texts = [doc["text"] for _, doc in zip(range(1024), docs, strict=False)]
        if not texts:
            return None
        for toks in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 4):
            parts.append(np.array([enc.eot_token, *toks], dtype=np.uint16))
            have += len(parts[-1])
    return np.concatenate(parts)[:want]


def main() -> None:
    name = data.dataset()
    with open(data.data_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        have = [*data.data_dir().glob(f"{name}_train_*.bin")] and [*data.data_dir().glob(f"{name}_val_*.bin")]
        if have:
            print(f"{name} shards already in {data.data_dir()}")
            return
        train_tokens = int(float(os.environ.get("IDEAFORGE_TRAIN_TOKENS", "2e9")))
        val_tokens = data.val_tokens() + 1
        if name == "synthetic":
            synthetic(train_tokens, val_tokens)
        else:
            fineweb(train_tokens, val_tokens)
    print(f"prepared {name} shards in {data.data_dir()}", file=sys.stderr)


if __name__ == "__main__":
    main()
