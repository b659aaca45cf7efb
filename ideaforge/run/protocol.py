"""The training output protocol (research_envs/PROTOCOL.md): progress and checkpoint lines, logs, curves."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ideaforge.models import CurvePoint, Progress

PROGRESS_PREFIX = "IDEAFORGE_PROGRESS "
CHECKPOINT_PREFIX = "IDEAFORGE_CHECKPOINT "
MAX_CURVE_POINTS = 500
MAX_RAW_POINTS = 100_000
ERROR_TAIL_LINES = 40
ERROR_TAIL_CHARS = 4000


def is_protocol_line(line: str) -> bool:
    return line.startswith((PROGRESS_PREFIX, CHECKPOINT_PREFIX))


def number(v: Any) -> float | None:
    """A JSON number (NaN/inf included) as float; anything else (bool, str, null) -> None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


@dataclass
class CheckpointLine:
    step: int
    path: str


@dataclass
class TrainState:
    """What the training's protocol lines told us so far."""

    progress: Progress
    t0: float = field(default_factory=time.monotonic)
    curve: list[CurvePoint] = field(default_factory=list)
    nan_step: int | None = None

    def on_progress(self, data: dict[str, Any]) -> None:
        """Fold one progress payload in: curve points, the NaN step, the heartbeat progress."""
        p = self.progress
        step = int(data.get("step", p.step))
        loss = number(data.get("loss"))
        for k, v in data.items():
            x = number(v)
            # non-finite values stay out of the curve: they do not survive JSON payloads
            if k not in ("step", "elapsed_s") and x is not None and math.isfinite(x):
                if len(self.curve) < MAX_RAW_POINTS:
                    self.curve.append(CurvePoint(step=step, value=x, key="train_loss" if k == "loss" else str(k)[:64]))
        if loss is not None and not math.isfinite(loss) and self.nan_step is None:
            self.nan_step = step
        finite = loss if loss is not None and math.isfinite(loss) else None
        self.progress = p.model_copy(update={"step": step, "loss": finite, "elapsed_s": self.elapsed()})

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 3)


def parse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """``("progress" | "checkpoint", payload)`` for a protocol line, None for any other line.

    Raises ValueError for a protocol line whose payload is not a JSON object.
    """
    for kind, prefix in (("progress", PROGRESS_PREFIX), ("checkpoint", CHECKPOINT_PREFIX)):
        if line.startswith(prefix):
            data = json.loads(line[len(prefix) :])
            if not isinstance(data, dict):
                raise ValueError("protocol payload is not a JSON object")
            return kind, data
    return None


def checkpoint_of(data: dict[str, Any], default_step: int) -> CheckpointLine:
    if "path" not in data:
        raise ValueError("checkpoint line without a path")
    return CheckpointLine(step=int(data.get("step", default_step)), path=str(data["path"]))


def downsample(points: list[CurvePoint], cap: int = MAX_CURVE_POINTS) -> list[CurvePoint]:
    """At most ``cap`` points per key, evenly spaced, always keeping each key's first and last point."""
    by_key: dict[str, list[CurvePoint]] = {}
    for p in points:
        by_key.setdefault(p.key, []).append(p)
    per_key = max(2, cap // max(1, len(by_key)))
    out: list[CurvePoint] = []
    for pts in by_key.values():
        if len(pts) <= per_key:
            out.extend(pts)
        else:
            idx = sorted({round(i * (len(pts) - 1) / (per_key - 1)) for i in range(per_key)})
            out.extend(pts[i] for i in idx)
    return out


def cap_text(data: bytes, cap: int) -> bytes:
    """Head and tail of ``data`` when it is longer than ``cap`` bytes."""
    if len(data) <= cap:
        return data
    head, tail = cap // 5, cap - cap // 5
    return data[:head] + f"\n[... {len(data) - cap} bytes omitted ...]\n".encode() + data[-tail:]


def read_capped(path: Path, cap: int) -> bytes:
    """Head and tail of a (possibly huge) log file, reading at most ``cap`` bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            return f.read()
        head, tail = cap // 5, cap - cap // 5
        first = f.read(head)
        f.seek(size - tail)
        return first + f"\n[... {size - cap} bytes omitted ...]\n".encode() + f.read(tail)


def error_tail(log_path: Path) -> str:
    """Last lines of a log without protocol lines: the traceback of a crash."""
    if not log_path.is_file():
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if not is_protocol_line(ln)]
    return "\n".join(lines[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]
