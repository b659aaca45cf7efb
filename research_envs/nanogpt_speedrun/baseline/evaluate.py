"""PROTECTED. The paper's locked evaluation: single-token-prediction loss on the fixed FineWeb validation tokens.

Rebuilds ``GPT(GPTConfig(**config))`` from the (editable) model.py and the weights training saved to
$IDEAFORGE_OUT/model.pt (loaded with ``weights_only=True``, checked against the digest launch.py recorded),
then feeds every validation window one token at a time through ``model.forward_with_cache``: the model never
sees a token before it has predicted it, whatever its code does. The cross-entropy over the full returned
vocabulary is computed here, in float32, over the first IDEAFORGE_VAL_TOKENS (10,485,760) validation tokens.
Windows are split over the visible GPUs. When the loss reaches IDEAFORGE_TARGET_LOSS (3.28), the snapshots
recorded by launch.py are searched for the earliest one that reaches it: ``time_to_target_s`` is the time
launch.py first saw that snapshot. Writes {"val_loss", "inv_val_loss", ...} to $IDEAFORGE_METRIC_FILE.
Does not rely on the working directory: it puts its own directory on sys.path (runs under ``python -I``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402

CUDA_BATCH = 256  # sequences decoded together per GPU
CPU_BATCH = 16
DEFAULT_TARGET = 3.28


class EvalError(SystemExit):
    """A model or its outputs the evaluator cannot score (exit status 2)."""

    def __init__(self, message: str) -> None:
        print(f"evaluation failed: {message}", file=sys.stderr, flush=True)
        super().__init__(2)


def target_loss() -> float:
    return float(os.environ.get("IDEAFORGE_TARGET_LOSS", str(DEFAULT_TARGET)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(path: Path, device: torch.device) -> torch.nn.Module:
    """The trained model: model.py's classes with the saved config and weights (no pickled objects)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config, state = saved["config"], saved["state_dict"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the idea's failure
        raise EvalError(f"cannot read {path} as {{'config': dict, 'state_dict': tensors}}: {e}") from e
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(**config))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EvalError(f"saved weights do not fit GPT(GPTConfig(**config)): {e}") from e
    if not hasattr(model, "forward_with_cache"):
        raise EvalError("GPT has no forward_with_cache(idx, caches): the evaluator predicts one token at a time")
    return model.to(device).eval()


def step_logits(model: torch.nn.Module, token: torch.Tensor, caches):
    """Logits (B, V) for one position; V >= the GPT-2 vocabulary."""
    out = model.forward_with_cache(token, caches)
    if not isinstance(out, tuple | list) or len(out) != 2:
        raise EvalError("forward_with_cache(idx, caches) must return (logits, caches)")
    logits, caches = out
    B = token.shape[0]
    if not isinstance(logits, torch.Tensor) or logits.shape[0] != B or logits.numel() // B < data.VOCAB_SIZE:
        raise EvalError(f"forward_with_cache gave logits of shape {getattr(logits, 'shape', None)}, want (B, 1, V)")
    logits = logits.reshape(B, -1).float()
    if logits.shape[1] < data.VOCAB_SIZE:
        raise EvalError(f"logits cover {logits.shape[1]} tokens, fewer than the vocabulary ({data.VOCAB_SIZE})")
    return logits, caches


@torch.no_grad()
def window_loss_sum(model: torch.nn.Module, windows: torch.Tensor, device: torch.device, batch: int) -> tuple[float, int]:
    """Summed cross-entropy of every target token of ``windows`` (N, 2, T), fed one position at a time."""
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        x, y = chunk[:, 0].to(device), chunk[:, 1].to(device)
        caches = None
        acc = torch.zeros((), dtype=torch.float64, device=device)
        for t in range(x.shape[1]):
            logits, caches = step_logits(model, x[:, t : t + 1], caches)
            acc += F.cross_entropy(logits, y[:, t], reduction="sum").double()
        total += acc.item()
        count += y.numel()
    return total, count


@torch.no_grad()
def forward_gap(model: torch.nn.Module, windows: torch.Tensor, device: torch.device) -> float:
    """|mean loss of model(x) - mean single-token loss| on two windows: a diagnostic that forward and
    forward_with_cache compute the same model (a gap means the two paths disagree)."""
    few = windows[:2]
    single, n = window_loss_sum(model, few, device, 2)
    out = model(few[:, 0].to(device))
    logits = (out[0] if isinstance(out, tuple | list) else out).float()
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), few[:, 1].to(device).reshape(-1)).item()
    return abs(full - single / n)


def _worker(rank: int, world: int, path: str, result_dir: str) -> None:
    device = torch.device(f"cuda:{rank}")
    torch.cuda.set_device(device)
    model = load_model(Path(path), device)
    total, count = window_loss_sum(model, data.val_windows()[rank::world], device, CUDA_BATCH)
    (Path(result_dir) / f"{rank}.json").write_text(json.dumps([total, count]))


def val_loss(path: Path, cuda: bool) -> float:
    """Mean single-token-prediction loss of the weights in ``path`` on the validation windows."""
    if not cuda:
        model = load_model(path, torch.device("cpu"))
        total, count = window_loss_sum(model, data.val_windows(), torch.device("cpu"), CPU_BATCH)
        return total / count
    world = torch.cuda.device_count()
    if world == 1:
        model = load_model(path, torch.device("cuda:0"))
        total, count = window_loss_sum(model, data.val_windows(), torch.device("cuda:0"), CUDA_BATCH)
        return total / count
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, str(path), tmp), nprocs=world, join=True)
        parts = [json.loads((Path(tmp) / f"{r}.json").read_text()) for r in range(world)]
    return sum(p[0] for p in parts) / sum(p[1] for p in parts)


def launch_record(out: Path, model_path: Path) -> dict:
    try:
        record = json.loads((out / "launch.json").read_text())
    except (OSError, ValueError) as e:
        raise EvalError(f"no launch record {out / 'launch.json'} (training must run through launch.py): {e}") from e
    if record.get("model_sha256") != sha256(model_path):
        raise EvalError("model.pt changed after training ended (digest differs from launch.json)")
    return record


def time_to_target(out: Path, record: dict, final_loss: float, target: float, cuda: bool) -> float | None:
    """Seconds from launch until the earliest snapshot launch.py saw whose loss is <= target (binary search
    over snapshots in the order they appeared; the loss is taken to fall over time). None if not reached."""
    if final_loss > target:
        return None
    snaps = [s for s in record.get("snapshots", []) if (out / "snapshots" / s["file"]).is_file()]
    lo, hi, found = 0, len(snaps) - 1, float(record["elapsed_s"])
    while lo <= hi:
        mid = (lo + hi) // 2
        path = out / "snapshots" / snaps[mid]["file"]
        if sha256(path) != snaps[mid]["sha256"]:
            raise EvalError(f"snapshot {path.name} changed after launch.py first saw it")
        loss = val_loss(path, cuda)
        print(f"snapshot {path.name} (seen at {snaps[mid]['seen_s']}s): val_loss {loss:.4f}", flush=True)
        if loss <= target:
            found, hi = float(snaps[mid]["seen_s"]), mid - 1
        else:
            lo = mid + 1
    return found


def main() -> None:
    cuda = data.require_device()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the paper's evaluation runs in full float32
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    out = data.out_dir()
    path = out / "model.pt"
    if not path.is_file():
        raise EvalError(f"no trained model at {path}: train_gpt.py must save it there")
    record = launch_record(out, path)
    loss = val_loss(path, cuda)
    if not math.isfinite(loss):
        raise EvalError(f"validation loss is {loss}")
    device = torch.device("cuda:0" if cuda else "cpu")
    model = load_model(path, device)
    windows = data.val_windows()
    target = target_loss()
    reached = time_to_target(out, record, loss, target, cuda)
    metrics = {
        "val_loss": loss,
        "inv_val_loss": 1.0 / loss,
        "params": float(sum(p.numel() for p in model.parameters())),
        "eval_tokens": float(windows[:, 1].numel()),
        "train_elapsed_s": float(record["elapsed_s"]),
        "forward_gap": forward_gap(model, windows, device),
        "target_loss": target,
        "reached_target": 0.0 if reached is None else 1.0,
    }
    if reached is not None:
        metrics["time_to_target_s"] = reached
    dest = os.environ.get("IDEAFORGE_METRIC_FILE")
    if not dest:
        raise SystemExit("IDEAFORGE_METRIC_FILE is not set")
    Path(dest).write_text(json.dumps(metrics))
    print(json.dumps(metrics), flush=True)
    sys.stdout.flush()
    os._exit(0)  # no atexit hooks of imported model code run after the metric is written


if __name__ == "__main__":
    main()
