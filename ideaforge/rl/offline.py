"""Offline RL of the ideator from an ``ideaforge export`` (dataset dir or ideas.jsonl) with the GRPO trainer.

Prompts are the export's ``prompt`` column (what the ideator knew when it proposed each idea: env, metric,
baseline, parents), deduplicated. The reward of a sampled idea is :class:`ideaforge.rl.scoring.OfflineScorer`:
the execution reward of the nearest executed idea of the export (1-NN on character trigrams).
The policy is either a real model in a local directory (``model_path``; no download: ``local_files_only``)
or, without one, a tiny Llama built from a config with a word-level tokenizer fitted on the export.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ideaforge.rl.plots import plot_runs
from ideaforge.rl.policy import load_policy
from ideaforge.rl.scoring import OfflineScorer
from ideaforge.rl.trainer import RLConfig, RLResult, run_grpo
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)


def load_export(path: Path) -> list[dict]:
    """The rows of an export: ``path`` is the export dir, its ``dataset/`` dir, or an ``ideas.jsonl`` file."""
    path = Path(path)
    jsonl = path if path.suffix == ".jsonl" else path / "ideas.jsonl"
    if jsonl.is_file():
        rows = []
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{jsonl}:{n}: not a JSON row: {e}") from e
        return rows
    ds_dir = path if (path / "dataset_info.json").is_file() else path / "dataset"
    if (ds_dir / "dataset_info.json").is_file():
        from datasets import load_from_disk

        return list(load_from_disk(str(ds_dir)))
    raise FileNotFoundError(f"{path}: no ideas.jsonl and no saved dataset (run `ideaforge export` first)")


def train_offline(
    export: Path,
    config: RLConfig,
    work_dir: Path,
    model_path: Path | None = None,
    store: ObjectStore | None = None,
    mlflow_uri: str | None = None,
    min_similarity: float = 0.5,
) -> RLResult:
    """Run GRPO on an export's prompts rewarded by the nearest executed idea; plots go to ``work_dir/report``."""
    rows = load_export(export)
    scorer = OfflineScorer(rows, min_similarity=min_similarity)
    prompts = sorted({r["prompt"] for r in rows if r.get("prompt")})
    if not prompts:
        raise ValueError(f"{export}: no row has a prompt")
    ideas = [f"{r.get('title', '')} {r.get('text', '')}" for r in rows]
    model, tok = load_policy(model_path, prompts + ideas)
    if model_path is not None and getattr(tok, "chat_template", None):
        prompts = [[{"role": "user", "content": p}] for p in prompts]  # TRL applies the chat template
    result = run_grpo(
        model,
        tok,
        prompts,
        scorer,
        config,
        Path(work_dir),
        store=store,
        mlflow_uri=mlflow_uri,
        novelty_seed=ideas,
    )
    plot_runs({config.run_name: result.history}, Path(work_dir) / "report")
    return result
