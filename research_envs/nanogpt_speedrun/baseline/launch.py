"""PROTECTED. Start the clock, run train_gpt.py under torchrun, and enforce the wall-clock budget.

The budget (IDEAFORGE_TIME_BUDGET_S, the paper's 1500 s) counts from here: process start-up, compilation and
training all count. Training gets IDEAFORGE_DEADLINE (unix time) and must stop and save by then; after
SAVE_GRACE_S more seconds the whole training process group is killed and the run fails. While training runs,
this launcher notes when each snapshot in $IDEAFORGE_OUT/snapshots/ first appears and its digest then; it
writes those times (not the ones training claims) to $IDEAFORGE_OUT/launch.json, from which evaluate.py finds the time to the
target loss. A GPU profile on a machine without CUDA stops here, before any training.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data  # noqa: E402

SAVE_GRACE_S = float(os.environ.get("IDEAFORGE_SAVE_GRACE_S", "60.0"))  # a profile setting; training cannot change it
POLL_S = 1.0


def world_size() -> int:
    if not data.require_device():
        return 1
    import torch

    visible = torch.cuda.device_count()
    wanted = int(os.environ.get("IDEAFORGE_GPUS", str(visible)))
    if wanted > visible:
        raise SystemExit(f"this profile needs {wanted} GPUs (IDEAFORGE_GPUS) but only {visible} are visible")
    return wanted


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    nproc = world_size()
    t0 = time.time()
    budget = data.time_budget_s()
    deadline = t0 + budget
    out = data.out_dir()
    snapdir = out / "snapshots"
    env = {**os.environ, "IDEAFORGE_DEADLINE": repr(deadline)}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train_gpt.py"]
    child = subprocess.Popen(argv, cwd=HERE, env=env, start_new_session=True, preexec_fn=die_with_parent)

    def forward(signum: int, _frame) -> None:
        kill_tree(child, signum)
        sys.exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    seen: dict[str, tuple[float, str]] = {}  # snapshot name -> (seconds since start, sha256 when first seen)
    overran = False
    while child.poll() is None:
        now = time.time()
        if snapdir.is_dir():
            for p in sorted(snapdir.glob("step-*.pt")):
                if p.name not in seen:
                    seen[p.name] = (now - t0, sha256(p))
        if now > deadline + SAVE_GRACE_S:
            overran = True
            kill_tree(child, signal.SIGKILL)
            break
        time.sleep(POLL_S)
    elapsed = time.time() - t0
    if overran:
        raise SystemExit(f"training ran past the {budget:.0f}s budget plus {SAVE_GRACE_S:.0f}s to save: killed")
    if child.returncode != 0:
        raise SystemExit(f"training exited with status {child.returncode}")
    model = out / "model.pt"
    if not model.is_file():
        raise SystemExit(f"training exited without saving {model}")
    snapshots = [
        {"file": name, "seen_s": round(at, 2), "sha256": digest} for name, (at, digest) in sorted(seen.items(), key=lambda kv: kv[1])
    ]
    record = {
        "budget_s": budget,
        "elapsed_s": round(elapsed, 2),
        "gpus": nproc,
        "model_sha256": sha256(model),
        "snapshots": snapshots,
    }
    (out / "launch.json").write_text(json.dumps(record, indent=1))
    print(f"training finished in {elapsed:.1f}s of a {budget:.0f}s budget ({len(snapshots)} snapshots)", flush=True)


if __name__ == "__main__":
    main()
