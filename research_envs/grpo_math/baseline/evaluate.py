"""PROTECTED. The paper's MATH-500 evaluation of the trained policy.

Loads the weights grpo.py saved to $IDEAFORGE_OUT/policy/ (safetensors only; its architecture must equal the
initial policy's) with the pristine tokenizer of the initial policy, samples one response per MATH-500 problem
as the paper does (temperature 1.0, top-p 1.0, up to IDEAFORGE_MAX_TOKENS tokens, stop after </answer>, fixed
seed), scores each with the r1_zero reward and writes {"val_accuracy", "format_rate", "val_problems"} to
$IDEAFORGE_METRIC_FILE. vLLM on a GPU, transformers generate on the CPU (smoke profile).
Does not rely on the working directory: it puts its own directory on sys.path (runs under ``python -I``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import problems  # noqa: E402
from answer import r1_zero_reward  # noqa: E402
from engine import HFEngine, Sampling, VLLMEngine, format_prompt, load_policy, load_tokenizer  # noqa: E402

EVAL_SEED = 0
VLLM_GPU_MEMORY = 0.85
ARCH_KEYS = (
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings",
)  # fmt: skip


def fail(message: str) -> None:
    print(f"evaluation failed: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def check_policy(saved: Path, init: Path) -> None:
    if not (saved / "config.json").is_file():
        fail(f"no trained policy at {saved}: grpo.py must save it there (save_pretrained)")
    if [*saved.glob("*.bin"), *saved.glob("*.pt"), *saved.glob("*.pth")]:
        fail(f"{saved} holds pickled weights; save safetensors only")
    if not [*saved.glob("*.safetensors")]:
        fail(f"{saved} has no .safetensors weights")
    a = json.loads((saved / "config.json").read_text())
    b = json.loads((init / "config.json").read_text())
    changed = [k for k in ARCH_KEYS if a.get(k) != b.get(k)]
    if changed:
        fail(f"the saved policy's architecture differs from the initial policy's in {changed}")


def main() -> None:
    cuda = problems.require_device()
    init = problems.init_policy_dir()
    saved = problems.out_dir() / "policy"
    check_policy(saved, init)
    tok = load_tokenizer(init)
    rows = problems.val_problems()
    samples = int(os.environ.get("IDEAFORGE_EVAL_SAMPLES", "1"))
    if cuda:
        engine = VLLMEngine(saved, init, VLLM_GPU_MEMORY, EVAL_SEED)
    else:
        import torch

        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
        engine = HFEngine(load_policy(saved, torch.device("cpu")), tok)
    prompts = [format_prompt(tok, r["problem"]) for r in rows]
    groups = engine.generate(prompts, samples, Sampling(1.0, 1.0, problems.max_tokens(), EVAL_SEED))
    scores = [r1_zero_reward(resp, r["answer"]) for group, r in zip(groups, rows, strict=True) for resp in group]
    metrics = {
        "val_accuracy": sum(s["reward"] for s in scores) / len(scores),
        "format_rate": sum(s["format_reward"] for s in scores) / len(scores),
        "val_problems": float(len(rows)),
        "samples_per_problem": float(samples),
    }
    dest = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not dest:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    Path(dest).write_text(json.dumps(metrics))
    print(json.dumps(metrics), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no atexit hooks of imported code run after the metric is written


if __name__ == "__main__":
    main()
