"""Checks on the evaluator's metric file: present, a bounded JSON object, the metric finite and plausible."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ideaforge.models import EnvSpec, FailureCategory
from ideaforge.run.protocol import number

MAX_METRIC_FILE_BYTES = 1024 * 1024


@dataclass
class MetricReading:
    """The metric (when acceptable), all finite numbers of the file, or the failure category and why."""

    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    category: FailureCategory | None = None
    error: str | None = None


def read_metric_file(path: Path, spec: EnvSpec) -> MetricReading:
    """Read ``path`` (a regular file, no symlink, at most 1 MiB) and check ``spec.metric`` in it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return MetricReading(category="eval_failed", error="the evaluator wrote no metric file")
    except OSError as e:
        return MetricReading(category="eval_failed", error=f"metric file unreadable: {e.strerror or e}")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_METRIC_FILE_BYTES + 1)
    if len(raw) > MAX_METRIC_FILE_BYTES:
        return MetricReading(category="eval_failed", error="metric file is larger than 1 MiB")
    try:
        data = json.loads(raw)
    except ValueError as e:
        return MetricReading(category="eval_failed", error=f"metric file is not valid JSON: {e}")
    return check_metrics(data, spec)


def check_metrics(data: object, spec: EnvSpec) -> MetricReading:
    """The category rules of PROTOCOL.md step 6 applied to a decoded metric object."""
    if not isinstance(data, dict) or spec.metric not in data:
        return MetricReading(category="eval_failed", error=f"metric file lacks {spec.metric!r}: {data!r}"[:500])
    metrics = {str(k)[:100]: x for k, v in data.items() if (x := number(v)) is not None and math.isfinite(x)}
    value = number(data[spec.metric])
    if value is None:
        return MetricReading(metrics=metrics, category="eval_failed", error=f"metric {spec.metric!r} is not a number")
    if not math.isfinite(value):
        return MetricReading(metrics=metrics, category="nan", error=f"metric {spec.metric!r} is {value}")
    lo, hi = spec.plausible_range
    if not lo <= value <= hi:
        return MetricReading(
            metrics=metrics,
            category="implausible_metric",
            error=f"{spec.metric} = {value:g} is outside the plausible range [{lo}, {hi}]",
        )
    return MetricReading(value=value, metrics=metrics)
