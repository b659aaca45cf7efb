"""PROTECTED, EVAL-ONLY (training never sees this file). Draw the held-out problems into $IDEAFORGE_EVAL_DATA
and build the shared SFT checkpoint in $IDEAFORGE_DATA (idempotent, offline, deterministic).

The validation seed lives here, not in task.py, so training code cannot regenerate the held-out set.
"""

from __future__ import annotations

import torch

import task
from sft import ensure_sft, sft_accuracy

VAL_SEED = 2024


def write_val_set() -> None:
    path = task.val_path()
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts, answers = task.sample_problems(task.val_size(), torch.Generator().manual_seed(VAL_SEED))
    tmp = path.with_suffix(".tmp")
    torch.save({"prompts": prompts, "answers": answers}, tmp)
    tmp.replace(path)


def main() -> None:
    task.setup_threads()
    write_val_set()
    path = ensure_sft()
    print(f"SFT checkpoint {path} (held-out greedy accuracy {sft_accuracy()})")


if __name__ == "__main__":
    main()
