"""RL dataset export and the reward function: round trip through datasets.load_from_disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import load_from_disk

from ideaforge.models import ArtifactRef, CampaignState, EnvSpec, IdeaSummary, Reward
from ideaforge.names import idea_id
from ideaforge.report.export import JSONL_NAME, export_dataset
from ideaforge.rewards import compute_reward
from ideaforge.store.artifacts import LocalStore, StorageError

C = "exp"
DESCRIPTION = "Char-level GPT on Shakespeare; lower validation loss is better."


def _spec(direction: str = "min", scale: float = 10.0, clip: float = 5.0, failure: float = -1.0) -> EnvSpec:
    return EnvSpec(
        name="toy",
        description=DESCRIPTION,
        editable_files=["train.py"],
        protected_files=["eval.py"],
        run_command=["python", "train.py"],
        eval_command=["python", "eval.py"],
        metric="val_loss",
        direction=direction,  # type: ignore[arg-type]
        plausible_range=(0.0, 10.0),
        reward=Reward(scale=scale, clip=clip, failure_reward=failure),
    )


def _s(e: int, i: int, metric: float | None, diff: ArtifactRef | None = None, **kw) -> IdeaSummary:
    ok = metric is not None
    return IdeaSummary(
        idea_id=idea_id(C, e, i),
        epoch=e,
        title=f"idea {e}.{i}",
        text=f"do thing {e}.{i}",
        origin=kw.pop("origin", "explore"),
        status="ok" if ok else "failed",
        category=None if ok else "crashed",
        metric=metric,
        diff=diff,
        **kw,
    )


def _state(store: LocalStore, baseline: float | None = 2.0) -> CampaignState:
    d1 = store.put_text("diff --git a/train.py b/train.py\n+lr = 3e-3\n", "diff")
    d2 = store.put_text("diff --git a/train.py b/train.py\n+rope = True\n", "diff")
    archive = [
        _s(0, 0, 2.0, origin="baseline"),
        _s(1, 0, 1.9, d1),
        _s(1, 1, 1.0, d2),  # huge gain: clipped
        _s(1, 2, 2.5),  # much worse: clipped the other way
        _s(1, 3, None, d1),  # failed
        _s(2, 0, 1.95, d2, origin="exploit", parent_ids=[idea_id(C, 1, 0)], confirmed_metrics=[1.96]),
    ]
    return CampaignState(next_epoch=3, archive=archive, baseline_metric=baseline)


# ---------------------------------------------------------------------- compute_reward


def test_reward_direction_scale_clip_and_failures() -> None:
    lo, hi = _spec("min"), _spec("max")
    assert compute_reward(1.9, 2.0, lo) == pytest.approx(1.0)
    assert compute_reward(1.9, 2.0, hi) == pytest.approx(-1.0)
    assert compute_reward(2.1, 2.0, hi) == pytest.approx(1.0)
    assert compute_reward(2.0, 2.0, lo) == 0.0
    assert compute_reward(1.0, 2.0, lo) == 5.0 and compute_reward(3.0, 2.0, lo) == -5.0  # clipped to ±clip
    assert compute_reward(None, 2.0, lo) == -1.0 and compute_reward(None, None, hi) == -1.0
    assert compute_reward(math.nan, 2.0, lo) == -1.0 and compute_reward(math.inf, 2.0, hi) == -1.0
    assert compute_reward(1.9, 2.0, _spec("min", scale=1.0, clip=10.0, failure=-3.0)) == pytest.approx(0.1)


def test_reward_without_a_baseline_is_an_error() -> None:
    with pytest.raises(ValueError, match="baseline metric is None"):
        compute_reward(1.9, None, _spec())
    with pytest.raises(ValueError, match="baseline metric is nan"):
        compute_reward(1.9, math.nan, _spec())


def test_rewards_module_is_import_light() -> None:
    src = Path(compute_reward.__code__.co_filename).read_text()
    imports = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert imports == [
        "from __future__ import annotations",
        "import math",
        "from typing import TYPE_CHECKING",
    ]


# ---------------------------------------------------------------------- export_dataset


def test_export_round_trips_with_rewards(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    state = _state(store)
    path = export_dataset(state, _spec("min"), store, tmp_path / "out")
    ds = load_from_disk(str(path))
    assert ds.num_rows == 6
    rows = {r["idea_id"]: r for r in ds}
    rw = {k[-8:]: v["reward"] for k, v in rows.items()}
    assert rw == pytest.approx(
        {
            "e000/i00": 0.0,
            "e001/i00": 1.0,
            "e001/i01": 5.0,
            "e001/i02": -5.0,
            "e001/i03": -1.0,
            "e002/i00": 0.5,
        }
    )
    r = rows[idea_id(C, 2, 0)]
    assert r["campaign"] == C and r["env"] == "toy" and r["epoch"] == 2 and r["origin"] == "exploit"
    assert r["parent_ids"] == [idea_id(C, 1, 0)] and r["confirmed_metrics"] == [1.96]
    assert (
        r["metric"] == 1.95 and r["baseline_metric"] == 2.0 and r["status"] == "ok" and r["category"] is None
    )
    assert r["diff"].endswith("+rope = True\n")
    assert DESCRIPTION in r["prompt"] and "idea 1.0 (val_loss = 1.9)" in r["prompt"]
    failed = rows[idea_id(C, 1, 3)]
    assert failed["status"] == "failed" and failed["category"] == "crashed" and failed["metric"] is None
    assert rows[idea_id(C, 0, 0)]["diff"] == ""  # no diff: empty text

    lines = [json.loads(ln) for ln in (tmp_path / "out" / JSONL_NAME).read_text().splitlines()]
    assert lines == ds.to_list()


def test_export_respects_direction(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ds = load_from_disk(str(export_dataset(_state(store), _spec("max", scale=1.0), store, tmp_path / "o")))
    rw = {r["idea_id"][-8:]: r["reward"] for r in ds}
    assert rw["e001/i00"] == pytest.approx(-0.1) and rw["e001/i02"] == pytest.approx(0.5)
    assert rw["e001/i03"] == -1.0


def test_export_without_baseline_leaves_success_rewards_empty(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ds = load_from_disk(str(export_dataset(_state(store, baseline=None), _spec(), store, tmp_path / "o")))
    rw = {r["idea_id"][-8:]: r["reward"] for r in ds}
    assert rw["e001/i00"] is None and rw["e001/i03"] == -1.0


def test_export_of_a_missing_diff(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    gone = ArtifactRef(uri=store.uri_for("cas/diff/ab/" + "ab" * 32), sha256="ab" * 32, size=1)
    state = CampaignState(archive=[_s(0, 0, 2.0, gone)], baseline_metric=2.0)
    with pytest.raises(StorageError, match=r"diff of idea campaign-exp/e000/i00 cannot be read"):
        export_dataset(state, _spec(), store, tmp_path / "o")
    ds = load_from_disk(str(export_dataset(state, _spec(), store, tmp_path / "o2", missing_ok=True)))
    assert ds[0]["diff"] == ""


def test_export_of_an_empty_campaign(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ds = load_from_disk(str(export_dataset(CampaignState(), _spec(), store, tmp_path / "o", campaign="none")))
    assert ds.num_rows == 0 and "reward" in ds.column_names
    assert (tmp_path / "o" / JSONL_NAME).read_text() == ""
