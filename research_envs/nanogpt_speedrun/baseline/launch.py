"""PROTECTED. Start train_gpt.py under torchrun: one process per assigned GPU, or one CPU process."""

from __future__ import annotations

import os
import sys

import data
import prepare


def world_size() -> int:
    if not data.use_cuda():
        return 1
    import torch

    visible = torch.cuda.device_count()
    wanted = int(os.environ.get("IDEAFORGE_GPUS", str(visible)))
    return max(1, min(wanted, visible))


def main() -> None:
    prepare.main()  # idempotent: the runner prepares once per env, but each profile may need another dataset
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size()}",
        "train_gpt.py",
    ]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
