"""Human report: plots, leaderboard with lineage, direction-aware best; logged to MLflow once per campaign."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ideaforge.models import CampaignState, DeviceTime, EnvSpec, IdeaSummary
from ideaforge.names import idea_id
from ideaforge.report.reporting import lineage, log_report_to_mlflow, short_id, write_report
from ideaforge.store.artifacts import LocalStore
from ideaforge.track.tracker import Tracker, report_key
from tests.mlflow_rows import campaign_runs

C = "rep"


def _spec(direction: str = "min") -> EnvSpec:
    return EnvSpec(
        name="toy",
        description="A toy env.",
        editable_files=["train.py"],
        protected_files=["eval.py"],
        run_command=["python", "train.py"],
        eval_command=["python", "eval.py"],
        metric="val_loss",
        direction=direction,  # type: ignore[arg-type]
        plausible_range=(0.0, 10.0),
    )


def _s(e: int, i: int, metric: float | None, origin: str = "explore", parents=(), **kw) -> IdeaSummary:
    status = "ok" if metric is not None else "failed"
    return IdeaSummary(
        idea_id=idea_id(C, e, i),
        epoch=e,
        title=f"idea {e}.{i}",
        text="text",
        origin=origin,  # type: ignore[arg-type]
        parent_ids=[idea_id(C, pe, pi) for pe, pi in parents],
        status=status,  # type: ignore[arg-type]
        category=None if status == "ok" else kw.pop("category", "crashed"),
        metric=metric,
        **kw,
    )


def _state() -> CampaignState:
    archive = [
        _s(0, 0, 2.0, origin="baseline"),
        _s(1, 0, 1.9),
        _s(1, 1, None, category="crashed", device_time=DeviceTime.held("gpu", 2, 900.0)),  # failed: counts
        _s(1, 2, 1.95),
        _s(2, 0, 1.8, origin="exploit", parents=[(1, 0)], confirmed_metrics=[1.82, 1.78],
           device_time=DeviceTime.held("gpu", 1, 3600.0)),
        _s(2, 1, 1.85, origin="exploit", parents=[(1, 2), (1, 0)]),
        _s(2, 2, None, origin="exploit", parents=[(2, 0)], category="timeout"),  # parent from its own epoch
        _s(2, 3, 1.81, origin="confirm", parents=[(2, 0)], device_time=DeviceTime.held("gpu", 1, 1800.0)),
    ]
    return CampaignState(next_epoch=3, archive=archive, baseline_metric=2.0)


def _is_real_png(p: Path) -> bool:
    data = p.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    img = imread(p)
    return img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img[..., :3])) > 0.01


def test_short_ids_and_lineage() -> None:
    by_id = {s.idea_id: s for s in _state().archive}
    assert short_id(idea_id(C, 2, 1)) == "e002/i01" and short_id("weird") == "weird"
    assert lineage(idea_id(C, 0, 0), by_id) == "baseline"
    assert lineage(idea_id(C, 1, 1), by_id) == "e001/i01 <- baseline"
    assert lineage(idea_id(C, 2, 0), by_id) == "e002/i00 <- e001/i00 <- baseline"
    assert lineage(idea_id(C, 2, 1), by_id) == "e002/i01 <- e001/i02+e001/i00 <- baseline"
    assert lineage(idea_id(C, 2, 2), by_id) == "e002/i02 <- e002/i00 <- e001/i00 <- baseline"
    # an ancestor not in the archive ends the chain at its id; a cycle is cut, not looped
    orphan = _s(3, 0, 1.7, parents=[(9, 9)])
    assert lineage(orphan.idea_id, {**by_id, orphan.idea_id: orphan}) == "e003/i00 <- e009/i09"
    a, b = _s(4, 0, 1.0, parents=[(4, 1)]), _s(4, 1, 1.0, parents=[(4, 0)])
    assert lineage(a.idea_id, {a.idea_id: a, b.idea_id: b}) == "e004/i00 <- e004/i01 <- e004/i00 <- (cycle)"


def test_report_min_direction(tmp_path: Path) -> None:
    rep = write_report(_state(), _spec("min"), tmp_path / "r")
    assert rep.campaign == C and rep.baseline_metric == 2.0
    for f in rep.files:
        assert f.is_file() and f.stat().st_size > 0
    assert set(rep.plots) == {"best_so_far", "execution_rate", "metric_distribution"}
    assert all(_is_real_png(p) for p in rep.plots.values())

    # execution rate counts failures and confirm runs; metric lists exclude both
    assert [(s.epoch, s.ok, s.total) for s in rep.epochs] == [(0, 1, 1), (1, 2, 3), (2, 3, 4)]
    assert [s.metrics for s in rep.epochs] == [[2.0], [1.9, 1.95], [1.8, 1.85]]
    assert [s.best_so_far for s in rep.epochs] == [2.0, 1.9, 1.8]

    ranked = [r for r in rep.leaderboard if r.rank is not None]
    assert [r.short_id for r in ranked] == ["e002/i00", "e002/i01", "e001/i00", "e001/i02", "e000/i00"]
    top = ranked[0]
    assert rep.best_idea == top.idea_id and top.runs == 3
    assert top.score == pytest.approx(1.8) and top.score_std == pytest.approx(0.02)
    assert top.delta == pytest.approx(0.2)  # positive = better than baseline, here lower
    assert top.lineage == "e002/i00 <- e001/i00 <- baseline"
    failed = [r for r in rep.leaderboard if r.rank is None]
    assert [(r.short_id, r.category) for r in failed] == [("e001/i01", "crashed"), ("e002/i02", "timeout")]
    assert not any(r.origin == "confirm" for r in rep.leaderboard)

    md = rep.markdown.read_text()
    assert "1.8 ± 0.02 (n=3)" in md and "e002/i01 <- e001/i02+e001/i00 <- baseline" in md
    assert "![best_so_far](best_so_far.png)" in md and "## Failed ideas" in md
    # device time: every attempt of every idea (failed ones and confirmation re-runs too), per epoch and in all
    assert [s.device_time.gpu_seconds for s in rep.epochs] == [0.0, 1800.0, 5400.0]
    assert rep.device_time == DeviceTime(gpu_seconds=7200.0, attempts=3)
    assert "- device time (training + evaluation, every attempt): 2 GPU-h (3 training attempts)" in md
    assert "| 2 | 3/4 | 1.8 | 1.8 | 1.5 | 0 | 2 |" in md
    with rep.csv.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["short_id"]: float(r["gpu_seconds"]) for r in rows}["e001/i01"] == 1800.0
    assert [r["short_id"] for r in rows] == [r.short_id for r in rep.leaderboard]
    assert rows[0]["rank"] == "1" and rows[-1]["rank"] == "" and rows[-1]["category"] == "timeout"


def test_report_max_direction_flips_the_ranking(tmp_path: Path) -> None:
    rep = write_report(_state(), _spec("max"), tmp_path / "r")
    ranked = [r.short_id for r in rep.leaderboard if r.rank is not None]
    assert ranked == ["e000/i00", "e001/i02", "e001/i00", "e002/i01", "e002/i00"]
    assert [s.best_so_far for s in rep.epochs] == [2.0, 2.0, 2.0]
    assert [s.best for s in rep.epochs] == [2.0, 1.95, 1.85]
    by = {r.short_id: r for r in rep.leaderboard}
    assert by["e001/i02"].delta == pytest.approx(-0.05)  # worse than baseline when higher is better


def test_report_of_an_empty_or_all_failed_campaign(tmp_path: Path) -> None:
    empty = write_report(CampaignState(), _spec(), tmp_path / "empty", campaign="nothing")
    assert empty.campaign == "nothing" and empty.leaderboard == [] and empty.best_idea is None
    assert all(_is_real_png(p) for p in empty.plots.values())
    failed = CampaignState(archive=[_s(0, 0, None), _s(0, 1, None, category="nan")])
    rep = write_report(failed, _spec(), tmp_path / "failed")
    assert rep.epochs[0].execution_rate == 0.0 and rep.epochs[0].best_so_far is None
    assert [r.rank for r in rep.leaderboard] == [None, None] and rep.baseline_metric is None


@pytest.mark.integration
def test_report_logged_to_mlflow_once(mlflow_server: str, tmp_path: Path) -> None:
    campaign = f"rep-{uuid.uuid4().hex[:8]}"
    tracker = Tracker(mlflow_server, LocalStore(tmp_path / "store"))
    rep = write_report(_state(), _spec(), tmp_path / "r", campaign=campaign)
    first = log_report_to_mlflow(tracker, campaign, rep)
    second = log_report_to_mlflow(tracker, campaign, rep)  # e.g. a retried activity or a re-run report
    assert first == second
    (row,) = campaign_runs(tracker.client, campaign, kind="report")
    assert row["run_id"] == first and row["key"] == report_key(campaign) and row["status"] == "FINISHED"
    assert row["metrics"]["best_score"] == pytest.approx(1.8) and row["metrics"]["ideas_total"] == 8
    assert row["metrics"]["campaign_gpu_seconds"] == 7200.0 and row["metrics"]["campaign_train_attempts"] == 3
    names = sorted(a.path for a in tracker.client.list_artifacts(first))
    assert names == sorted(p.name for p in rep.files)
    assert len(tracker.client.get_metric_history(first, "best_score")) == 1
    dl = Path(tracker.client.download_artifacts(first, "report.md", str(tmp_path / "dl")))
    assert dl.read_text() == rep.markdown.read_text()


def test_report_sums_the_preflight_costs(tmp_path) -> None:
    from ideaforge.models import PreflightCost

    caught = PreflightCost(runs=2, failures=1, wall_s=3.0, cpu_s=2.0, saved_train_s=600, saved_device_s=600,
                           saved_basis="time_limit_s")
    hopeless = PreflightCost(runs=3, failures=3, wall_s=3.0, cpu_s=3.0, saved_train_s=1800, saved_device_s=1800,
                             saved_basis="time_limit_s")
    clean = PreflightCost(runs=1, wall_s=1.0, cpu_s=0.5)
    state = _state()
    state.archive[1].preflight = caught
    state.archive[2] = state.archive[2].model_copy(update={"category": "preflight_failed", "preflight": hopeless})
    state.archive[3].preflight = clean
    state.archive[7].preflight = clean  # a confirmation re-run reuses checked code: not counted again
    rep = write_report(state, _spec(), tmp_path / "r")
    pf = rep.preflight
    assert (pf.ideas, pf.runs, pf.caught, pf.failed_ideas) == (3, 6, 4, 1)
    assert (pf.wall_s, pf.cpu_s, pf.saved_train_s) == (7.0, 5.5, 2400)
    assert pf.median_wall_s == pytest.approx(1.0)  # per run: 1.5, 1.0, 1.0
    md = rep.markdown.read_text()
    assert "## Preflight" in md and "crashes caught before training: 4" in md
    assert "2400 s" in md and "the env's time limit, an upper bound" in md


def test_report_without_preflights_has_no_preflight_section(tmp_path) -> None:
    rep = write_report(_state(), _spec(), tmp_path / "r")
    assert rep.preflight.runs == 0 and "## Preflight" not in rep.markdown.read_text()
