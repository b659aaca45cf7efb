"""PROTECTED. Build the shared SFT checkpoint in $IDEAFORGE_DATA (idempotent, offline, deterministic)."""

from __future__ import annotations

import task
from sft import ensure_sft, sft_accuracy


def main() -> None:
    task.setup_threads()
    path = ensure_sft()
    print(f"SFT checkpoint {path} (held-out greedy accuracy {sft_accuracy()})")


if __name__ == "__main__":
    main()
