"""PROTECTED. Fill the data dirs from local files only (never downloads). Idempotent.

Policy (IDEAFORGE_POLICY): a Hugging Face model id already in the local cache under $HF_HOME (e.g.
``Qwen/Qwen2.5-Math-1.5B``, fetched once with ``huggingface-cli download`` on a connected machine). Every file
of the cached snapshot is checked against the digest the cache names it by (sha256 for LFS files, the git
blob hash for the rest) and copied to $IDEAFORGE_DATA/policy-init/. ``tiny-qwen2``: a randomly initialised
2-layer Qwen2 built from a transformers config, with a byte-level tokenizer (no merges) that has a chat template
(CPU smoke profile; no files needed).
Problems (IDEAFORGE_MATH_SOURCE): ``dir``: $IDEAFORGE_MATH_DIR holds ``train.jsonl`` (MATH train, 7,500 rows),
``test.jsonl`` (MATH-500) and ``SHA256SUMS``; rows have ``problem`` and ``answer`` (or a ``solution`` with a
\\boxed{} answer). ``builtin``: the 12 problems in smoke_problems.jsonl serve as both sets (plumbing only).
Training problems go to $IDEAFORGE_DATA/math_train.jsonl, MATH-500 only to the evaluation data dir.
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

import problems  # noqa: E402
from answer import last_boxed  # noqa: E402

TINY = "tiny-qwen2"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def build_tiny(dest: Path) -> None:
    """A random-init Qwen2 (seed 0) and a byte-level tokenizer with a chat template, written to ``dest``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # byte-level BPE without merges: one token per byte
    vocab = {t: i for i, t in enumerate([*specials, *alphabet])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    cfg = Qwen2Config(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"], bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = vocab["<|endoftext|>"]
    model.generation_config.pad_token_id = vocab["<|endoftext|>"]
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


def copy_cached_model(repo_id: str, dest: Path) -> None:
    """Copy the cached snapshot of ``repo_id`` (under $HF_HOME) to ``dest``, checking every file's digest."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached, cache dir missing, ...
        raise SystemExit(
            f"model {repo_id!r} is not in the local Hugging Face cache (HF_HOME={os.environ.get('HF_HOME')!r}): "
            f"fetch it once with `huggingface-cli download {repo_id}` on a connected machine ({e})"
        ) from e
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for link in sorted(snapshot.rglob("*")):
        if link.is_dir():
            continue
        blob = link.resolve()
        digest = file_sha256(blob) if len(blob.name) == 64 else git_blob_sha1(blob)
        if digest != blob.name:
            raise SystemExit(f"{link}: content digest {digest} does not match its cache name {blob.name}")
        target = tmp / link.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(blob, target)
    (tmp / "SOURCE.json").write_text(json.dumps({"repo_id": repo_id, "revision": snapshot.name}))
    tmp.replace(dest)


def math_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        answer = row.get("answer") or last_boxed(row.get("solution", ""))
        if not isinstance(row.get("problem"), str) or not answer:
            raise SystemExit(f"{path}: a row without 'problem' and an answer: {line[:200]}")
        rows.append({"problem": row["problem"], "answer": str(answer)})
    return rows


def verified_math_dir() -> tuple[Path, Path]:
    raw = os.environ.get("IDEAFORGE_MATH_DIR")
    if not raw:
        raise SystemExit("IDEAFORGE_MATH_DIR is not set: point it at train.jsonl, test.jsonl (MATH-500) and SHA256SUMS")
    source = Path(raw)
    sums_file = source / "SHA256SUMS"
    if not sums_file.is_file():
        raise SystemExit(f"{sums_file} is missing (cd {source} && sha256sum train.jsonl test.jsonl > SHA256SUMS)")
    sums = {p[1].lstrip("*"): p[0] for p in (ln.split() for ln in sums_file.read_text().splitlines()) if len(p) == 2}
    for name in ("train.jsonl", "test.jsonl"):
        path = source / name
        if not path.is_file() or name not in sums:
            raise SystemExit(f"{path} must exist and be listed in {sums_file}")
        if file_sha256(path) != sums[name]:
            raise SystemExit(f"{path}: sha256 does not match {sums_file}")
    return source / "train.jsonl", source / "test.jsonl"


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def main() -> None:
    data, evald = problems.data_dir(), problems.eval_data_dir()
    data.mkdir(parents=True, exist_ok=True)
    evald.mkdir(parents=True, exist_ok=True)
    with open(data / "prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = os.environ.get("IDEAFORGE_MATH_SOURCE", "dir")
        if source == "builtin":
            train = val = HERE / "smoke_problems.jsonl"
        elif source == "dir":
            train, val = verified_math_dir()
        else:
            raise SystemExit(f"IDEAFORGE_MATH_SOURCE must be 'dir' or 'builtin', got {source!r}")
        write_rows(math_rows(train), data / "math_train.jsonl")
        write_rows(math_rows(val), evald / "math500.jsonl")
        dest = data / "policy-init"
        if not (dest / "config.json").is_file():
            name = os.environ.get("IDEAFORGE_POLICY", "Qwen/Qwen2.5-Math-1.5B")
            if name == TINY:
                build_tiny(dest)
            else:
                copy_cached_model(name, dest)
    print(f"prepared grpo_math: policy in {dest}, training problems in {data}, MATH-500 in {evald}", file=sys.stderr)


if __name__ == "__main__":
    main()
