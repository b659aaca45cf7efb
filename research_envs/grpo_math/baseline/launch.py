"""PROTECTED. Start the clock, run grpo.py, and enforce the wall-clock budget.

The budget (IDEAFORGE_TIME_BUDGET_S) counts from here, model loading and vLLM start-up included. grpo.py gets
IDEAFORGE_DEADLINE (unix time) and must save its policy by then; SAVE_GRACE_S later the training process
group is killed and the run fails. A GPU profile on a machine without CUDA stops here, before any training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import problems  # noqa: E402

SAVE_GRACE_S = float(os.environ.get("IDEAFORGE_SAVE_GRACE_S", "120.0"))  # a profile setting; training cannot change it
POLL_S = 1.0


def die_with_parent() -> None:
    """In the child: get SIGKILL when this launcher dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def kill_tree(child: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the training process, its process group and every descendant, then reap it."""
    for pid in [child.pid, *descendants(child.pid)]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:
        pass
    child.wait()


def main() -> None:
    problems.require_device()
    t0 = time.time()
    budget = problems.time_budget_s()
    deadline = t0 + budget
    out = problems.out_dir()
    env = {**os.environ, "IDEAFORGE_DEADLINE": repr(deadline)}
    child = subprocess.Popen([sys.executable, "grpo.py"], cwd=HERE, env=env, start_new_session=True, preexec_fn=die_with_parent)

    def forward(signum: int, _frame) -> None:
        kill_tree(child, signum)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while child.poll() is None:
        if time.time() > deadline + SAVE_GRACE_S:
            kill_tree(child, signal.SIGKILL)
            raise SystemExit(f"training ran past the {budget:.0f}s budget plus {SAVE_GRACE_S:.0f}s to save: killed")
        time.sleep(POLL_S)
    elapsed = time.time() - t0
    if child.returncode != 0:
        raise SystemExit(f"grpo.py exited with status {child.returncode}")
    (out / "launch.json").write_text(json.dumps({"budget_s": budget, "elapsed_s": round(elapsed, 2)}))
    print(f"training finished in {elapsed:.1f}s of a {budget:.0f}s budget", flush=True)


if __name__ == "__main__":
    main()
