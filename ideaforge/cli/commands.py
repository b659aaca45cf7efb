"""`ideaforge` command line: bring the local stack up, start/follow/steer campaigns, read results.

Exit codes: 0 done; 1 bad input or an operation that is refused (the message says why and what to do);
2 the stack is unreachable or a preflight check failed (nothing was started; the message says the fix);
3 answered from saved state because no worker (or no Temporal) answered, or `status` found a service down;
4 no campaign of that name. Usage errors of the command line itself also exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ideaforge.cli import campaigns
from ideaforge.cli.campaigns import CampaignError, CampaignNotFound, CampaignView
from ideaforge.config import Settings
from ideaforge.models import CampaignInput, IdeaSummary
from ideaforge.names import experiment_name, rl_workflow_id

OK, REFUSED, UNAVAILABLE, DEGRADED, NOT_FOUND = 0, 1, 2, 3, 4
CONNECT_TIMEOUT_S = 3.0
FOLLOW_EVERY_S = 2.0
WORKER_SILENCE_GRACE_S = 20.0  # a busy worker (start-up, a loaded machine) may miss a query or two

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# piped output is read by people too (logs, CI): wide enough that tables do not wrap every cell
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
log = logging.getLogger(__name__)


class Unreachable(RuntimeError):
    """Temporal cannot be reached."""


def _exit(code: int = OK) -> NoReturn:
    """Flush and leave without interpreter teardown (temporalio can crash at exit, sdk-python#300)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(code: int, message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    _exit(code)


def _run(coro) -> Any:
    """Run a coroutine; every error becomes one clear line and its exit code (no traceback)."""
    from temporalio.service import RPCError

    try:
        return asyncio.run(coro)
    except CampaignNotFound as e:
        _fail(NOT_FOUND, str(e))
    except CampaignError as e:
        _fail(REFUSED, str(e))
    except Unreachable as e:
        _fail(UNAVAILABLE, str(e))
    except RPCError as e:
        _fail(UNAVAILABLE, f"Temporal refused the request: {e.message or e}")
    except TimeoutError:
        _fail(UNAVAILABLE, "Temporal did not answer in time; `ideaforge status` shows the stack")
    except KeyboardInterrupt:
        _exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, details in the debug log
        log.debug("unexpected error", exc_info=True)
        _fail(REFUSED, f"{type(e).__name__}: {e} (IDEAFORGE_LOG_LEVEL=DEBUG shows details)")


async def _client(settings: Settings):
    """A Temporal client (the worker module is not imported: it pulls in every LLM SDK, seconds of start-up)."""
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    connect = Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
    )
    try:
        return await asyncio.wait_for(connect, CONNECT_TIMEOUT_S)
    except (RuntimeError, OSError, TimeoutError) as e:
        raise Unreachable(
            f"cannot reach Temporal at {settings.temporal_address} ({(str(e) or type(e).__name__).splitlines()[0][:120]}); "
            "run `ideaforge up` (or set IDEAFORGE_TEMPORAL_ADDRESS)"
        ) from e


def _saved(settings: Settings, name: str) -> CampaignInput | None:
    """The state the campaign last saved in the artifact store (None if none or unreadable). Read here, not
    through the activities module, which imports every LLM SDK (seconds of start-up for a status line)."""
    from ideaforge.names import state_key
    from ideaforge.store.artifacts import open_store

    try:
        raw = open_store(settings).get_named(state_key(name))
        return CampaignInput.model_validate_json(raw) if raw else None
    except Exception as e:  # noqa: BLE001 - a store outage must not hide what Temporal knows
        log.warning("cannot read the saved state of %s: %s", name, e)
        return None


def _direction(settings: Settings, env: str | None) -> str:
    from ideaforge.research_envs.registry import load_env

    try:
        return load_env(env, settings.env_paths).spec.direction if env else "min"
    except Exception:  # noqa: BLE001 - an env removed since: assume lower is better
        return "min"


def _total_steps(settings: Settings, cfg) -> int | None:  # noqa: ANN001 - CampaignConfig or None
    from ideaforge.research_envs.registry import load_env

    try:
        spec = load_env(cfg.env, settings.env_paths).spec
        return int(spec.profiles[cfg.profile].get("IDEAFORGE_STEPS", "")) or None
    except Exception:  # noqa: BLE001 - no step count known: no ETA
        return None


# ---------------------------------------------------------------------------------------------- stack


@app.command()
def up(worker: bool = typer.Option(True, help="also start the background ideaforge worker")) -> None:
    """Start the local stack (Temporal dev server, MLflow server, worker) under a supervisor that restarts
    whichever dies."""
    from ideaforge.cli import stack

    settings = Settings.from_env()
    try:
        st = stack.up(settings, with_worker=worker)
    except stack.StackError as e:
        _fail(UNAVAILABLE, f"stack: {e}")
    _print_stack(st)
    _exit(OK)


@app.command()
def down() -> None:
    """Stop the local stack started by `up`: the supervisor, the worker and the servers (data stays in
    IDEAFORGE_HOME)."""
    from ideaforge.cli import stack

    stopped = stack.down(Settings.from_env())
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    _exit(OK)


def _print_stack(st) -> None:  # noqa: ANN001 - stack.StackStatus (imported lazily)
    t = Table(title="ideaforge stack")
    for col in ("service", "pid", "healthy", "url"):
        t.add_column(col)
    for name, svc in st.services.items():
        t.add_row(name, str(svc.pid or "-"), "yes" if svc.healthy else "[red]no[/red]", svc.ui_url or svc.url or "")
    console.print(t)


def _stack_status() -> None:
    from ideaforge.cli import stack

    st = stack.status(Settings.from_env())
    _print_stack(st)
    problems = st.problems()
    for p in problems:
        err.print(f"[red]down:[/red] {p.what}; fix: [bold]{p.fix}[/bold]", highlight=False)
    _exit(DEGRADED if problems else OK)


# ---------------------------------------------------------------------------------------------- campaigns


@app.command()
def start(
    config: Path | None = typer.Option(None, "--config", "-c", help="campaign TOML file"),
    name: str | None = typer.Option(None, help="campaign name (idempotent: same name attaches)"),
    env: str | None = typer.Option(None, help="research env, e.g. tiny_gpt"),
    epochs: int | None = typer.Option(None),
    ideas: int | None = typer.Option(None, "--ideas", help="ideas per epoch"),
    ideator: str | None = typer.Option(None, help="offline | anthropic | openai | openai-compatible"),
    model: str | None = typer.Option(None, help="LLM model name"),
    base_url: str | None = typer.Option(None, help="LLM server URL (openai-compatible, or a proxy)"),
    strategy: str | None = typer.Option(None, help="evolution | best_of_n | random"),
    profile: str | None = typer.Option(None, help="env profile, e.g. default or smoke"),
    seed: int | None = typer.Option(None),
    confirm_top_k: int | None = typer.Option(None, help="re-run the top K ideas on fresh seeds at the end"),
    budget_usd: float | None = typer.Option(None, help="LLM spend after which no new idea is planned"),
    budget_gpu_hours: float | None = typer.Option(
        None, help="GPU-hours of training (every attempt) after which no new idea starts; ideas in flight finish"
    ),
    restart: bool = typer.Option(
        False, "--restart", help="delete a campaign of this name (history, saved state, MLflow) and start afresh"
    ),
    follow: bool = typer.Option(True, help="show progress until the campaign ends"),
    stack_up: bool = typer.Option(True, "--up/--no-up", help="start the local stack if it is not running"),
) -> None:
    """Start a campaign and follow it. The same name attaches to it while it runs, and shows its result once it
    has finished (--restart runs it again from scratch). Preflight checks run first: nothing starts that
    cannot run."""
    from ideaforge.cli import preflight

    settings = Settings.from_env()
    try:
        cfg = campaigns.load_config(
            config,
            {
                "name": name,
                "env": env,
                "epochs": epochs,
                "ideas_per_epoch": ideas,
                "ideator.kind": ideator,
                "ideator.model": model,
                "ideator.base_url": base_url,
                "search.strategy": strategy,
                "profile": profile,
                "seed": seed,
                "confirm_top_k": confirm_top_k,
                "budget_usd": budget_usd,
                "budget_gpu_hours": budget_gpu_hours,
            },
        )
    except CampaignError as e:
        _fail(REFUSED, str(e))
    spec, findings = preflight.check_env(cfg, settings)
    findings += preflight.check_keys(cfg)
    if findings:
        _report_findings(findings)
    if stack_up:
        from ideaforge.cli import stack

        try:
            stack.up(settings, with_worker=True)
        except stack.StackError as e:
            _fail(UNAVAILABLE, f"stack: {e}")

    async def go() -> None:
        from ideaforge.cli import stack

        client = await _client(settings)
        desc = await campaigns.describe(client, cfg.name)
        if restart or desc is None or desc.status == campaigns.RUNNING:
            local = stack.owned(settings, stack.WORKER)
            late = preflight.check_keys(cfg, local.pid if local else None)
            late += await preflight.check_workers(client, spec, cfg.profile, checks=cfg.preflight)
            late += preflight.check_sandbox(local is not None)
            if late and (restart or desc is None):
                _report_findings(late)  # before anything is deleted or started
        if restart and (desc is not None or _saved(settings, cfg.name) is not None):
            await _forget(client, settings, cfg.name)
        _, what = await campaigns.start(client, cfg, replace=restart)
        if what == "finished":
            console.print(
                f"campaign [bold]{cfg.name}[/bold] has already finished; its result is below "
                f"(`--restart` runs it again from scratch, or choose another --name)"
            )
            await _show(client, settings, cfg.name, follow=False)
            return
        console.print(f"campaign [bold]{cfg.name}[/bold] {what} (workflow {cfg.workflow_id})")
        console.print(
            f"  Temporal UI: http://127.0.0.1:{settings.temporal_ui_port}/namespaces/"
            f"{settings.temporal_namespace}/workflows/{cfg.workflow_id}"
        )
        console.print(f"  MLflow UI:   {settings.mlflow_uri}  (experiment {experiment_name(cfg.name)})")
        if follow:
            await _follow(client, settings, cfg.name)

    _run(go())
    _exit(OK)


def _report_findings(findings) -> NoReturn:  # noqa: ANN001 - list[preflight.Finding]
    for f in findings:
        err.print(f"[red]preflight ({f.check}):[/red] {f.problem}\n  fix: {f.fix}", highlight=False)
    err.print("nothing was started", highlight=False)
    _exit(UNAVAILABLE)


async def _forget(client, settings: Settings, name: str) -> None:  # noqa: ANN001 - temporalio Client
    """Delete every trace of a campaign: Temporal executions, saved state, MLflow experiment."""
    from ideaforge.names import state_key
    from ideaforge.store.artifacts import open_store

    n = await campaigns.delete(client, name)
    open_store(settings).put_named(state_key(name), b"")  # an empty state reads as "nothing saved"
    try:
        from ideaforge.track.tracker import Tracker

        gone = Tracker(settings.mlflow_uri).delete_campaign(name)
    except Exception as e:  # noqa: BLE001 - Temporal is the source of truth; say what was left behind
        err.print(f"[yellow]warning:[/yellow] MLflow experiment of {name} not deleted: {e}", highlight=False)
        gone = False
    console.print(
        f"deleted campaign {name}: {n} Temporal executions, saved state"
        + (", MLflow experiment" if gone else "")
    )


async def _follow(client, settings: Settings, name: str) -> CampaignView:  # noqa: ANN001 - Client
    """Live progress until the campaign closes: rich in a terminal, plain flushed lines when piped.
    Killing this leaves the campaign running."""
    from ideaforge.cli import display
    from ideaforge.cli.progress import IdeaTracker

    tracker = IdeaTracker(client, name)
    view, _ = await _view(client, settings, name, tracker)
    cfg = view.config
    direction = _direction(settings, cfg.env if cfg else None)
    tracker.total_steps = _total_steps(settings, cfg) if cfg else None
    warned = False
    grace = display.SilenceGrace(WORKER_SILENCE_GRACE_S)

    async def poll() -> tuple[CampaignView, list]:
        nonlocal warned
        v, ideas = await _view(client, settings, name, tracker)
        v = grace.apply(v, time.monotonic())
        if v.worker_silent and not warned and not console.is_terminal:
            # (in a terminal the live table says it: a print here would tear the live display)
            err.print("[yellow]the worker is not answering; `ideaforge up` restarts the local one[/yellow]")
            warned = True
        elif v.worker_answered:
            warned = False
        return v, ideas

    if console.is_terminal:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while True:
                view, ideas = await poll()
                live.update(display.rich_view(view, ideas, direction))
                if view.state != "running":
                    break
                await asyncio.sleep(FOLLOW_EVERY_S)
    else:
        out = display.PlainReporter(sys.stdout, direction)
        while True:
            view, ideas = await poll()
            out.update(view, ideas)
            if view.state != "running":
                break
            await asyncio.sleep(FOLLOW_EVERY_S)
    _print_closed(view, direction)
    return view


async def _view(client, settings: Settings, name: str, tracker) -> tuple[CampaignView, list]:  # noqa: ANN001
    """The campaign's view and its ideas, read concurrently; the saved state is read only when no worker
    answered (or the campaign is not running), so the usual case stays fast."""
    from ideaforge.cli.progress import with_total

    try:
        view, ideas = await asyncio.gather(campaigns.status(client, name), tracker.poll())
    except CampaignNotFound:
        saved = _saved(settings, name)
        if saved is None:
            raise
        return CampaignView(name=name, state="unknown", saved=saved, config=saved.config), []
    if view.state != "completed" and not view.worker_answered:
        view.saved = _saved(settings, name)
        view.config = view.config or (view.saved.config if view.saved else None)
    with_total(ideas, _total_steps(settings, view.config) if view.config else None)
    return view, ideas


def _print_closed(view: CampaignView, direction: str) -> None:
    if view.state == "completed" and view.result is not None:
        r = view.result
        from ideaforge.cli.display import compute_text

        why = "" if r.stopped_reason == "completed" else f" (stopped early: {r.stopped_reason.replace('_', ' ')})"
        console.print(
            f"campaign [bold]{view.name}[/bold] completed{why}: {r.epochs_completed} epochs, "
            f"{r.ideas_done} ideas"
        )
        console.print(f"compute: {compute_text(view)}", highlight=False)
        _print_leaderboard(r.archive, direction, r.baseline_metric)
    elif view.state not in ("running", "unknown"):
        err.print(f"campaign {view.name} is {view.state}. {campaigns.next_step(view)}", highlight=False)


def _fmt(x: float | None) -> str:
    from ideaforge.cli.display import fmt_metric

    return fmt_metric(x)


def _print_leaderboard(
    items: list[IdeaSummary], direction: str, baseline: float | None, top: int = 10
) -> None:
    t = Table(
        title=f"leaderboard ({'lower' if direction == 'min' else 'higher'} is better; baseline {_fmt(baseline)})"
    )
    for col in ("#", "idea", "epoch", "metric", "confirmed", "origin", "parents", "title"):
        t.add_column(col)
    for i, s in enumerate(campaigns.leaderboard(items, direction)[:top], 1):
        conf = ", ".join(f"{m:.4f}" for m in s.confirmed_metrics) or "-"
        t.add_row(
            str(i),
            s.idea_id.split("/", 1)[-1],
            str(s.epoch + 1),
            _fmt(s.metric),
            conf,
            s.origin,
            ",".join(p.split("/", 1)[-1] for p in s.parent_ids) or "-",
            s.title[:60],
        )
    console.print(t)
    failed = [s for s in items if s.status != "ok"]
    if failed:
        counts: dict[str, int] = {}
        for s in failed:
            counts[s.category or "?"] = counts.get(s.category or "?", 0) + 1
        console.print("failed: " + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))


async def _show(client, settings: Settings, name: str, follow: bool) -> int:  # noqa: ANN001 - Client
    """Print one campaign's state (live, result or saved); returns the exit code."""
    from ideaforge.cli import display
    from ideaforge.cli.progress import IdeaTracker

    tracker = IdeaTracker(client, name)
    view, ideas = await _view(client, settings, name, tracker)
    cfg = view.config
    direction = _direction(settings, cfg.env if cfg else None)
    if view.state == "running" and follow:
        view = await _follow(client, settings, name)
        return OK
    if view.state == "running":
        if console.is_terminal:
            console.print(display.rich_view(view, ideas, direction))
        else:
            console.print(display.header_line(view, ideas, direction), highlight=False)
            for p in ideas:
                console.print("  " + display.idea_line(p), highlight=False)
        if not view.worker_answered:
            err.print(
                "[yellow]no worker answered within 2 s: shown from Temporal's records and the saved state; "
                "`ideaforge up` restarts the local worker[/yellow]",
                highlight=False,
            )
            return DEGRADED
        return OK
    _print_closed(view, direction)
    if view.state == "unknown" and view.saved is not None:
        st = view.saved.state
        console.print(f"campaign {name}: Temporal has no record of it; its saved state holds {st.next_epoch} epochs")
        console.print(f"compute: {display.compute_text(view)}", highlight=False)
        _print_leaderboard(st.archive, direction, st.baseline_metric)
    return OK


def _show_saved_only(settings: Settings, name: str, why: str) -> NoReturn:
    """Temporal is down: show what the artifact store holds, exit 3 (or 2 when nothing is saved)."""
    saved = _saved(settings, name)
    if saved is None:
        _fail(UNAVAILABLE, why)
    direction = _direction(settings, saved.config.env)
    st = saved.state
    err.print(f"[yellow]{why}[/yellow]", highlight=False)
    console.print(
        f"campaign {name} (saved state): {st.next_epoch}/{saved.config.epochs} epochs saved, "
        f"{sum(s.origin != 'baseline' for s in st.archive)} ideas, baseline {_fmt(st.baseline_metric)}"
    )
    from ideaforge.cli.display import compute_text

    view = campaigns.CampaignView(name=name, state="unknown", saved=saved, config=saved.config)
    console.print(f"compute: {compute_text(view)}", highlight=False)
    _print_leaderboard(st.archive, direction, st.baseline_metric)
    _exit(DEGRADED)


@app.command()
def status(
    name: str | None = typer.Argument(None, help="campaign name; without it, the local stack's status"),
    follow: bool = typer.Option(False, help="re-attach and follow until it ends"),
) -> None:
    """A campaign's progress per idea (--follow to watch it), or without a name the local stack's health.
    With the worker down it answers within ~2 s from Temporal's records and the saved state (exit 3)."""
    if name is None:
        _stack_status()
    settings = Settings.from_env()

    async def go() -> int:
        try:
            client = await _client(settings)
        except Unreachable as e:
            _show_saved_only(settings, name, str(e))
        return await _show(client, settings, name, follow)

    _exit(_run(go()))


@app.command("list")
def list_() -> None:
    """List campaigns: status, env, current (or last) epoch counted from 1, best metric, first start time."""
    settings = Settings.from_env()

    async def go() -> None:
        rows = await campaigns.list_campaigns(await _client(settings))
        t = Table(title="campaigns")
        for col in ("name", "status", "env", "epoch", "best metric", "started"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r["name"],
                r["status"],
                r["env"] or "-",
                str(r["epoch"] + 1 if r["epoch"] is not None else "-"),
                _fmt(r["best_metric"]),
                r["started"].astimezone().strftime("%Y-%m-%d %H:%M") if r["started"] else "-",
            )
        console.print(t)
        if not rows:
            console.print("no campaigns yet: `ideaforge start --env tiny_gpt` starts one")

    _run(go())
    _exit(OK)


@app.command()
def pause(name: str) -> None:
    """Pause: ideas in flight finish, no new ones start until `resume`."""
    settings = Settings.from_env()
    _run(_signal(settings, name, "pause"))
    console.print(f"campaign {name}: pause requested")
    _exit(OK)


async def _signal(settings: Settings, name: str, what: str, arg: str | None = None) -> None:
    await campaigns.signal(await _client(settings), name, what, arg)


@app.command()
def resume(name: str, follow: bool = typer.Option(False, help="follow progress afterwards")) -> None:
    """Resume a paused campaign, or restart a failed/terminated/cancelled one from its last saved epoch
    (from the beginning when it stopped before saving anything)."""
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        _, what = await campaigns.resume(client, name, _saved(settings, name))
        console.print(f"campaign {name}: {what}")
        if follow:
            await _follow(client, settings, name)

    _run(go())
    _exit(OK)


@app.command()
def cancel(name: str) -> None:
    """Cancel a running campaign (running experiments are stopped)."""
    settings = Settings.from_env()

    async def go() -> None:
        await campaigns.cancel(await _client(settings), name)

    _run(go())
    console.print(f"campaign {name}: cancel requested")
    _exit(OK)


@app.command()
def delete(
    name: str, yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")
) -> None:
    """Delete a campaign for good: its Temporal history (campaign and ideas, stopping what runs), its saved
    state and its MLflow experiment. The name can then be used again."""
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        if await campaigns.describe(client, name) is None and _saved(settings, name) is None:
            raise CampaignNotFound(f"no campaign named {name!r}; `ideaforge list` shows the campaigns")
        if not yes:
            if not sys.stdin.isatty():
                raise CampaignError(f"deleting {name!r} needs confirmation: add --yes")
            if not typer.confirm(f"delete campaign {name!r} (history, saved state, MLflow runs)?"):
                raise CampaignError("not deleted")
        await _forget(client, settings, name)

    _run(go())
    _exit(OK)


@app.command()
def inject(name: str, idea: str) -> None:
    """Inject a human idea into a running campaign (runs in its next epoch)."""
    settings = Settings.from_env()
    _run(_signal(settings, name, "inject", idea))
    console.print(f"campaign {name}: idea queued for the next epoch")
    _exit(OK)


@app.command()
def leaderboard(name: str, top: int = typer.Option(10)) -> None:
    """Best ideas of a campaign with their lineage (from the saved state within ~2 s when no worker answers)."""
    settings = Settings.from_env()

    async def go() -> int:
        saved = _saved(settings, name)
        try:
            client = await _client(settings)
        except Unreachable as e:
            _show_saved_only(settings, name, str(e))
        items, live = await campaigns.archive(client, name, saved)
        view_env = saved.config.env if saved else None
        if view_env is None:
            v = await campaigns.status(client, name, saved)
            view_env = v.config.env if v.config else None
        base = next((s.metric for s in items if s.origin == "baseline"), None)
        _print_leaderboard(items, _direction(settings, view_env), base, top)
        if not live:
            err.print(
                "[yellow]no worker answered within 2 s: this is the last saved state[/yellow]", highlight=False
            )
            return DEGRADED
        return OK

    _exit(_run(go()))


def _saved_or_exit(settings: Settings, name: str) -> CampaignInput:
    saved = _saved(settings, name)
    if saved is None:
        _fail(NOT_FOUND, f"campaign {name!r} has no saved state yet (it saves after each epoch)")
    return saved


def _out_dir(settings: Settings, kind: str, out: Path | None, name: str) -> Path:
    """Where generated files go: ``--out`` if given, else ``IDEAFORGE_HOME/<kind>/<campaign>``."""
    return (out if out is not None else settings.home / kind) / name


@app.command()
def report(
    name: str,
    out: Path | None = typer.Option(None, help="output folder (default: IDEAFORGE_HOME/reports); a subfolder per campaign"),
    mlflow: bool = typer.Option(True, help="also log the report to the campaign's MLflow experiment"),
) -> None:
    """Plots (best-so-far, execution rate, metric distribution per epoch) and a leaderboard with lineage."""
    from ideaforge.report.reporting import log_report_to_mlflow, write_report
    from ideaforge.research_envs.registry import load_env
    from ideaforge.store.artifacts import open_store
    from ideaforge.track.tracker import Tracker

    settings = Settings.from_env()
    saved = _saved_or_exit(settings, name)
    try:
        spec = load_env(saved.config.env, settings.env_paths).spec
        rep = write_report(saved.state, spec, _out_dir(settings, "reports", out, name), campaign=name)
    except (OSError, ValueError) as e:
        _fail(REFUSED, f"cannot write the report: {e}")
    for f in rep.files:
        console.print(f"wrote {f}")
    if mlflow:
        try:
            run_id = log_report_to_mlflow(Tracker(settings.mlflow_uri, open_store(settings)), name, rep)
        except Exception as e:  # noqa: BLE001 - the files are written; say MLflow failed
            _fail(UNAVAILABLE, f"report written, but not logged to MLflow at {settings.mlflow_uri}: {e}")
        console.print(f"logged to MLflow run {run_id}")
    _exit(OK)


@app.command()
def export(
    name: str,
    out: Path | None = typer.Option(None, help="output folder (default: IDEAFORGE_HOME/exports); a subfolder per campaign"),
) -> None:
    """Executed ideas with rewards as a `datasets` dataset (plus JSONL) for RL training of the ideator."""
    from ideaforge.report.export import export_dataset
    from ideaforge.research_envs.registry import load_env
    from ideaforge.store.artifacts import open_store

    settings = Settings.from_env()
    saved = _saved_or_exit(settings, name)
    try:
        spec = load_env(saved.config.env, settings.env_paths).spec
        path = export_dataset(
            saved.state, spec, open_store(settings), _out_dir(settings, "exports", out, name), campaign=name
        )
    except (OSError, ValueError) as e:
        _fail(REFUSED, f"cannot export: {e}")
    console.print(f"wrote {path} ({len(saved.state.archive)} ideas)")
    _exit(OK)


rl_app = typer.Typer(no_args_is_help=True, help="RL of the ideator: offline from an export, or online RL campaigns.")
app.add_typer(rl_app, name="rl")


@rl_app.command("offline")
def rl_offline(
    export_dir: Path = typer.Argument(..., help="an `ideaforge export` folder (or its ideas.jsonl)"),
    run_name: str = typer.Option(..., "--run", help="RL run name; a run of the same name resumes"),
    steps: int = typer.Option(30, help="GRPO steps"),
    model: Path | None = typer.Option(None, help="local model folder (default: a tiny model built locally)"),
    group: int = typer.Option(8, help="ideas sampled per prompt"),
    novelty: float = typer.Option(0.0, help="anti-collapse novelty bonus weight (0 = plain GRPO)"),
    best_of_group: bool = typer.Option(False, help="anti-collapse: reward each group's best idea(s) only"),
    max_completion: int = typer.Option(256, help="max tokens per sampled idea"),
    out: Path | None = typer.Option(None, help="work folder (default: IDEAFORGE_HOME/rl/<run>)"),
) -> None:
    """Offline GRPO of the ideator on an export: LoRA adapters, collapse metrics per step in MLflow."""
    from pydantic import ValidationError

    from ideaforge.rl.offline import train_offline
    from ideaforge.rl.trainer import RLConfig
    from ideaforge.store.artifacts import open_store

    settings = Settings.from_env()
    try:
        cfg = RLConfig(
            run_name=run_name,
            steps=steps,
            num_generations=group,
            novelty_weight=novelty,
            group_reward="best" if best_of_group else "raw",
            max_completion_length=max_completion,
        )
    except ValidationError as e:
        _fail(REFUSED, f"bad RL settings: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}")
    work = out or settings.home / "rl" / run_name
    try:
        res = train_offline(
            export_dir, cfg, work, model_path=model, store=open_store(settings), mlflow_uri=settings.mlflow_uri
        )
    except (OSError, ValueError) as e:
        _fail(REFUSED, f"cannot train: {e}")
    console.print(
        f"{res.steps_done} steps; adapter {res.adapter_dir}; plots {work / 'report'}; mlflow run {res.mlflow_run_id}"
    )
    _exit(OK)


@rl_app.command("start")
def rl_start(
    name: str = typer.Argument(..., help="RL campaign name (also the trainer run and the MLflow run)"),
    env: str | None = typer.Option(None, help="research env"),
    model: Path | None = typer.Option(None, help="base model folder, readable by the rl worker and the server"),
    server: str | None = typer.Option(None, help="OpenAI-compatible base URL of the served ideator"),
    served_model: str | None = typer.Option(None, help="the server's name of the base model"),
    steps: int | None = typer.Option(None, help="RL steps"),
    group: int | None = typer.Option(None, help="ideas sampled per step (GRPO group)"),
    max_completion: int | None = typer.Option(None, help="max tokens per sampled idea"),
    lr: float | None = typer.Option(None, help="learning rate"),
    novelty: float | None = typer.Option(None, help="anti-collapse novelty bonus weight (0 = plain GRPO)"),
    best_of_group: bool = typer.Option(False, help="anti-collapse: reward each group's best idea(s) only"),
    reply_format: str | None = typer.Option(None, help="json (the ideator's format) or text (the reply is the idea)"),
    adapter_root: Path | None = typer.Option(None, help="where adapters are unpacked for the server"),
    config: Path | None = typer.Option(None, help="TOML file of the RL campaign config; flags override it"),
    follow: bool = typer.Option(False, help="print each step's metrics until the campaign ends"),
) -> None:
    """Start an online RL campaign on Temporal (workers must serve orchestrator, cpu, a training queue and rl)."""
    from ideaforge.cli import rl as rlc

    try:
        cfg = rlc.load_config(
            config,
            {
                "name": name,
                "env": env,
                "model_path": str(model.resolve()) if model else None,
                "server_url": server,
                "served_model": served_model,
                "reply_format": reply_format,
                "adapter_root": str(adapter_root.resolve()) if adapter_root else None,
                "rl.steps": steps,
                "rl.num_generations": group,
                "rl.max_completion_length": max_completion,
                "rl.learning_rate": lr,
                "rl.novelty_weight": novelty,
                "rl.group_reward": "best" if best_of_group else None,
            },
        )
    except CampaignError as e:
        _fail(REFUSED, str(e))
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        _, what = await rlc.start(client, cfg)
        console.print(f"RL campaign {cfg.name}: {what} (workflow {rl_workflow_id(cfg.name)})")
        for queue in await rlc.queues_unserved(client):
            err.print(
                f"[yellow]warning:[/yellow] no worker serves the `{queue}` queue: the campaign waits until "
                f"one does (`ideaforge worker --queues {queue}`; `ideaforge up` serves the others)",
                highlight=False,
            )
        if follow:
            await _follow_rl(client, cfg.name)

    _run(go())
    _exit(OK)


@rl_app.command("status")
def rl_status(
    name: str,
    follow: bool = typer.Option(False, help="print each new step until the campaign ends"),
) -> None:
    """Steps, rewards and collapse metrics of an RL campaign (MLflow experiment `ideaforge-rl` has them too)."""
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        if follow:
            await _follow_rl(client, name)
            return
        from ideaforge.cli import rl as rlc

        state, st = await rlc.status(client, name)
        _print_rl(name, state, st)

    _run(go())
    _exit(OK)


async def _follow_rl(client, name: str) -> None:
    from ideaforge.cli import rl as rlc

    shown = -1
    while True:
        state, st = await rlc.status(client, name)
        done = getattr(st, "steps_done", 0) if st is not None else 0
        if done != shown or state != "running":
            _print_rl(name, state, st)
            shown = done
        if state != "running":
            return
        await asyncio.sleep(FOLLOW_EVERY_S)


def _print_rl(name: str, state: str, st) -> None:
    if st is None:
        console.print(f"RL campaign {name}: {state} (no result; `temporal workflow show -w rl-{name}` says why)")
        return
    phase = getattr(st, "phase", state)
    steps = getattr(st, "steps", None)
    console.print(
        f"RL campaign {name}: {state}, {phase}; steps {st.steps_done}{f'/{steps}' if steps else ''}; "
        f"adapter {st.adapter_name or 'base'}; baseline {st.baseline_metric}; best reward {st.best_reward}"
    )
    t = Table()
    for col in ("step", "mean reward", "max reward", "distinct", "diversity", "categories", "reply len", "executed"):
        t.add_column(col)
    first = st.steps_done - len(st.history) + 1
    for i, m in enumerate(st.history):
        t.add_row(
            str(first + i),
            f"{m.mean_reward:.3f}",
            f"{m.max_reward:.3f}",
            f"{m.distinct_ideas}/{m.n}",
            f"{m.semantic_diversity:.3f}",
            f"{m.category_entropy:.2f}",
            f"{m.reply_length:.1f}",
            f"{m.execution_rate:.0%}",
        )
    if st.history:
        console.print(t)


@rl_app.command("serve")
def rl_serve(
    model: Path = typer.Option(..., help="local model folder (config.json, weights, tokenizer)"),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    served_model_name: str = typer.Option("base"),
    max_loras: int = typer.Option(4, help="adapters kept loaded (the oldest is dropped)"),
) -> None:
    """Serve a model OpenAI-compatibly on a CPU, with runtime LoRA loading (vLLM's role on a GPU)."""
    from ideaforge.rl.serve import main as serve_main

    serve_main(
        ["--model", str(model), "--host", host, "--port", str(port), "--served-model-name", served_model_name,
         "--max-loras", str(max_loras)]
    )  # fmt: skip
    _exit(OK)


@rl_app.command("tiny-model")
def rl_tiny_model(
    out: Path = typer.Argument(..., help="folder to write the model into (must not hold one)"),
    env: str = typer.Option(..., help="the env whose prompt and catalogue words make the vocabulary"),
    words: str = typer.Option("", help="extra words for the vocabulary"),
    seed: int = typer.Option(0),
) -> None:
    """A tiny random Llama and word-level tokenizer for CPU RL runs (no download)."""
    from ideaforge.research_envs.registry import load_env
    from ideaforge.rl.online import tiny_corpus
    from ideaforge.rl.policy import save_tiny_model

    settings = Settings.from_env()
    try:
        path = save_tiny_model(out, tiny_corpus(load_env(env, settings.env_paths), words), seed=seed)
    except (OSError, ValueError) as e:
        _fail(REFUSED, f"cannot write the tiny model: {e}")
    console.print(f"wrote {path}")
    _exit(OK)


def first_sentence(text: str, limit: int = 90) -> str:
    """The first sentence of ``text`` (whitespace folded), cut at a word boundary with an ellipsis."""
    flat = " ".join(text.split())
    end = flat.find(". ")
    sentence = flat if end < 0 else flat[: end + 1]
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: limit - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


@app.command()
def envs() -> None:
    """List the research environments that can be used."""
    from ideaforge.research_envs.registry import available_envs, load_env

    settings = Settings.from_env()
    t = Table(title="research envs")
    for col in ("name", "metric", "device", "profiles", "description"):
        t.add_column(col)
    for n in available_envs(settings.env_paths):
        try:
            s = load_env(n, settings.env_paths).spec
            t.add_row(
                n,
                f"{s.metric} ({s.direction})",
                s.resources.task_queue,
                ", ".join(sorted(s.profiles)),
                first_sentence(s.description),
            )
        except ValueError as e:
            t.add_row(n, "-", "-", "-", f"[red]invalid: {str(e).splitlines()[0]}[/red]")
    console.print(t)
    _exit(OK)


@app.command()
def worker(
    queues: str | None = typer.Option(None),
    slots: int | None = typer.Option(None),
    gpu_type: str | None = typer.Option(None),
) -> None:
    """Run a worker in the foreground (GPU machines join a deployment with this)."""
    from ideaforge.workers.main import main as worker_main

    args = [
        *(["--queues", queues] if queues else []),
        *(["--slots", str(slots)] if slots else []),
        *(["--gpu-type", gpu_type] if gpu_type else []),
    ]
    worker_main(args)
    _exit(OK)


def main() -> None:
    logging.basicConfig(level=os.environ.get("IDEAFORGE_LOG_LEVEL", "WARNING"))
    app()


if __name__ == "__main__":
    main()
