"""Human report of a campaign: plots, a leaderboard with lineage (markdown + CSV), logged to MLflow.

Plots show single-run metrics as they were observed each epoch (failed ideas count in the execution rate
only; confirmation re-runs are left out of the metric plots). The leaderboard ranks like the search does
(``workflows.selection``): by the mean over the original run and its confirmation seeds, in the env's
direction, shown as mean±std (n).
"""

from __future__ import annotations

import csv
import logging
import math
import random
from pathlib import Path
from statistics import median, stdev

from matplotlib.figure import Figure
from pydantic import BaseModel, Field

from ideaforge.models import CampaignState, DeviceTime, Direction, EnvSpec, IdeaSummary, PreflightCost
from ideaforge.names import experiment_name, parse_idea_id
from ideaforge.ranking import ranked, score
from ideaforge.report.export import campaign_of
from ideaforge.track.tracker import KIND_TAG, Tracker, report_key

log = logging.getLogger(__name__)


class LeaderboardRow(BaseModel):
    """One executed idea; ``rank`` is None for failed ideas (listed after the ranked ones)."""

    rank: int | None
    idea_id: str
    short_id: str
    epoch: int
    title: str
    origin: str
    status: str
    category: str | None = None
    metric: float | None = None
    score: float | None = None  # mean over the run and its confirmation seeds
    score_std: float | None = None
    runs: int = 0  # how many runs the score averages
    delta: float | None = None  # improvement over the baseline in the env's direction (> 0 is better)
    reward: float | None = None
    lineage: str
    gpu_seconds: float = 0.0  # training + eval over every attempt (DeviceTime)
    cpu_slot_seconds: float = 0.0
    train_attempts: int = 0


class EpochStats(BaseModel):
    epoch: int
    total: int
    ok: int
    execution_rate: float
    metrics: list[float] = Field(default_factory=list)  # ok, non-confirm ideas
    best: float | None = None
    best_so_far: float | None = None
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # of every idea of the epoch, failed ones too


class PreflightStats(BaseModel):
    """The CPU preflight over a campaign: what it cost and the training slot time it kept free."""

    ideas: int = 0  # ideas whose code was preflighted
    runs: int = 0
    caught: int = 0  # preflights that failed (each went back to the implementer instead of training)
    failed_ideas: int = 0  # ideas that still crashed after their last revision (category preflight_failed)
    inconclusive: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    median_wall_s: float | None = None  # per preflight run
    saved_train_s: float = 0.0
    saved_device_s: float = 0.0
    saved_basis: str | None = None


def preflight_stats(archive: list[IdeaSummary]) -> PreflightStats:
    """Sums of the per-idea preflight costs (confirmation re-runs reuse checked code: not counted twice)."""
    costs = [s.preflight for s in archive if s.preflight is not None and s.origin != "confirm"]
    total = sum(costs, PreflightCost())
    return PreflightStats(
        ideas=len(costs),
        runs=total.runs,
        caught=total.failures,
        failed_ideas=sum(s.category == "preflight_failed" for s in archive),
        inconclusive=total.inconclusive,
        wall_s=total.wall_s,
        cpu_s=total.cpu_s,
        median_wall_s=median(c.wall_s / c.runs for c in costs if c.runs) if any(c.runs for c in costs) else None,
        saved_train_s=total.saved_train_s,
        saved_device_s=total.saved_device_s,
        saved_basis=total.saved_basis,
    )


class Report(BaseModel):
    """What :func:`write_report` wrote and what it found."""

    campaign: str
    env: str
    metric: str
    direction: Direction
    baseline_metric: float | None
    best_idea: str | None
    best_score: float | None
    out_dir: Path
    markdown: Path
    csv: Path
    plots: dict[str, Path]
    epochs: list[EpochStats]
    leaderboard: list[LeaderboardRow]
    device_time: DeviceTime = Field(default_factory=DeviceTime)  # of every executed idea
    preflight: PreflightStats = Field(default_factory=PreflightStats)

    @property
    def files(self) -> list[Path]:
        return [self.markdown, self.csv, *self.plots.values()]


def short_id(idea_id: str) -> str:
    """``campaign-x/e002/i01`` -> ``e002/i01`` (other ids unchanged)."""
    try:
        return parse_idea_id(idea_id).short
    except ValueError:
        return idea_id


def lineage(idea_id: str, by_id: dict[str, IdeaSummary]) -> str:
    """Ancestry along first parents: ``e002/i01 <- e001/i03 <- baseline``; several parents joined by ``+``."""

    def label(i: str) -> str:
        s = by_id.get(i)
        return "baseline" if s is not None and s.origin == "baseline" else short_id(i)

    parts = [label(idea_id)]
    seen = {idea_id}
    cur = by_id.get(idea_id)
    while cur is not None and cur.origin != "baseline":
        if not cur.parent_ids:
            parts.append("baseline")  # a fresh idea is applied to the baseline code
            break
        parts.append("+".join(label(p) for p in cur.parent_ids))
        nxt = cur.parent_ids[0]
        if nxt in seen:
            parts.append("(cycle)")
            break
        seen.add(nxt)
        cur = by_id.get(nxt)  # an ancestor missing from the archive ends the chain at its id
    return " <- ".join(parts)


def _improvement(metric: float | None, baseline: float | None, direction: Direction) -> float | None:
    if metric is None or baseline is None:
        return None
    return baseline - metric if direction == "min" else metric - baseline


def leaderboard(state: CampaignState, spec: EnvSpec) -> list[LeaderboardRow]:
    """Ranked ok ideas (best first), then failed ones; confirmation re-runs are folded into their idea."""
    by_id = {s.idea_id: s for s in state.archive}
    baseline = _baseline(state)
    rows: list[LeaderboardRow] = []

    def row(s: IdeaSummary, rank: int | None) -> LeaderboardRow:
        runs = [s.metric, *s.confirmed_metrics] if s.metric is not None else []
        sc = score(s)
        return LeaderboardRow(
            rank=rank,
            idea_id=s.idea_id,
            short_id=short_id(s.idea_id),
            epoch=s.epoch,
            title=s.title,
            origin=s.origin,
            status=s.status,
            category=s.category,
            metric=s.metric,
            score=sc,
            score_std=stdev(runs) if len(runs) >= 2 else None,
            runs=len(runs),
            delta=_improvement(sc, baseline, spec.direction),
            reward=s.reward,
            lineage=lineage(s.idea_id, by_id),
            gpu_seconds=s.device_time.gpu_seconds,
            cpu_slot_seconds=s.device_time.cpu_slot_seconds,
            train_attempts=s.device_time.attempts,
        )

    ok = ranked(state.archive, spec.direction)
    rows += [row(s, i + 1) for i, s in enumerate(ok)]
    failed = sorted(
        (s for s in state.archive if s.status != "ok" and s.origin != "confirm"), key=lambda s: s.idea_id
    )
    rows += [row(s, None) for s in failed]
    return rows


def _baseline(state: CampaignState) -> float | None:
    if state.baseline_metric is not None:
        return state.baseline_metric
    base = [
        s.metric
        for s in state.archive
        if s.origin == "baseline" and s.status == "ok" and s.metric is not None
    ]
    return base[0] if base else None


def epoch_stats(state: CampaignState, spec: EnvSpec) -> list[EpochStats]:
    epochs = sorted({s.epoch for s in state.archive})
    out: list[EpochStats] = []
    best_so_far: float | None = None
    for e in epochs:
        ideas = [s for s in state.archive if s.epoch == e]
        ok = [s for s in ideas if s.status == "ok"]
        metrics = [
            s.metric for s in ok if s.origin != "confirm" and s.metric is not None and math.isfinite(s.metric)
        ]
        best = None
        for m in metrics:
            if best is None or spec.better(m, best):
                best = m
        if best is not None and (best_so_far is None or spec.better(best, best_so_far)):
            best_so_far = best
        out.append(
            EpochStats(
                epoch=e,
                total=len(ideas),
                ok=len(ok),
                execution_rate=len(ok) / len(ideas),
                metrics=metrics,
                best=best,
                best_so_far=best_so_far,
                device_time=DeviceTime.total(s.device_time for s in ideas),
            )
        )
    return out


# ---------------------------------------------------------------------- plots (object API, Agg, no pyplot)


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _no_data(ax, text: str = "no data yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_best_so_far(stats: list[EpochStats], spec: EnvSpec, baseline: float | None, path: Path) -> Path:
    fig, ax = _figure()
    pts = [(s.epoch, s.best_so_far) for s in stats if s.best_so_far is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="best so far")
        per = [(s.epoch, s.best) for s in stats if s.best is not None]
        ax.scatter([p[0] for p in per], [p[1] for p in per], marker="x", color="grey", label="epoch best")
        ax.set_xticks([s.epoch for s in stats])
    else:
        _no_data(ax)
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="red", label=f"baseline {baseline:.4g}")
    better = "lower" if spec.direction == "min" else "higher"
    ax.set(
        xlabel="epoch",
        ylabel=spec.metric,
        title=f"{spec.name}: best {spec.metric} so far ({better} is better)",
    )
    if pts or baseline is not None:
        ax.legend(loc="best")
    fig.savefig(path)
    return path


def plot_execution_rate(stats: list[EpochStats], spec: EnvSpec, path: Path) -> Path:
    fig, ax = _figure()
    if stats:
        xs = [s.epoch for s in stats]
        bars = ax.bar(xs, [s.execution_rate for s in stats], color="tab:green")
        for b, s in zip(bars, stats, strict=True):
            ax.annotate(
                f"{s.ok}/{s.total}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom"
            )
        ax.set_xticks(xs)
    else:
        _no_data(ax)
    ax.set(
        xlabel="epoch", ylabel="ok / total", ylim=(0, 1.15), title=f"{spec.name}: execution rate per epoch"
    )
    fig.savefig(path)
    return path


def plot_distribution(stats: list[EpochStats], spec: EnvSpec, baseline: float | None, path: Path) -> Path:
    fig, ax = _figure()
    with_data = [s for s in stats if s.metrics]
    if with_data:
        xs = [s.epoch for s in with_data]
        ax.boxplot([s.metrics for s in with_data], positions=xs, widths=0.5, showfliers=False)
        rng = random.Random(0)  # deterministic jitter
        for s in with_data:
            ax.scatter([s.epoch + rng.uniform(-0.15, 0.15) for _ in s.metrics], s.metrics, s=14, alpha=0.7)
        ax.set_xticks(xs, [str(x) for x in xs])
    else:
        _no_data(ax, "no successful ideas yet")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="red", label=f"baseline {baseline:.4g}")
        ax.legend(loc="best")
    ax.set(
        xlabel="epoch", ylabel=spec.metric, title=f"{spec.name}: {spec.metric} of successful ideas per epoch"
    )
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------- tables


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}g}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _score_cell(r: LeaderboardRow) -> str:
    if r.score is None:
        return ""
    if r.runs >= 2 and r.score_std is not None:
        return f"{r.score:.4g} ± {r.score_std:.2g} (n={r.runs})"
    return f"{r.score:.4g}"


def write_csv(rows: list[LeaderboardRow], path: Path) -> Path:
    fields = list(LeaderboardRow.model_fields)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.model_dump().items()})
    return path


def write_markdown(report: Report, spec: EnvSpec, path: Path) -> Path:
    better = "lower" if spec.direction == "min" else "higher"
    total = sum(s.total for s in report.epochs)
    ok = sum(s.ok for s in report.epochs)
    lines = [
        f"# Campaign `{report.campaign}` on `{report.env}`",
        "",
        f"- metric: `{spec.metric}` ({better} is better); baseline: {_fmt(report.baseline_metric) or 'n/a'}",
        f"- best: {_fmt(report.best_score) or 'n/a'}"
        + (f" (`{report.best_idea}`)" if report.best_idea else ""),
        f"- epochs: {len(report.epochs)}; ideas executed: {total}; succeeded: {ok}"
        + (f" ({ok / total:.0%})" if total else ""),
        f"- device time (training + evaluation, every attempt): {report.device_time.text()}",
        "",
    ]
    lines += [f"![{name}]({p.name})" for name, p in report.plots.items()]
    lines += [
        "",
        "## Leaderboard",
        "",
        "| rank | idea | title | origin | metric | mean ± std (n) | Δ vs baseline | lineage |",
        "|---:|---|---|---|---:|---|---:|---|",
    ]
    for r in report.leaderboard:
        if r.rank is None:
            continue
        lines.append(
            f"| {r.rank} | `{r.short_id}` | {_md_cell(r.title)} | {r.origin} | {_fmt(r.metric)} | {_score_cell(r)} "
            f"| {_fmt(r.delta, 3)} | {r.lineage} |"
        )
    failed = [r for r in report.leaderboard if r.rank is None]
    if failed:
        lines += ["", "## Failed ideas", "", "| idea | title | category | lineage |", "|---|---|---|---|"]
        lines += [
            f"| `{r.short_id}` | {_md_cell(r.title)} | {r.category or ''} | {r.lineage} |" for r in failed
        ]
    pf = report.preflight
    if pf.runs:
        basis = {"expected_train_s": "the env's expected training time", "time_limit_s": "the env's time limit, an upper bound"}
        lines += [
            "",
            "## Preflight (CPU check before training)",
            "",
            f"- ideas checked: {pf.ideas}; preflight runs: {pf.runs} (median {_fmt(pf.median_wall_s, 2)} s wall each)",
            f"- cost: {pf.wall_s:.1f} s wall, {pf.cpu_s:.1f} s CPU",
            f"- crashes caught before training: {pf.caught} (sent back for revision); ideas that still crashed "
            f"after their last revision: {pf.failed_ideas}; inconclusive (out of time or memory on CPU): {pf.inconclusive}",
            f"- training slot time not spent on crashing code: {pf.saved_train_s:.0f} s ({pf.saved_device_s:.0f} "
            f"device-seconds), estimated per caught crash as {basis.get(pf.saved_basis or '', 'n/a')}",
        ]
    lines += [
        "",
        "## Epochs",
        "",
        "| epoch | ok / total | epoch best | best so far | GPU-h | CPU-slot-h | training attempts |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s.epoch} | {s.ok}/{s.total} | {_fmt(s.best)} | {_fmt(s.best_so_far)} "
        f"| {s.device_time.gpu_hours:.3g} | {s.device_time.cpu_slot_hours:.3g} | {s.device_time.attempts} |"
        for s in report.epochs
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------- entry points


def write_report(state: CampaignState, spec: EnvSpec, out_dir: Path, campaign: str | None = None) -> Report:
    """Write ``report.md``, ``leaderboard.csv`` and three PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = _baseline(state)
    stats = epoch_stats(state, spec)
    rows = leaderboard(state, spec)
    plots = {
        "best_so_far": plot_best_so_far(stats, spec, baseline, out_dir / "best_so_far.png"),
        "execution_rate": plot_execution_rate(stats, spec, out_dir / "execution_rate.png"),
        "metric_distribution": plot_distribution(stats, spec, baseline, out_dir / "metric_distribution.png"),
    }
    top = next((r for r in rows if r.rank == 1), None)
    report = Report(
        campaign=campaign or campaign_of(state.archive),
        env=spec.name,
        metric=spec.metric,
        direction=spec.direction,
        baseline_metric=baseline,
        best_idea=top.idea_id if top else None,
        best_score=top.score if top else None,
        out_dir=out_dir,
        markdown=out_dir / "report.md",
        csv=write_csv(rows, out_dir / "leaderboard.csv"),
        plots=plots,
        epochs=stats,
        leaderboard=rows,
        device_time=DeviceTime.total(s.device_time for s in stats),
        preflight=preflight_stats(state.archive),
    )
    write_markdown(report, spec, report.markdown)
    log.info("report for %s written to %s", report.campaign, out_dir)
    return report


def log_report_to_mlflow(tracker: Tracker, campaign: str, report: Report) -> str:
    """Upload the report files to the campaign's ``report`` run (one per campaign, found by tag); its id."""
    tracker.ping()
    eid = tracker.experiment_id(experiment_name(campaign))
    tags = {KIND_TAG: "report", "ideaforge.campaign": campaign, "ideaforge.env": report.env}
    run, _ = tracker.ensure_run(eid, report_key(campaign), "report", tags)
    for path in report.files:
        tracker.log_file(run.info.run_id, path)  # same artifact path: a newer report replaces the older one
    step = max((s.epoch for s in report.epochs), default=0)
    total = sum(s.total for s in report.epochs)
    points = [
        ("ideas_total", float(total), step),
        ("ideas_ok", float(sum(s.ok for s in report.epochs)), step),
    ]
    if report.best_score is not None:
        points.append(("best_score", report.best_score, step))
    if report.baseline_metric is not None:
        points.append(("baseline_metric", report.baseline_metric, step))
    points += [(k, v, step) for k, v in report.device_time.metrics("campaign_").items()]
    tracker.log_metrics(run, points, skip_existing=True)
    tracker.finish(run.info.run_id, "FINISHED")
    return run.info.run_id
