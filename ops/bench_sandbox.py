"""Time the sandbox adds per attempt: bubblewrap + own uid + cgroup versus the unsandboxed opt-out.

    sudo .venv/bin/python ops/bench_sandbox.py [--repeats 15] [--attempts 5]

Prints, for each mode (interleaved so machine load hits both alike):
- one command (``python -c pass``, then ``python -c "import torch"``) through ``run_sandboxed``;
- one whole toy_quad attempt through the real runner (prepare cached, train + evaluate = two sandboxes).
The difference of the medians is the sandbox's added time. Needs root (the sandbox's own requirement).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ideaforge.config import Settings
from ideaforge.models import RunRequest
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import load_env
from ideaforge.run import sandbox
from ideaforge.run.runner import ExperimentRunner
from ideaforge.run.sandbox import Box, Limits, run_sandboxed, scrubbed_env
from ideaforge.store.artifacts import LocalStore

ROOT = Path(__file__).resolve().parent.parent
MODES = ("bwrap", "unsafe")


def set_mode(mode: str) -> None:
    sandbox.check_sandbox.cache_clear()
    if mode == "unsafe":
        os.environ[sandbox.UNSAFE_VAR] = "1"
    else:
        os.environ.pop(sandbox.UNSAFE_VAR, None)
    assert sandbox.check_sandbox() == mode


def time_command(code: str, work: Path) -> float:
    t = time.perf_counter()
    res = run_sandboxed([sys.executable, "-c", code], Box(cwd=work, writable=[work]), scrubbed_env({}),
                        Limits(wall_s=120))
    assert res.returncode == 0, res
    return time.perf_counter() - t


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:8.1f} ms   min {xs[0] * 1000:8.1f} ms   max {xs[-1] * 1000:8.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--attempts", type=int, default=5)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the opt-out warns on every switch
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        for label, code in (("python -c pass", "pass"), ("python -c 'import torch'", "import torch")):
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    set_mode(mode)
                    times[mode].append(time_command(code, work))
            print(f"{label}:")
            for mode in MODES:
                print(f"  {mode:7s} {summary(times[mode])}")
            added = statistics.median(times["bwrap"]) - statistics.median(times["unsafe"])
            print(f"  sandbox adds {added * 1000:.1f} ms per command (difference of medians)")

        envs = ROOT / "tests" / "fixtures" / "envs"
        settings = Settings(home=Path(tmp) / "home", env_paths=[envs], train_slots=1)
        store = LocalStore(Path(tmp) / "artifacts")
        code = store.put_bytes(pack_tree(load_env("toy_quad", [envs]).baseline), "code")
        runner = ExperimentRunner(settings, store)
        attempts: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(args.attempts + 1):
            for mode in MODES:
                set_mode(mode)
                req = RunRequest(campaign="bench", idea_id=f"bench-{i}", env="toy_quad", code=code, profile="smoke")
                t = time.perf_counter()
                res = asyncio.run(runner.run(req))
                assert res.status == "ok", res.error
                if i:  # the first round prepares the data cache
                    attempts[mode].append(time.perf_counter() - t)
        print("toy_quad attempt (train + evaluate, 2 sandboxes):")
        for mode in MODES:
            print(f"  {mode:7s} {summary(attempts[mode])}")
        added = statistics.median(attempts["bwrap"]) - statistics.median(attempts["unsafe"])
        print(f"  sandbox adds {added * 1000:.1f} ms per attempt (difference of medians)")
        print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
