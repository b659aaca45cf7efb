"""How a campaign's progress is shown: a rich live table in a terminal, plain flushed lines when piped.

Counts never include the baseline (it is shown on its own line); epochs are shown 1-based everywhere.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import TextIO

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ideaforge.cli.campaigns import CampaignView, next_step
from ideaforge.cli.progress import ACTIVE, IdeaProgress

TRAINING_LINE_EVERY_S = 30.0  # piped output: at most one progress line per training idea this often


def fmt_metric(x: float | None) -> str:
    """Four significant digits (a loss of 1.9523, an accuracy of 0.8512, a tiny 3.2e-05 alike)."""
    return "-" if x is None else f"{x:.4g}"


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def short(idea_id: str) -> str:
    return idea_id.split("/", 1)[-1]


def counts(ideas: list[IdeaProgress]) -> dict[str, int]:
    """done (ok) / failed / running / queued over the ideas, the baseline left out."""
    c = {"done": 0, "failed": 0, "running": 0, "queued": 0}
    for p in ideas:
        if p.origin == "baseline":
            continue
        key = "running" if p.state in ACTIVE else p.state
        c[key] = c.get(key, 0) + 1
    return c


def baseline_of(view: CampaignView, ideas: list[IdeaProgress]) -> tuple[float | None, str]:
    """(baseline metric, how it stands: the metric, or the baseline idea's state)."""
    metric = _pick(view, "baseline_metric")
    if metric is not None:
        return metric, fmt_metric(metric)
    base = next((p for p in ideas if p.origin == "baseline"), None)
    if base is None:
        return None, "-"
    if base.state == "done":
        return base.metric, fmt_metric(base.metric)
    return None, base.state + (f" ({base.category})" if base.category else "")


def best_of(view: CampaignView, ideas: list[IdeaProgress], direction: str) -> tuple[float | None, str]:
    """The best idea so far (the baseline left out; an idea counts as soon as it finishes) and its id."""
    base_ids = {p.idea_id for p in ideas if p.origin == "baseline"}
    done = [(p.metric, p.idea_id) for p in ideas if p.state == "done" and p.metric is not None]
    done = [d for d in done if d[1] not in base_ids]
    live = _pick(view, "best_metric"), _pick(view, "best_idea")
    if live[0] is not None and live[1] not in base_ids:
        done.append(live)  # type: ignore[arg-type]
    if not done:
        return None, "-"
    m, i = (min if direction == "min" else max)(done, key=lambda t: t[0])
    return m, short(i or "-")


def _pick(view: CampaignView, field: str):  # noqa: ANN202 - a field of the live status, else saved state
    if view.live is not None:
        return getattr(view.live, field, None)
    if view.result is not None:
        if field == "baseline_metric":
            return view.result.baseline_metric
        if view.result.best is not None and field in ("best_metric", "best_idea"):
            return view.result.best.metric if field == "best_metric" else view.result.best.idea_id
    if view.saved is not None and field == "baseline_metric":
        return view.saved.state.baseline_metric
    return None


def compute_text(view: CampaignView) -> str:
    """Device time of the finished ideas (every training attempt), against the GPU budget if there is one, and
    why planning stopped (a budget spent): from the live status, else the result, else the saved state."""
    stopped = None
    if view.live is not None:
        dt, budget, stopped = view.live.device_time, view.live.budget_gpu_hours, view.live.stopped_reason
    elif view.result is not None:
        dt, budget = view.result.device_time, view.config.budget_gpu_hours if view.config else None
        if view.result.stopped_reason != "completed":
            stopped = view.result.stopped_reason
    elif view.saved is not None:
        dt, budget = view.saved.state.device_time, view.saved.config.budget_gpu_hours
        stopped = view.saved.state.stopped_reason
    else:
        return "-"
    text = dt.text()
    if budget is not None:
        text += f"; GPU budget {budget:g} h ({dt.gpu_hours / budget:.0%} used)"
    if stopped:
        text += f"; stopped: {stopped.replace('_', ' ')}"
    return text


def vs_baseline(best: float | None, base: float | None, direction: str) -> str:
    if best is None or base is None or base == 0:
        return ""
    better = best < base if direction == "min" else best > base
    pct = 100 * abs(best - base) / abs(base)
    if pct < 0.05:
        return " (same as the baseline)"
    return f" ({pct:.1f}% {'better' if better else 'worse'} than the baseline)"


def epoch_text(view: CampaignView) -> str:
    if view.live is not None:
        e, n = view.live.epoch, view.live.epochs
        return f"{min(e + 1, n)}/{n}" + (" (paused)" if view.live.paused else "")
    if view.result is not None:
        return f"{view.result.epochs_completed}/{view.result.epochs_completed}"
    n = view.config.epochs if view.config else None
    if view.saved is not None:
        n = view.saved.config.epochs
        return f"{min(view.saved.state.next_epoch + 1, n)}/{n} (saved)"
    if view.epoch is not None and n:
        return f"{view.epoch + 1}/{n}"
    return f"-/{n}" if n else "-"  # not started yet (no worker has run it)


def idea_line(p: IdeaProgress) -> str:
    """One line about one idea, as it stands."""
    name = short(p.idea_id) + (f" {p.title[:50]!r}" if p.title else "")
    if p.state == "training":
        step = f"step {p.step}" + (f"/{p.total_steps}" if p.total_steps else "") if p.step is not None else "starting"
        loss = f" loss {p.loss:.4f}" if p.loss is not None else ""
        eta = f" eta {fmt_duration(p.eta_s)}" if p.eta_s is not None else ""
        retry = f" (attempt {p.attempt})" if p.attempt > 1 else ""
        return f"{name}: training {step}{loss}{eta}{retry}"
    if p.state == "done":
        return f"{name}: done, metric {fmt_metric(p.metric)}"
    if p.state == "failed":
        why = p.category or "failed"
        return f"{name}: FAILED ({why})" + (f": {p.error.splitlines()[0][:120]}" if p.error else "")
    return f"{name}: {p.state}"


class SilenceGrace:
    """Holds back the "worker not answering" alarm until the worker has been silent for ``grace_s``: a worker
    busy starting up or on a loaded machine can miss one status query without anything being wrong."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.silent_since: float | None = None

    def apply(self, view: CampaignView, now: float) -> CampaignView:
        if not view.worker_silent:
            self.silent_since = None
            return view
        if self.silent_since is None:
            self.silent_since = now
        if now - self.silent_since < self.grace_s:
            return view.model_copy(update={"worker_silent": False})
        return view


def header_line(view: CampaignView, ideas: list[IdeaProgress], direction: str) -> str:
    c = counts(ideas)
    base, base_txt = baseline_of(view, ideas)
    best, best_id = best_of(view, ideas, direction)
    worker = " [worker not answering]" if view.worker_silent else ""
    return (
        f"{view.name} epoch {epoch_text(view)}: {c['done']} done, {c['failed']} failed, "
        f"{c['running']} running, {c['queued']} queued | baseline {base_txt} | "
        f"best {fmt_metric(best)} ({best_id}){vs_baseline(best, base, direction)} | "
        f"compute {compute_text(view)}{worker}"
    )


def rich_view(view: CampaignView, ideas: list[IdeaProgress], direction: str, now: datetime | None = None) -> Group:
    """The terminal display: a summary table and one row per idea."""
    now = now or datetime.now(UTC)
    c = counts(ideas)
    base, base_txt = baseline_of(view, ideas)
    best, best_id = best_of(view, ideas, direction)
    age = (now - view.started_at).total_seconds() if view.started_at else None
    top = Table(
        title=f"campaign {view.name}  ({view.state}, running for {fmt_duration(age)})", show_header=False
    )
    top.add_row("epoch", epoch_text(view))
    if view.live is not None:  # the workflow counts epochs from 0 in its phase text; the display from 1
        top.add_row("phase", re.sub(r"^epoch \d+: ", "", view.live.phase))
    top.add_row("ideas", f"{c['done']} done, {c['failed']} failed, {c['running']} running, {c['queued']} queued")
    top.add_row("baseline", base_txt)
    top.add_row("best", f"{fmt_metric(best)} ({best_id}){vs_baseline(best, base, direction)}")
    top.add_row("compute", compute_text(view))
    if view.live is not None and view.live.usage.calls:
        u = view.live.usage
        budget = f" of a ${view.live.budget_usd:g} budget" if view.live.budget_usd is not None else ""
        top.add_row("LLM", f"{u.calls} calls, {u.input_tokens + u.output_tokens} tokens, ${u.cost_usd:.4f}{budget}")
    if view.worker_silent:
        top.add_row("worker", Text("not answering: `ideaforge up` restarts the local one", style="red"))
    elif view.state != "running":
        top.add_row("next", next_step(view) or "-")
    rows = Table(show_lines=False)
    for col in ("idea", "state", "step", "loss", "eta", "metric", "title"):
        rows.add_column(col)
    for p in ideas:
        style = {"failed": "red", "done": "green", "queued": "dim"}.get(p.state, "")
        state = p.state + (f" ({p.category})" if p.category else "") + (f" #{p.attempt}" if p.attempt > 1 else "")
        step = "-" if p.step is None else f"{p.step}" + (f"/{p.total_steps}" if p.total_steps else "")
        rows.add_row(
            short(p.idea_id),
            Text(state, style=style),
            step,
            "-" if p.loss is None else f"{p.loss:.4f}",
            fmt_duration(p.eta_s) if p.state == "training" else "-",
            fmt_metric(p.metric),
            (p.title or "")[:50],
        )
    return Group(top, rows)


class PlainReporter:
    """Piped output: a line when an idea changes state (and a training line at most every 30 s per idea),
    a summary line when the counts or the best change. Every line is flushed as it is written."""

    def __init__(self, out: TextIO, direction: str) -> None:
        self.out = out
        self.direction = direction
        self._state: dict[str, str] = {}
        self._last_training: dict[str, float] = {}
        self._last_header = ""

    def _emit(self, line: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        self.out.write(f"[{stamp}] {line}\n")
        self.out.flush()

    def update(self, view: CampaignView, ideas: list[IdeaProgress]) -> None:
        now = time.monotonic()
        for p in ideas:
            before = self._state.get(p.idea_id)
            changed = before != p.state
            due = p.state == "training" and now - self._last_training.get(p.idea_id, 0.0) >= TRAINING_LINE_EVERY_S
            if changed or due:
                self._emit(idea_line(p))
                self._state[p.idea_id] = p.state
                if p.state == "training":
                    self._last_training[p.idea_id] = now
        header = header_line(view, ideas, self.direction)
        if header != self._last_header:
            self._emit(header)
            self._last_header = header
