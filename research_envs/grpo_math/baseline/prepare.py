"""PROTECTED. Warm the caches: load the problem sets once (and, for Hugging Face policies, the model files)."""

from __future__ import annotations

import os

import problems


def main() -> None:
    train, val = problems.train_problems(), problems.val_problems()
    print(f"{len(train)} training problems, {len(val)} validation problems ({problems.source()})")
    if os.environ.get("IDEAFORGE_POLICY", "") not in ("", "tiny") or problems.source() == "hub":
        from policy import load_policy

        load_policy()  # downloads the weights into the HF cache when online


if __name__ == "__main__":
    main()
