"""Reward of an executed idea for RL export and the campaign archive.

Pure and stdlib-only (workflow code calls it): improvement over the baseline in the env's direction,
times ``spec.reward.scale``, clipped to ``±spec.reward.clip``; a failure (no metric, or a non-finite one)
gets ``spec.reward.failure_reward``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for type hints: keep this module import-light
    from ideaforge.models import EnvSpec


def compute_reward(metric: float | None, baseline: float | None, spec: EnvSpec) -> float:
    """Reward for ``metric`` against ``baseline`` under ``spec``'s direction and reward settings.

    ``metric`` None (the idea failed) or NaN/inf -> ``spec.reward.failure_reward``.
    Raises ValueError when a real metric comes without a finite baseline to compare it to.
    """
    r = spec.reward
    if metric is None or not math.isfinite(metric):
        return float(r.failure_reward)
    if baseline is None or not math.isfinite(baseline):
        raise ValueError(
            f"cannot reward metric {metric}: baseline metric is {baseline!r} (need a finite number)"
        )
    if spec.direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {spec.direction!r}")
    improvement = (baseline - metric) if spec.direction == "min" else (metric - baseline)
    clip = abs(float(r.clip))
    return float(max(-clip, min(clip, improvement * r.scale)))
