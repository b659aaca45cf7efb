"""PROTECTED. Greedy-decoding accuracy of the GRPO policy on the fixed held-out addition problems.

Reads $IDEAFORGE_OUT/policy.pt (a Policy state_dict) and writes {"val_accuracy", "sft_val_accuracy",
"improvement"} to $IDEAFORGE_METRIC_FILE.
"""

from __future__ import annotations

import json
import os

import torch

import task
from policy import Policy, accuracy
from sft import sft_accuracy


def main() -> None:
    task.setup_threads()
    path = task.out_dir() / "policy.pt"
    if not path.is_file():
        raise SystemExit(f"no trained policy at {path}: grpo.py must save it there")
    policy = Policy()
    policy.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    acc = accuracy(policy, *task.val_problems())
    metrics = {"val_accuracy": acc}
    start = sft_accuracy()
    if start is not None:
        metrics |= {"sft_val_accuracy": start, "improvement": acc - start}
    out = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not out:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    with open(out, "w") as f:
        json.dump(metrics, f)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
