"""PROTECTED. Greedy-decoding accuracy of the trained policy on the fixed validation problems.

Loads the policy saved by grpo.py to $IDEAFORGE_OUT/policy/, answers each validation problem greedily
(IDEAFORGE_MAX_NEW_TOKENS tokens at most), checks the last \\boxed{} answer with answer.py and writes
{"val_accuracy", "val_problems"} to $IDEAFORGE_METRIC_FILE.
"""

from __future__ import annotations

import json
import os

import torch

import problems
from answer import score
from policy import generate, load_policy, texts

BATCH = 32


def main() -> None:
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    path = problems.out_dir() / "policy"
    if not (path / "policy.json").is_file():
        raise SystemExit(f"no trained policy at {path}: grpo.py must save it there with Backend.save")
    pol = load_policy(path)
    rows = problems.val_problems()
    hits = 0.0
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        ids, mask, comp, cmask = generate(
            pol, [pol.encode_prompt(r["problem"]) for r in chunk], problems.max_new_tokens(), greedy=True
        )
        hits += sum(score(t, r["answer"]) for t, r in zip(texts(pol, comp, cmask), chunk, strict=True))
    metrics = {"val_accuracy": hits / len(rows), "val_problems": float(len(rows))}
    out = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not out:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    with open(out, "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
