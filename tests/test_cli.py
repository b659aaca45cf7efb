"""The `ideaforge` command line as a user runs it (a real process): answers, error lines and exit codes.

Exit codes: 0 done, 1 refused / bad input, 2 stack unreachable or preflight failed, 3 answered from saved
state (worker or Temporal down) or a stack service down, 4 no such campaign.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ideaforge.cli import campaigns, display
from ideaforge.cli.commands import first_sentence
from ideaforge.cli.progress import IdeaProgress, eta
from ideaforge.config import Settings
from ideaforge.models import (
    CampaignConfig,
    CampaignInput,
    CampaignState,
    CampaignStatus,
    DeviceTime,
    IdeaSummary,
)

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``ideaforge ARGS`` as a separate process (settings from os.environ), output captured (piped)."""
    return subprocess.run(
        [sys.executable, "-m", "ideaforge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def no_traceback(p: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr


def save_state(settings: Settings, name: str, epochs_done: int = 1) -> CampaignInput:
    """A saved campaign state in the artifact store, as the workflow writes it after an epoch."""
    from ideaforge.names import state_key
    from ideaforge.store.artifacts import open_store

    archive = [
        IdeaSummary(idea_id=f"campaign-{name}/e000/i00", epoch=0, title="baseline", text="b", origin="baseline",
                    status="ok", metric=0.5, device_time=DeviceTime.held("cpu", 1, 90.0)),
        IdeaSummary(idea_id=f"campaign-{name}/e000/i01", epoch=0, title="smaller lr", text="lr", origin="explore",
                    status="ok", metric=0.25, device_time=DeviceTime.held("cpu", 1, 90.0)),
        IdeaSummary(idea_id=f"campaign-{name}/e000/i02", epoch=0, title="crash", text="c", origin="explore",
                    status="failed", category="crashed"),
    ]  # fmt: skip
    inp = CampaignInput(
        config=CampaignConfig(name=name, env="toy_quad", epochs=3, ideas_per_epoch=2),
        state=CampaignState(
            next_epoch=epochs_done,
            archive=archive,
            baseline_metric=0.5,
            device_time=DeviceTime.total(s.device_time for s in archive),
        ),
    )
    open_store(settings).put_named(state_key(name), inp.model_dump_json().encode())
    return inp


# --------------------------------------------------------------------------- without any server


def test_stack_status_names_what_is_down_and_the_fix(settings: Settings) -> None:
    p = cli("status")
    no_traceback(p)
    assert p.returncode == 3
    for service in ("supervisor", "temporal", "mlflow", "worker"):
        assert f"{service} is down" in p.stderr or f"{service} at" in p.stderr, p.stderr
    assert "fix: ideaforge up" in p.stderr


def test_status_with_temporal_down_answers_from_saved_state(settings: Settings) -> None:
    save_state(settings, "saved1")
    t0 = time.monotonic()
    p = cli("status", "saved1")
    took = time.monotonic() - t0
    no_traceback(p)
    assert p.returncode == 3, p.stderr
    assert "cannot reach Temporal" in p.stderr and "ideaforge up" in p.stderr
    assert "1/3 epochs saved" in p.stdout and "smaller lr" in p.stdout
    assert "compute: 0.05 CPU-slot-h (2 training attempts)" in p.stdout, p.stdout
    print(f"\nstatus with Temporal down: {took:.2f}s including interpreter start")


@pytest.mark.slow  # several CLI processes
def test_status_and_leaderboard_without_temporal_or_state_exit_2(settings: Settings) -> None:
    for cmd in (("status", "nothing"), ("leaderboard", "nothing"), ("list",), ("delete", "x", "--yes")):
        p = cli(*cmd)
        no_traceback(p)
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "cannot reach Temporal" in p.stderr and "ideaforge up" in p.stderr


@pytest.mark.slow  # several CLI processes
def test_leaderboard_with_temporal_down_shows_the_saved_leaderboard(settings: Settings) -> None:
    save_state(settings, "saved2")
    p = cli("leaderboard", "saved2")
    no_traceback(p)
    assert p.returncode == 3
    lines = [ln for ln in p.stdout.splitlines() if "e000/" in ln]
    assert "e000/i01" in lines[0] and "e000/i00" in lines[1]  # lower is better: 0.25 before 0.5
    assert "crashed x1" in p.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--env", "no_such_env"), 2, "preflight (env)"),
        (("--env", "toy_quad", "--profile", "huge"), 2, "profile one of: default"),
        (("--env", "toy_quad", "--ideator", "anthropic"), 2, "ANTHROPIC_API_KEY"),
        (("--env", "toy_quad", "--epochs", "0"), 1, "epochs"),
        (("--env", "toy_quad", "--strategy", "magic"), 1, "search.strategy"),
        (("--env", "toy_quad", "--budget-gpu-hours", "0"), 1, "budget_gpu_hours"),
        (("--env", "toy_quad", "--budget-gpu-hours", "2"), 2, "preflight (budget)"),
        (("--config", "/no/such.toml"), 1, "config file not found"),
    ],
)
def test_start_refuses_what_cannot_run_before_anything_starts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], code: int, needle: str
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    p = cli("start", "--name", "pre", "--no-follow", *args)
    no_traceback(p)
    assert p.returncode == code, (p.stdout, p.stderr)
    assert needle in p.stderr, p.stderr
    assert not (settings.home / "run" / "supervisor.pid").exists()  # no stack was started
    if code == 2:
        assert "fix:" in p.stderr and "nothing was started" in p.stderr


@pytest.mark.slow  # several CLI processes
def test_report_and_export_of_an_unknown_campaign_exit_4(settings: Settings) -> None:
    for cmd in ("report", "export"):
        p = cli(cmd, "ghost")
        no_traceback(p)
        assert p.returncode == 4 and "no saved state" in p.stderr


@pytest.mark.slow  # CLI processes
def test_rl_refuses_a_missing_export_and_a_bad_run_name(settings: Settings, tmp_path: Path) -> None:
    p = cli("rl", "offline", str(tmp_path / "nowhere"), "--run", "r1")
    no_traceback(p)
    assert p.returncode == 1 and "run `ideaforge export` first" in p.stderr
    p = cli("rl", "offline", str(tmp_path), "--run", "bad name!")
    no_traceback(p)
    assert p.returncode == 1 and "bad RL settings: run_name" in p.stderr


@pytest.mark.slow  # several CLI processes
def test_report_and_export_write_under_home_not_the_current_directory(settings: Settings, tmp_path: Path) -> None:
    save_state(settings, "files1")
    before = set(REPO.iterdir())
    p = cli("export", "files1")
    assert p.returncode == 0, p.stderr
    assert (settings.home / "exports" / "files1").is_dir()
    p = cli("report", "files1", "--no-mlflow")
    assert p.returncode == 0, p.stderr
    assert (settings.home / "reports" / "files1").is_dir()
    p = cli("report", "files1", "--no-mlflow", "--out", str(tmp_path / "mine"))
    assert p.returncode == 0 and (tmp_path / "mine" / "files1").is_dir()
    assert set(REPO.iterdir()) == before


def test_envs_lists_whole_words(settings: Settings) -> None:
    p = cli("envs")
    assert p.returncode == 0
    assert "toy_quad" in p.stdout and "Toy test environment" in p.stdout


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_unknown_command_and_missing_argument_are_usage_errors(settings: Settings) -> None:
    assert cli("frobnicate").returncode == 2
    p = cli("delete")
    assert p.returncode == 2 and "Missing argument" in p.stderr


# --------------------------------------------------------------------------- pure helpers


def test_first_sentence_never_cuts_a_word() -> None:
    text = "Character-level GPT pre-training on Shakespeare with a locked evaluator. More text here."
    assert first_sentence(text) == "Character-level GPT pre-training on Shakespeare with a locked evaluator."
    cut = first_sentence("word " * 40, limit=30)
    assert cut.endswith("…") and len(cut) <= 30 and cut[:-1].split() == ["word"] * len(cut[:-1].split())


def test_eta_from_pace() -> None:
    assert eta(30, 120, 60.0) == pytest.approx(180.0)
    assert eta(0, 120, 5.0) is None and eta(10, None, 5.0) is None
    assert eta(120, 120, 99.0) == 0.0


def _idea(i: int, state: str, origin: str = "explore", metric: float | None = None) -> IdeaProgress:
    return IdeaProgress(idea_id=f"campaign-c/e000/i{i:02d}", state=state, origin=origin, metric=metric)


def test_counts_leave_the_baseline_out() -> None:
    ideas = [
        _idea(0, "training", "baseline"),
        *(_idea(i, "training") for i in (1, 2)),
        _idea(3, "queued"),
        _idea(4, "implementing"),
    ]
    assert display.counts(ideas) == {"done": 0, "failed": 0, "running": 3, "queued": 1}


def test_best_so_far_counts_ideas_as_soon_as_they_finish() -> None:
    view = campaigns.CampaignView(name="c", state="running")
    ideas = [_idea(0, "done", "baseline", 2.0), _idea(1, "done", metric=1.8), _idea(2, "training")]
    assert display.best_of(view, ideas, "min") == (1.8, "e000/i01")
    assert display.baseline_of(view, ideas) == (2.0, "2")
    assert "10.0% better than the baseline" in display.header_line(view, ideas, "min")
    only_base = [_idea(0, "done", "baseline", 2.0), _idea(1, "training")]
    assert display.best_of(view, only_base, "min") == (None, "-")  # the baseline is not an idea


def test_compute_shows_gpu_hours_against_the_budget_and_why_planning_stopped() -> None:
    live = CampaignStatus(
        name="c", env="e", phase="p", epoch=1, epochs=3, paused=False, ideas_done=3, ideas_ok=3, ideas_failed=0,
        ideas_running=1, best_metric=None, best_idea=None, baseline_metric=None,
        device_time=DeviceTime(gpu_seconds=3 * 3600.0, attempts=4), budget_gpu_hours=2.0,
        stopped_reason="gpu_budget_exhausted",
    )  # fmt: skip
    view = campaigns.CampaignView(name="c", state="running", live=live, worker_answered=True)
    text = display.compute_text(view)
    assert text == "3 GPU-h (4 training attempts); GPU budget 2 h (150% used); stopped: gpu budget exhausted"
    assert f"compute {text}" in display.header_line(view, [], "min")
    empty = campaigns.CampaignView(name="c", state="running")
    assert display.compute_text(empty) == "-"


def test_plain_output_prints_changes_only_and_flushes(tmp_path: Path) -> None:
    class Out:
        def __init__(self) -> None:
            self.lines: list[str] = []
            self.flushes = 0

        def write(self, s: str) -> None:
            self.lines.append(s)

        def flush(self) -> None:
            self.flushes += 1

    out = Out()
    rep = display.PlainReporter(out, "min")  # type: ignore[arg-type]
    view = campaigns.CampaignView(name="c", state="running")
    rep.update(view, [_idea(1, "queued")])
    rep.update(view, [_idea(1, "queued")])
    assert len(out.lines) == 2 and out.flushes == 2  # one idea line + one summary, nothing repeated
    failed = _idea(1, "failed")
    failed.category, failed.error = "crashed", "Traceback: boom"
    rep.update(view, [failed])
    assert any("FAILED (crashed): Traceback: boom" in ln for ln in out.lines)


def test_each_stopped_state_has_one_next_step_and_no_loop() -> None:
    saved = CampaignInput(config=CampaignConfig(name="c", env="toy_quad"), state=CampaignState(next_epoch=2))
    assert "resume c" in campaigns.next_step(campaigns.CampaignView(name="c", state="failed", saved=saved))
    early = campaigns.next_step(campaigns.CampaignView(name="c", state="failed"))
    assert "resume c" in early and "from the beginning" in early
    assert "--restart" in campaigns.next_step(campaigns.CampaignView(name="c", state="completed"))


# --------------------------------------------------------------------------- against a real Temporal server


@pytest.mark.integration
@pytest.mark.slow  # waits out the 2 s query timeout in three processes
def test_status_with_no_worker_answers_within_the_query_timeout(served_settings: Settings, temporal_env) -> None:
    """A campaign whose worker is gone: `status` answers from Temporal's records (exit 3), never hangs."""
    import asyncio

    name = f"noworker-{os.getpid()}-{int(time.time())}"
    cfg = CampaignConfig(name=name, env="toy_quad", epochs=1, ideas_per_epoch=1)

    async def go() -> float:
        client = temporal_env.client
        await campaigns.start(client, cfg)  # nobody polls: no worker answers its queries
        t0 = time.monotonic()
        view = await campaigns.status(client, name)
        took = time.monotonic() - t0
        assert view.state == "running" and view.live is None and not view.worker_answered
        assert view.config == cfg
        return took

    took = asyncio.run(go())
    assert took < campaigns.QUERY_TIMEOUT.total_seconds() + 1.5, took
    t0 = time.monotonic()
    p = cli("status", name)
    wall = time.monotonic() - t0
    no_traceback(p)
    assert p.returncode == 3, p.stderr
    assert "no worker answered within 2 s" in p.stderr and "ideaforge up" in p.stderr
    assert f"{name} epoch -/1: 0 done" in p.stdout  # no worker ever ran it
    p = cli("leaderboard", name)
    assert p.returncode == 3 and "no worker answered" in p.stderr
    print(f"\nstatus with no worker: campaigns.status {took:.2f}s; the CLI process {wall:.2f}s (interpreter start included)")


@pytest.mark.integration
@pytest.mark.slow
def test_name_lifecycle_finished_delete_restart(served_settings: Settings, temporal_env) -> None:
    """Start -> finished -> `start` again shows it -> `delete --yes` -> gone (4) -> start afresh; and a
    campaign terminated before its first epoch resumes from the beginning (no state loop)."""
    import asyncio

    from mlflow.tracking import MlflowClient

    from ideaforge.names import experiment_name
    from tests.harness import running_worker

    name = f"life-{os.getpid()}-{int(time.time())}"
    args = ("--name", name, "--env", "toy_quad", "--epochs", "1", "--ideas", "1", "--profile", "smoke", "--no-up")

    async def go() -> None:
        client = temporal_env.client
        async with running_worker(client, served_settings):
            p = await asyncio.to_thread(cli, "start", *args)
            assert p.returncode == 0, p.stderr
            assert "completed: 1 epochs" in p.stdout and "leaderboard" in p.stdout
            # the device time of the real runs (baseline + 1 idea, one attempt each, on CPU slots)
            m = re.search(r"compute: ([\d.e-]+) CPU-slot-h \(2 training attempts\)", p.stdout)
            assert m and float(m.group(1)) > 0, p.stdout
            assert "[" in p.stdout and "done, metric" in p.stdout  # piped: plain progress lines
            again = await asyncio.to_thread(cli, "start", *args)
            assert again.returncode == 0 and "already finished" in again.stdout
            lst = await asyncio.to_thread(cli, "list")
            assert name in lst.stdout and "completed" in lst.stdout
            assert MlflowClient(served_settings.mlflow_uri).get_experiment_by_name(experiment_name(name))
            gone = await asyncio.to_thread(cli, "delete", name)
            assert gone.returncode == 1 and "--yes" in gone.stderr  # no terminal: no prompt, refused
            gone = await asyncio.to_thread(cli, "delete", name, "--yes")
            assert gone.returncode == 0, gone.stderr
            assert MlflowClient(served_settings.mlflow_uri).get_experiment_by_name(experiment_name(name)) is None
            for _ in range(120):  # the server deletes asynchronously
                st = await asyncio.to_thread(cli, "status", name)
                if st.returncode == 4:
                    break
                await asyncio.sleep(1)
            assert st.returncode == 4 and "no campaign named" in st.stderr
            fresh = await asyncio.to_thread(cli, "start", *args, "--no-follow")
            assert fresh.returncode == 0 and "started" in fresh.stdout
            handle = client.get_workflow_handle(campaigns.campaign_workflow_id(name))
            await handle.terminate("test: stopped before its first epoch was saved")
            st = await asyncio.to_thread(cli, "status", name)
            assert st.returncode == 0 and f"ideaforge resume {name}" in st.stderr
            res = await asyncio.to_thread(cli, "resume", name)
            assert res.returncode == 0 and "from the beginning" in res.stdout, res.stderr
            await asyncio.wait_for(handle.result(), 120)
            redo = await asyncio.to_thread(cli, "start", *args, "--restart", "--no-follow")
            assert redo.returncode == 0 and f"deleted campaign {name}" in redo.stdout and "started" in redo.stdout

    asyncio.run(go())


def test_preflight_sandbox_check_uses_the_runner_sandbox(monkeypatch) -> None:
    """The preflight asks the same check the training worker uses; a missing sandbox is a finding with a fix."""
    from ideaforge.cli import preflight
    from ideaforge.run import sandbox

    assert preflight.check_sandbox(False) == []
    sandbox.check_sandbox.cache_clear()
    assert preflight.check_sandbox(True) == []  # root + bubblewrap here: the sandbox works

    def broken() -> str:
        raise sandbox.SandboxUnavailable("bwrap not found")

    monkeypatch.setattr(sandbox, "check_sandbox", broken)
    (finding,) = preflight.check_sandbox(True)
    assert "bwrap not found" in finding.problem and "install.sh" in finding.fix


def test_worker_silence_is_shown_only_after_the_grace_period() -> None:
    silent = campaigns.CampaignView(name="c", state="running", worker_silent=True)
    answered = campaigns.CampaignView(name="c", state="running", worker_answered=True)
    grace = display.SilenceGrace(20.0)
    assert "not answering" not in display.header_line(grace.apply(silent, 100.0), [], "min")  # one miss
    assert "not answering" not in display.header_line(grace.apply(silent, 119.0), [], "min")
    assert "not answering" in display.header_line(grace.apply(silent, 120.5), [], "min")  # 20 s silent
    assert grace.apply(answered, 121.0) is answered  # an answer resets the clock
    assert "not answering" not in display.header_line(grace.apply(silent, 122.0), [], "min")
    closed = campaigns.CampaignView(name="c", state="completed")
    assert "not answering" not in display.header_line(closed, [], "min")
