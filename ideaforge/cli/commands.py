"""`ideaforge` command line: bring the local stack up, start/follow/steer campaigns, read results."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ideaforge.cli import campaigns
from ideaforge.cli.campaigns import CampaignError
from ideaforge.config import Settings
from ideaforge.models import CampaignInput, CampaignStatus, IdeaSummary
from ideaforge.names import experiment_name

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(soft_wrap=True)
err = Console(stderr=True)


def _exit(code: int = 0) -> None:
    """Flush and leave without interpreter teardown (temporalio can crash at exit, sdk-python#300)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(coro) -> Any:
    try:
        return asyncio.run(coro)
    except CampaignError as e:
        err.print(f"[red]error:[/red] {e}")
        _exit(1)
    except RuntimeError as e:
        if "Failed client connect" in str(e) or "connection" in str(e).lower():
            err.print(
                f"[red]error:[/red] cannot reach Temporal at {Settings.from_env().temporal_address}: {e}\n"
                "Run `ideaforge up` first (or set IDEAFORGE_TEMPORAL_ADDRESS)."
            )
            _exit(2)
        raise


async def _client(settings: Settings):
    from ideaforge.workers.main import connect

    return await connect(settings)


def _saved(settings: Settings, name: str) -> CampaignInput | None:
    from ideaforge.activities.campaign import load_saved_state
    from ideaforge.store.artifacts import open_store

    return load_saved_state(open_store(settings), name)


# ---------------------------------------------------------------------------------------------- stack


@app.command()
def up(worker: bool = typer.Option(True, help="also start the background ideaforge worker")) -> None:
    """Start the local stack (Temporal dev server, MLflow server, worker) in the background."""
    from ideaforge.cli import stack

    settings = Settings.from_env()
    try:
        st = stack.up(settings, with_worker=worker)
    except stack.StackError as e:
        err.print(f"[red]stack error:[/red] {e}")
        _exit(2)
    _print_stack(st)
    _exit(0)


@app.command()
def down() -> None:
    """Stop the local stack started by `up` (data stays in IDEAFORGE_HOME)."""
    from ideaforge.cli import stack

    stopped = stack.down(Settings.from_env())
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    _exit(0)


def _print_stack(st) -> None:
    t = Table(title="ideaforge stack")
    for col in ("service", "pid", "healthy", "url"):
        t.add_column(col)
    for name, svc in st.services.items():
        t.add_row(name, str(svc.pid or "-"), "yes" if svc.healthy else "no", svc.url or "")
    console.print(t)


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
    follow: bool = typer.Option(True, help="show progress until the campaign ends"),
    stack_up: bool = typer.Option(True, "--up/--no-up", help="start the local stack if it is not running"),
) -> None:
    """Start a campaign (or attach to the running one of that name) and follow it."""
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
            },
        )
        from ideaforge.research_envs.registry import EnvError, load_env

        try:
            spec = load_env(cfg.env, settings.env_paths).spec
        except EnvError as e:
            raise CampaignError(str(e)) from e
        if cfg.profile not in spec.profiles:
            raise CampaignError(
                f"env {cfg.env!r} has no profile {cfg.profile!r}; it has {sorted(spec.profiles)}"
            )
    except CampaignError as e:
        err.print(f"[red]error:[/red] {e}")
        _exit(1)
    if stack_up:
        from ideaforge.cli import stack

        try:
            stack.up(settings, with_worker=True)
        except stack.StackError as e:
            err.print(f"[red]stack error:[/red] {e}")
            _exit(2)

    async def go() -> None:
        client = await _client(settings)
        _, what = await campaigns.start(client, cfg)
        console.print(f"campaign [bold]{cfg.name}[/bold] {what} (workflow {cfg.workflow_id})")
        console.print(
            f"  Temporal UI: http://127.0.0.1:{settings.temporal_ui_port}/namespaces/"
            f"{settings.temporal_namespace}/workflows/{cfg.workflow_id}"
        )
        console.print(f"  MLflow UI:   {settings.mlflow_uri}  (experiment {experiment_name(cfg.name)})")
        if follow:
            await _follow(client, cfg.name)

    _run(go())
    _exit(0)


async def _follow(client, name: str) -> None:
    """Live progress until the campaign closes. Killing this leaves the campaign running."""
    last: CampaignStatus | None = None
    t0 = time.monotonic()
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            try:
                state, st, result = await campaigns.status(client, name)
            except Exception as e:  # noqa: BLE001 - transient errors while following: keep trying
                logging.getLogger(__name__).debug("status failed: %s", e)
                await asyncio.sleep(1)
                continue
            if st is not None:
                last = st
                live.update(_status_table(st, time.monotonic() - t0))
            if state != "running":
                break
            await asyncio.sleep(1)
    if state == "completed" and result is not None:
        console.print(
            f"campaign [bold]{name}[/bold] completed: {result.epochs_completed} epochs, "
            f"{len(result.archive)} ideas, {time.monotonic() - t0:.0f}s"
        )
        direction = last.direction if last and last.direction else "min"
        _print_leaderboard(result.archive, direction, result.baseline_metric)
    else:
        err.print(f"campaign {name} is {state}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _status_table(st: CampaignStatus, elapsed: float) -> Table:
    t = Table(title=f"campaign {st.name} on {st.env}  ({elapsed:.0f}s)", show_header=False)
    t.add_row("epoch", f"{min(st.epoch + 1, st.epochs)}/{st.epochs}" + (" (paused)" if st.paused else ""))
    t.add_row("phase", st.phase)
    t.add_row(
        "ideas",
        f"{st.ideas_done} done: {st.ideas_ok} ok, {st.ideas_failed} failed; {st.ideas_running} in flight",
    )
    t.add_row("baseline", _fmt(st.baseline_metric))
    t.add_row("best", f"{_fmt(st.best_metric)}  ({st.best_idea or '-'})")
    t.add_row("best per epoch", ", ".join(_fmt(b) for b in st.epoch_bests) or "-")
    if st.usage.calls:
        t.add_row(
            "LLM",
            f"{st.usage.calls} calls, {st.usage.input_tokens + st.usage.output_tokens} tokens, "
            f"${st.usage.cost_usd:.4f}",
        )
    return t


def _print_leaderboard(
    items: list[IdeaSummary], direction: str, baseline: float | None, top: int = 10
) -> None:
    t = Table(
        title=f"leaderboard ({'lower' if direction == 'min' else 'higher'} is better; baseline {_fmt(baseline)})"
    )
    for col in ("#", "idea", "metric", "confirmed", "origin", "parents", "title"):
        t.add_column(col)
    for i, s in enumerate(campaigns.leaderboard(items, direction)[:top], 1):
        conf = ", ".join(f"{m:.4f}" for m in s.confirmed_metrics) or "-"
        t.add_row(
            str(i),
            s.idea_id.split("/", 1)[-1],
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


@app.command()
def status(
    name: str | None = typer.Argument(None, help="campaign name; without it, the local stack's status"),
    follow: bool = typer.Option(False, help="re-attach and follow until it ends"),
) -> None:
    """Show a campaign's progress (re-attach with --follow), or without a name the local stack's health."""
    settings = Settings.from_env()
    if name is None:
        from ideaforge.cli import stack

        _print_stack(stack.status(settings))
        _exit(0)

    async def go() -> None:
        client = await _client(settings)
        state, st, result = await campaigns.status(client, name)
        if st is not None:
            console.print(_status_table(st, 0))
            if follow:
                await _follow(client, name)
        elif result is not None:
            console.print(
                f"campaign {name}: completed, {result.epochs_completed} epochs, {len(result.archive)} ideas"
            )
            best = result.best
            console.print(
                f"best: {_fmt(best.metric) if best else '-'} ({best.idea_id if best else '-'}), "
                f"baseline {_fmt(result.baseline_metric)}"
            )
        else:
            console.print(
                f"campaign {name}: {state}"
                + (
                    " — `ideaforge resume` continues it from its last completed epoch"
                    if state != "completed"
                    else ""
                )
            )

    _run(go())
    _exit(0)


@app.command("list")
def list_() -> None:
    """List campaigns with their status, env, epoch and best metric."""
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
                str(r["epoch"] if r["epoch"] is not None else "-"),
                _fmt(r["best_metric"]),
                r["started"].strftime("%Y-%m-%d %H:%M") if r["started"] else "-",
            )
        console.print(t)

    _run(go())
    _exit(0)


@app.command()
def pause(name: str) -> None:
    """Pause: ideas in flight finish, no new ones start until `resume`."""
    settings = Settings.from_env()
    _run(_signal(settings, name, "pause"))
    console.print(f"campaign {name}: pause requested")
    _exit(0)


async def _signal(settings: Settings, name: str, what: str, arg: str | None = None) -> None:
    await campaigns.signal(await _client(settings), name, what, arg)


@app.command()
def resume(name: str, follow: bool = typer.Option(False, help="follow progress afterwards")) -> None:
    """Resume a paused campaign, or restart a failed/terminated one from its last completed epoch."""
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        _, what = await campaigns.resume(client, name, _saved(settings, name))
        console.print(f"campaign {name}: {what}")
        if follow:
            await _follow(client, name)

    _run(go())
    _exit(0)


@app.command()
def cancel(name: str) -> None:
    """Cancel a running campaign (running experiments are stopped)."""
    settings = Settings.from_env()

    async def go() -> None:
        await campaigns.cancel(await _client(settings), name)

    _run(go())
    console.print(f"campaign {name}: cancel requested")
    _exit(0)


@app.command()
def inject(name: str, idea: str) -> None:
    """Inject a human idea into a running campaign (runs in its next epoch)."""
    settings = Settings.from_env()
    _run(_signal(settings, name, "inject", idea))
    console.print(f"campaign {name}: idea queued for the next epoch")
    _exit(0)


@app.command()
def leaderboard(name: str, top: int = typer.Option(10)) -> None:
    """Best ideas of a campaign with their lineage."""
    settings = Settings.from_env()

    async def go() -> None:
        client = await _client(settings)
        saved = _saved(settings, name)
        items = await campaigns.archive(client, name, saved)
        from ideaforge.research_envs.registry import load_env

        env_name = saved.config.env if saved else None
        direction = load_env(env_name, settings.env_paths).spec.direction if env_name else "min"
        base = next((s.metric for s in items if s.origin == "baseline"), None)
        _print_leaderboard(items, direction, base, top)

    _run(go())
    _exit(0)


def _saved_or_exit(settings: Settings, name: str) -> CampaignInput:
    saved = _saved(settings, name)
    if saved is None:
        err.print(f"[red]error:[/red] campaign {name!r} has no saved state yet (it saves after each epoch)")
        _exit(1)
    return saved  # type: ignore[return-value]


@app.command()
def report(
    name: str,
    out: Path = typer.Option(Path("reports"), help="output folder (a subfolder per campaign)"),
    mlflow: bool = typer.Option(True, help="also log the report to the campaign's MLflow experiment"),
) -> None:
    """Plots (best-so-far, execution rate, metric distribution per epoch) and a leaderboard with lineage."""
    from ideaforge.report.reporting import log_report_to_mlflow, write_report
    from ideaforge.research_envs.registry import load_env
    from ideaforge.store.artifacts import open_store
    from ideaforge.track.tracker import Tracker

    settings = Settings.from_env()
    saved = _saved_or_exit(settings, name)
    spec = load_env(saved.config.env, settings.env_paths).spec
    rep = write_report(saved.state, spec, out / name, campaign=name)
    for f in rep.files:
        console.print(f"wrote {f}")
    if mlflow:
        run_id = log_report_to_mlflow(Tracker(settings.mlflow_uri, open_store(settings)), name, rep)
        console.print(f"logged to MLflow run {run_id}")
    _exit(0)


@app.command()
def export(
    name: str, out: Path = typer.Option(Path("exports"), help="output folder (a subfolder per campaign)")
) -> None:
    """Executed ideas with rewards as a `datasets` dataset (plus JSONL) for RL training of the ideator."""
    from ideaforge.report.export import export_dataset
    from ideaforge.research_envs.registry import load_env
    from ideaforge.store.artifacts import open_store

    settings = Settings.from_env()
    saved = _saved_or_exit(settings, name)
    spec = load_env(saved.config.env, settings.env_paths).spec
    path = export_dataset(saved.state, spec, open_store(settings), out / name, campaign=name)
    console.print(f"wrote {path} ({len(saved.state.archive)} ideas)")
    _exit(0)


@app.command()
def envs() -> None:
    """List the research environments that can be used."""
    from ideaforge.research_envs.registry import available_envs, load_env

    settings = Settings.from_env()
    t = Table(title="research envs")
    for col in ("name", "metric", "device", "description"):
        t.add_column(col)
    for n in available_envs(settings.env_paths):
        try:
            s = load_env(n, settings.env_paths).spec
            t.add_row(
                n, f"{s.metric} ({s.direction})", s.resources.task_queue, s.description.splitlines()[0][:70]
            )
        except ValueError as e:
            t.add_row(n, "-", "-", f"[red]invalid: {str(e).splitlines()[0]}[/red]")
    console.print(t)
    _exit(0)


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
    _exit(0)


def main() -> None:
    logging.basicConfig(level=os.environ.get("IDEAFORGE_LOG_LEVEL", "WARNING"))
    app()


if __name__ == "__main__":
    main()
