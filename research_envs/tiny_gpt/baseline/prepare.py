"""PROTECTED. Decode the shipped corpus: train plays into $IDEAFORGE_DATA, the held-out plays into
$IDEAFORGE_EVAL_DATA (visible to the evaluator only; corpus/val.txt.gz is an eval-only file). Idempotent, offline."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import data

HERE = Path(__file__).resolve().parent


def main() -> None:
    for split in ("train", "val"):
        dest = data.split_dir(split)
        dest.mkdir(parents=True, exist_ok=True)
        src = HERE / "corpus" / f"{split}.txt.gz"
        if not src.is_file():
            raise SystemExit(f"shipped corpus file {src} is missing")
        text = gzip.decompress(src.read_bytes()).decode("ascii")
        target = dest / f"{split}.txt"
        if target.is_file() and target.read_text() == text:
            continue
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(target)
    print(f"prepared tiny_gpt corpus in {data.split_dir('train')} and {data.split_dir('val')}")


if __name__ == "__main__":
    main()
