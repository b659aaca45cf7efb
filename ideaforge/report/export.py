"""RL dataset export: one row per executed idea, as a Hugging Face ``datasets.Dataset`` plus JSONL.

``<out_dir>/dataset/`` (``save_to_disk``; read back with ``datasets.load_from_disk``) and
``<out_dir>/ideas.jsonl`` hold the same rows. The reward is :func:`ideaforge.rewards.compute_reward`
(improvement over the baseline in the env's direction, scaled and clipped; failures get the failure reward);
it is None for successful ideas when the campaign has no baseline metric.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ideaforge.models import CampaignState, EnvSpec, IdeaSummary
from ideaforge.names import parse_idea_id
from ideaforge.rewards import compute_reward
from ideaforge.store.artifacts import ObjectStore, StorageError

log = logging.getLogger(__name__)

DATASET_DIR = "dataset"
JSONL_NAME = "ideas.jsonl"


def campaign_of(archive: list[IdeaSummary]) -> str:
    """The campaign name inside the idea ids (``campaign-<name>/e000/i00``), or 'campaign'."""
    for s in archive:
        try:
            return parse_idea_id(s.idea_id).campaign
        except ValueError:
            continue
    return "campaign"


def _features():
    from datasets import Features, Sequence, Value

    return Features(
        {
            "campaign": Value("string"),
            "env": Value("string"),
            "metric_name": Value("string"),
            "direction": Value("string"),
            "epoch": Value("int32"),
            "idea_id": Value("string"),
            "title": Value("string"),
            "text": Value("string"),
            "origin": Value("string"),
            "parent_ids": Sequence(Value("string")),
            "seed": Value("int64"),
            "status": Value("string"),
            "category": Value("string"),
            "metric": Value("float64"),
            "confirmed_metrics": Sequence(Value("float64")),
            "reward": Value("float64"),
            "baseline_metric": Value("float64"),
            "diff": Value("string"),
            "prompt": Value("string"),
        }
    )


def prompt_context(
    spec: EnvSpec, s: IdeaSummary, by_id: dict[str, IdeaSummary], baseline: float | None
) -> str:
    """What the ideator knew when proposing ``s``: the env, its metric, the baseline and the parent ideas."""
    better = "lower" if spec.direction == "min" else "higher"
    lines = [
        f"Research environment: {spec.name}",
        spec.description.strip(),
        "",
        f"Metric: {spec.metric} ({better} is better). Baseline: {baseline if baseline is not None else 'unknown'}.",
        f"Editable files: {', '.join(spec.editable_files)}",
    ]
    parents = [by_id[p] for p in s.parent_ids if p in by_id]
    if parents:
        lines += ["", "Build on these earlier ideas:"]
        for p in parents:
            shown = f"{p.metric:.6g}" if p.metric is not None else p.category or p.status
            lines.append(f"- {p.title} ({spec.metric} = {shown}): {p.text}")
    return "\n".join(lines)


def export_rows(
    state: CampaignState, spec: EnvSpec, store: ObjectStore, campaign: str = "", missing_ok: bool = False
) -> list[dict[str, Any]]:
    """The rows of :func:`export_dataset`, in archive order (epoch, then idea id)."""
    by_id = {s.idea_id: s for s in state.archive}
    baseline = state.baseline_metric
    rows: list[dict[str, Any]] = []
    for s in sorted(state.archive, key=lambda s: (s.epoch, s.idea_id)):
        ok = s.status == "ok" and s.metric is not None
        reward = (
            compute_reward(s.metric, baseline, spec) if (not ok or baseline is not None) else None
        )  # a success without baseline has no defined improvement
        rows.append(
            {
                "campaign": campaign,
                "env": spec.name,
                "metric_name": spec.metric,
                "direction": spec.direction,
                "epoch": s.epoch,
                "idea_id": s.idea_id,
                "title": s.title,
                "text": s.text,
                "origin": s.origin,
                "parent_ids": list(s.parent_ids),
                "seed": s.seed,
                "status": s.status,
                "category": s.category,
                "metric": s.metric if s.metric is not None and math.isfinite(s.metric) else None,
                "confirmed_metrics": [m for m in s.confirmed_metrics if math.isfinite(m)],
                "reward": reward,
                "baseline_metric": baseline,
                "diff": _diff_text(s, store, missing_ok),
                "prompt": prompt_context(spec, s, by_id, baseline),
            }
        )
    return rows


def _diff_text(s: IdeaSummary, store: ObjectStore, missing_ok: bool) -> str:
    if s.diff is None:
        return ""
    try:
        return store.get_bytes(s.diff).decode(errors="replace")
    except StorageError as e:
        if not missing_ok:
            raise StorageError(
                f"diff of idea {s.idea_id} cannot be read: {e} (export with missing_ok=True)"
            ) from e
        log.warning("diff of %s unreadable, exported as '': %s", s.idea_id, e)
        return ""


def export_dataset(
    state: CampaignState,
    spec: EnvSpec,
    store: ObjectStore,
    out_dir: Path,
    campaign: str | None = None,
    missing_ok: bool = False,
) -> Path:
    """Write the dataset (``save_to_disk``) and its JSONL copy under ``out_dir``; returns the dataset dir.

    ``campaign`` defaults to the name inside the idea ids. A diff missing from the store raises
    StorageError unless ``missing_ok`` (then that row's diff is '').
    """
    from datasets import Dataset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = export_rows(state, spec, store, campaign or campaign_of(state.archive), missing_ok)
    with (out_dir / JSONL_NAME).open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    features = _features()
    ds = (
        Dataset.from_list(rows, features=features)
        if rows
        else Dataset.from_dict({k: [] for k in features}, features=features)
    )
    target = out_dir / DATASET_DIR
    ds.save_to_disk(str(target), num_shards=1)  # an empty dataset saved with 0 shards cannot be loaded
    log.info("exported %d ideas to %s", len(rows), target)
    return target
