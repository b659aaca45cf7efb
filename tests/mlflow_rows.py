"""Test helper: read back what the tracker wrote to MLflow, as plain rows."""

from __future__ import annotations

from typing import Any

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from ideaforge.names import experiment_name
from ideaforge.track.tracker import EPOCH_RUN_TAG, KEY_TAG, KIND_TAG, PARENT_TAG


def campaign_runs(client: MlflowClient, campaign: str, kind: str = "idea") -> list[dict[str, Any]]:
    """Active runs of ``kind`` (idea/epoch/report) in the campaign's experiment, sorted by key."""
    exp = client.get_experiment_by_name(experiment_name(campaign))
    if exp is None:
        return []
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = [
        {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "key": r.data.tags.get(KEY_TAG),
            "idea_id": r.data.tags.get("ideaforge.idea_id"),
            "epoch": int(r.data.tags["ideaforge.epoch"]) if "ideaforge.epoch" in r.data.tags else None,
            "parent_run_id": r.data.tags.get(PARENT_TAG) or r.data.tags.get(EPOCH_RUN_TAG),
            "tags": dict(r.data.tags),
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "artifact_uri": r.info.artifact_uri,
        }
        for r in runs
    ]
    return sorted(rows, key=lambda row: (row["key"] or "", row["run_id"]))
