"""The experiment runner on the toy env: results, failure categories, protected restore, checkpoints, devices,
and the Temporal activity through ``ActivityEnvironment``."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from ideaforge.activities.experiment import ExperimentActivities, resume_point
from ideaforge.config import Settings
from ideaforge.models import ArtifactRef, CurvePoint, DeviceTime, Progress, RunRequest, RunResult
from ideaforge.names import RUN_EXPERIMENT
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import EnvError, files_digest, load_env
from ideaforge.run.codetree import restore_protected
from ideaforge.run.devices import DeviceClock, DevicePool, cpu_slots, parse_gpu_list
from ideaforge.run.runner import ExperimentRunner, RunCancelled, downsample
from ideaforge.store.artifacts import LocalStore

ENVS = Path(__file__).resolve().parent / "fixtures" / "envs"
TOY = load_env("toy_quad", [ENVS])
BASELINE_METRIC = 0.2108264968077948  # seed 0, default profile (deterministic pure-Python arithmetic)


@dataclass
class Rig:
    settings: Settings
    store: LocalStore
    runner: ExperimentRunner
    tmp: Path

    def code(
        self,
        variants: tuple[str, ...] = (),
        knobs: dict[str, object] | None = None,
        files: dict[str, str] | None = None,
    ) -> ArtifactRef:
        """A code package: the toy baseline with catalogue variants, knob values and whole-file overrides."""
        tree = self.tmp / f"tree-{len(list(self.tmp.glob('tree-*')))}"
        shutil.copytree(TOY.baseline, tree, ignore=shutil.ignore_patterns("__pycache__"))
        cat = TOY.spec.offline
        for name in variants:
            for e in next(v for v in cat.variants if v.name == name).edits:
                p = tree / e.file
                assert e.search in p.read_text()
                p.write_text(p.read_text().replace(e.search, e.replace, 1))
        for name, value in (knobs or {}).items():
            k = next(k for k in cat.knobs if k.name == name)
            p = tree / k.file
            text = re.sub(
                k.pattern,
                lambda m, v=value: m.group(0).replace(m.group(1), str(v)),
                p.read_text(),
                count=1,
                flags=re.M,
            )
            assert text != p.read_text()
            p.write_text(text)
        for rel, content in (files or {}).items():
            (tree / rel).write_text(content)
        return self.store.put_bytes(pack_tree(tree), "code")

    def run(self, code: ArtifactRef, profile: str = "default", **kw) -> RunResult:
        req = RunRequest(
            campaign="t", idea_id="campaign-t/e000/i00", env="toy_quad", code=code, profile=profile
        )
        return asyncio.run(self.runner.run(req, **kw))


def _rig(tmp_path: Path, env_paths: list[Path] | None = None, **runner_kw) -> Rig:
    settings = Settings(home=tmp_path / "home", env_paths=env_paths or [ENVS], train_slots=1)
    store = LocalStore(tmp_path / "artifacts")
    runner_kw.setdefault("grace_s", 0.5)
    return Rig(settings, store, ExperimentRunner(settings, store, **runner_kw), tmp_path)


@pytest.fixture
def rig(tmp_path) -> Rig:
    return _rig(tmp_path)


@pytest.fixture
def fast_timeout_rig(tmp_path) -> Rig:
    """The toy env copied with a 1 s training time limit."""
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(toml.read_text().replace("time_limit_s = 5", "time_limit_s = 1"))
    return _rig(tmp_path, [envs])


def _work_dirs(rig: Rig) -> list[Path]:
    work = rig.settings.home / "work"
    return list(work.iterdir()) if work.is_dir() else []


# ------------------------------------------------------------------------------------------ results


def test_baseline_ok(rig):
    beats: list[Progress] = []
    res = rig.run(rig.code(), heartbeat=beats.append)
    assert res.status == "ok" and res.category is None and res.error is None
    assert res.metric == pytest.approx(BASELINE_METRIC, rel=1e-9)
    assert res.metrics == {"loss": res.metric, "dim": 4.0}
    assert [p.step for p in res.curve] == list(range(1, 21))
    assert all(p.key == "train_loss" for p in res.curve)
    assert res.curve[-1].value == pytest.approx(res.metric)
    assert res.device == "cpu" and res.worker and res.resumed_from_step is None
    assert res.train_s > 0 and res.eval_s > 0 and res.wall_s >= res.train_s + res.eval_s
    log = rig.store.get_text(res.log)
    assert "===== train =====" in log and "eval loss 0.210826" in log
    assert beats and beats[-1].checkpoint is not None and beats[-1].checkpoint_step == 10
    assert (
        rig.settings.home / "data" / "toy_quad" / "default" / "train" / "problem.json"
    ).is_file()  # prepare_command ran
    assert _work_dirs(rig) == []


def test_prepare_runs_once(rig):
    code = rig.code()
    rig.run(code, profile="smoke")
    marker = rig.settings.home / "data" / "toy_quad" / "smoke" / ".prepared"
    first = marker.stat().st_mtime_ns
    rig.run(code, profile="smoke")
    assert marker.stat().st_mtime_ns == first
    log = (rig.settings.home / "data" / "toy_quad" / "smoke" / "prepare.log").read_text()
    assert log.count("prepared") == 2  # one line for IDEAFORGE_DATA, one for IDEAFORGE_EVAL_DATA, once


def test_knobs_change_the_metric(rig):
    slow = rig.run(rig.code(knobs={"lr": 0.01}), profile="smoke")
    fast = rig.run(rig.code(knobs={"lr": 0.2}), profile="smoke")
    assert slow.status == fast.status == "ok"
    assert fast.metric < slow.metric / 10


def test_seed_changes_the_metric_slightly(rig):
    code = rig.code()
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code, seed=1)
    other = asyncio.run(rig.runner.run(req))
    assert other.status == "ok"
    assert other.metric != pytest.approx(BASELINE_METRIC, rel=1e-9)
    assert other.metric == pytest.approx(BASELINE_METRIC, abs=0.05)


def test_crash_is_a_result_with_the_traceback(rig):
    res = rig.run(rig.code(("crash",)))
    assert res.status == "failed" and res.category == "crashed" and res.metric is None
    assert "RuntimeError: toy crash requested by the crash variant" in res.error
    assert "Traceback" in rig.store.get_text(res.log)
    assert res.eval_s == 0


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_hang_times_out(fast_timeout_rig):
    t = time.monotonic()
    res = fast_timeout_rig.run(fast_timeout_rig.code(("hang",)))
    assert res.status == "failed" and res.category == "timeout"
    assert "time limit of 1s" in res.error
    assert time.monotonic() - t < 5


def test_nan_loss_stops_early(rig):
    beats: list[Progress] = []
    res = rig.run(rig.code(("nan_loss",)), profile="slow", heartbeat=beats.append)
    assert res.category == "nan" and res.status == "failed"
    assert "step 1" in res.error
    assert res.train_s < 1.5  # the slow profile needs 2 s when it is not stopped
    assert res.curve == []  # NaN values never enter the curve
    assert "eval" not in rig.store.get_text(res.log).split("===== train =====")[0]


def test_flood_is_cut_and_the_log_stays_small(tmp_path):
    rig = _rig(tmp_path, log_cap_bytes=64 * 1024)
    res = rig.run(rig.code(("flood",)))
    assert res.category == "output_limit"
    assert res.log.size <= 64 * 1024 + 100
    assert "output limit" in rig.store.get_text(res.log)


def test_runtime_evaluator_overwrite_is_undone(rig):
    """cheat_eval rewrites evaluate.py during training to report loss 0: the real metric comes back."""
    res = rig.run(rig.code(("cheat_eval",)))
    assert res.status == "ok"
    assert res.metric == pytest.approx(BASELINE_METRIC, rel=1e-9)


def test_packaged_evaluator_overwrite_is_undone(rig):
    fake = (
        "import json, os\nopen(os.environ['IDEAFORGE_METRIC_FILE'], 'w').write(json.dumps({'loss': 0.0}))\n"
    )
    res = rig.run(rig.code(files={"evaluate.py": fake, "data.py": "TARGET = [0.0]\n"}))
    assert res.status == "ok"
    assert res.metric == pytest.approx(BASELINE_METRIC, rel=1e-9)


def test_training_cannot_edit_the_shared_data(rig):
    data = rig.settings.home / "data" / "toy_quad" / "smoke" / "train"
    poison = "    (Path(os.environ['IDEAFORGE_DATA']) / 'problem.json').write_text('{}')\n"
    train = (
        (TOY.baseline / "train.py").read_text().replace("    save(w, out)\n", "    save(w, out)\n" + poison)
    )
    res = rig.run(rig.code(files={"train.py": train}), profile="smoke")
    assert res.category == "crashed" and "Read-only file system" in res.error
    assert '"target"' in (data / "problem.json").read_text()


def test_changed_data_cache_is_detected_and_rebuilt(rig):
    """Second line of defence: a prepared file changed behind the runner's back is detected and rebuilt."""
    ok = rig.run(rig.code(), profile="smoke")
    root = rig.settings.home / "data" / "toy_quad" / "smoke"
    (root / "train" / "problem.json").write_text("{}")
    env = rig.runner.load("toy_quad")
    assert rig.runner.data.tampered(env, "smoke") == ["problem.json"]
    assert not (root / ".prepared").exists() and not (root / "train").exists()
    again = rig.run(rig.code(), profile="smoke")  # prepares again
    assert again.status == ok.status == "ok" and again.metric == ok.metric
    assert '"target"' in (root / "train" / "problem.json").read_text()


def test_implausible_metric_is_flagged(rig):
    res = rig.run(rig.code(knobs={"lr": 1.1}))
    assert res.status == "failed" and res.category == "implausible_metric"
    assert res.metric is None and res.metrics["loss"] > 1000
    assert "plausible range" in res.error


def test_missing_weights_is_eval_failed(rig):
    train = (TOY.baseline / "train.py").read_text().replace("    save(w, out)\n", "")
    res = rig.run(rig.code(files={"train.py": train}))
    assert res.category == "eval_failed"
    assert "no trained weights" in res.error


def test_nan_metric(rig):
    train = (
        (TOY.baseline / "train.py")
        .read_text()
        .replace("    save(w, out)\n", "    save([float('nan')] * 4, out)\n")
    )
    res = rig.run(rig.code(files={"train.py": train}))
    assert res.category == "nan" and res.metric is None and "loss" not in res.metrics


def test_package_of_another_env_fails_cleanly(rig):
    tree = rig.tmp / "other"
    tree.mkdir()
    (tree / "main.py").write_text("print('hi')\n")
    res = rig.run(rig.store.put_bytes(pack_tree(tree), "code"))
    assert res.category == "crashed" and "missing ['train.py']" in res.error


def test_not_a_zip_fails_cleanly(rig):
    res = rig.run(rig.store.put_bytes(b"not a zip", "code"))
    assert res.category == "crashed" and "invalid code package" in res.error


def test_bad_requests_raise(rig):
    with pytest.raises(ValueError, match="no profile 'nope'"):
        rig.run(rig.code(), profile="nope")
    req = RunRequest(campaign="t", idea_id="i", env="no_such_env", code=rig.code())
    with pytest.raises(EnvError, match="unknown research env 'no_such_env'"):
        asyncio.run(rig.runner.run(req))


def test_failed_workdir_kept_on_request(rig, monkeypatch):
    monkeypatch.setenv("IDEAFORGE_KEEP_WORKDIRS", "1")
    rig.run(rig.code(("crash",)))
    (kept,) = _work_dirs(rig)
    assert kept.name.startswith("campaign-t_e000_i00-")
    assert (kept / "train.log").is_file()


_SHOW_ENV = (
    "    import sys\n"
    "    keys = ['IDEAFORGE_SEED', 'IDEAFORGE_OUT', 'IDEAFORGE_DATA', 'IDEAFORGE_THREADS', 'IDEAFORGE_DEVICE',\n"
    "            'CUDA_VISIBLE_DEVICES', 'IDEAFORGE_STEPS', 'OMP_NUM_THREADS', 'IDEAFORGE_RESUME', 'IDEAFORGE_EVAL_DATA']\n"
    "    print('ENV', json.dumps({k: os.environ.get(k) for k in keys}), 'CWD', os.getcwd(), 'PY', sys.executable)\n"
)


def _env_seen(rig: Rig, res: RunResult) -> dict:
    import json

    line = next(ln for ln in rig.store.get_text(res.log).splitlines() if ln.startswith("ENV "))
    return json.loads(line[4 : line.index(" CWD ")]) | {
        "cwd": line.split(" CWD ")[1].split(" PY ")[0],
        "py": line.split(" PY ")[1],
    }


def test_protocol_environment_of_training(rig):
    train = (
        (TOY.baseline / "train.py")
        .read_text()
        .replace("def main() -> None:\n", "def main() -> None:\n" + _SHOW_ENV)
    )
    res = rig.run(rig.code(files={"train.py": train}), profile="smoke")
    assert res.status == "ok"
    seen = _env_seen(rig, res)
    assert (
        seen["IDEAFORGE_SEED"] == "0" and seen["IDEAFORGE_STEPS"] == "5" and seen["IDEAFORGE_RESUME"] is None
    )
    assert seen["IDEAFORGE_DEVICE"] == "cpu" and seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["IDEAFORGE_THREADS"] == seen["OMP_NUM_THREADS"] == str(rig.runner.threads)
    assert seen["IDEAFORGE_DATA"] == str(rig.settings.home / "data" / "toy_quad" / "smoke" / "train")
    assert "IDEAFORGE_EVAL_DATA" not in seen or seen["IDEAFORGE_EVAL_DATA"] is None
    out, cwd = Path(seen["IDEAFORGE_OUT"]), Path(seen["cwd"])
    assert cwd not in out.parents and out != cwd  # outputs live outside the work dir
    assert seen["py"] == rig.runner.python


def test_gpu_env_gets_its_devices(tmp_path):
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(
        toml.read_text().replace('device = "cpu"\ncount = 1', 'device = "gpu"\ngpu_type = "h100"\ncount = 2')
        + '\n[resources_by_profile.smoke]\ndevice = "cpu"\n'  # its preflight runs on the CPU, as a GPU env's does
    )
    rig = _rig(tmp_path, [envs])
    train = (
        (TOY.baseline / "train.py")
        .read_text()
        .replace("def main() -> None:\n", "def main() -> None:\n" + _SHOW_ENV)
    )
    acts = ExperimentActivities(rig.settings, rig.store, DevicePool([3, 5, 6]), rig.runner)
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=rig.code(files={"train.py": train}))
    res = asyncio.run(ActivityEnvironment().run(acts.run_experiment, req))
    assert res.status == "ok" and res.device == "cuda:3,5"
    seen = _env_seen(rig, res)
    assert seen["CUDA_VISIBLE_DEVICES"] == "3,5" and seen["IDEAFORGE_DEVICE"] == "cuda"
    assert acts.devices.free == [3, 5, 6]


# ------------------------------------------------------------------------------------------ checkpoints, cancel


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_checkpoint_then_resume(rig):
    code = rig.code()
    stop = threading.Event()
    beats: list[Progress] = []

    def beat(p: Progress) -> None:
        beats.append(p)
        if p.checkpoint is not None:
            stop.set()

    with pytest.raises(RunCancelled):
        rig.run(code, profile="slow", heartbeat=beat, cancel_event=stop)
    last = beats[-1]
    assert last.checkpoint_step == 5 and last.checkpoint is not None
    assert _work_dirs(rig) == []

    assert last.history is not None  # the curve and log up to the checkpoint travel with it

    resumed_beats: list[Progress] = []
    res = rig.run(code, profile="slow", resume=last, heartbeat=resumed_beats.append)
    assert res.status == "ok" and res.resumed_from_step == 5
    # the whole run: steps 1-5 from the first attempt (another worker, in production), 6-40 from this one
    assert [p.step for p in res.curve] == list(range(1, 41))
    text = rig.store.get_text(res.log)
    earlier, _, rest = text.partition("===== train =====")
    assert "earlier attempts up to the checkpoint" in earlier and '{"step": 5,' in earlier
    assert "resumed from step 5" in rest and '{"step": 5,' not in rest
    assert resumed_beats[0].step > 5 and resumed_beats[0].history == last.history

    # a history that cannot be read: the run still resumes, its curve starts at the checkpoint
    lost = last.model_copy(update={"history": ArtifactRef(uri=rig.store.uri_for("cas/history/00/00"), sha256="0" * 64, size=1)})
    res = rig.run(code, profile="slow", resume=lost)
    assert res.status == "ok" and res.resumed_from_step == 5 and res.curve[0].step == 6


def test_resume_with_a_lost_checkpoint_starts_over(rig):
    lost = ArtifactRef(uri=rig.store.uri_for("cas/checkpoint/00/00"), sha256="0" * 64, size=1)
    res = rig.run(rig.code(), profile="smoke", resume=Progress(step=3, checkpoint=lost, checkpoint_step=3))
    assert res.status == "ok" and res.resumed_from_step is None and res.curve[0].step == 1


def test_cancel_event_kills_training_promptly(rig):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    t = time.monotonic()
    with pytest.raises(RunCancelled):
        rig.run(rig.code(("hang",)), cancel_event=stop)
    assert time.monotonic() - t < 3
    assert _work_dirs(rig) == []


def test_task_cancellation_kills_training(rig):
    code = rig.code(("hang",))

    async def main() -> float:
        req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code)
        task = asyncio.create_task(rig.runner.run(req))
        await asyncio.sleep(0.8)
        t = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t

    assert asyncio.run(main()) < 3
    assert _work_dirs(rig) == []


# ------------------------------------------------------------------------------------------ helpers


def test_restore_protected_replaces_symlinks_and_edits(tmp_path):
    work = tmp_path / "w"
    shutil.copytree(TOY.baseline, work)
    (work / "evaluate.py").write_text("print('fake')\n")
    (work / "data.py").unlink()
    (work / "data.py").symlink_to(work / "train.py")
    changed = restore_protected(work, TOY.baseline, TOY.spec.protected_files)
    assert sorted(changed) == ["data.py", "evaluate.py"]
    assert not (work / "data.py").is_symlink()
    assert files_digest(work, TOY.spec.protected_files) == TOY.protected_digest()
    assert restore_protected(work, TOY.baseline, TOY.spec.protected_files) == []


def test_downsample_keeps_ends_and_cap():
    pts = [CurvePoint(step=i, value=float(i)) for i in range(2000)]
    pts += [CurvePoint(step=i, value=1.0, key="reward") for i in range(10)]
    out = downsample(pts, cap=500)
    loss = [p for p in out if p.key == "train_loss"]
    assert len(out) <= 500 and len(loss) == 250
    assert loss[0].step == 0 and loss[-1].step == 1999
    assert len([p for p in out if p.key == "reward"]) == 10


# ------------------------------------------------------------------------------------------ devices


def test_device_pool_never_double_books():
    async def main() -> int:
        pool = DevicePool([0, 1, 2, 3])
        held: set[int] = set()
        peak = 0

        async def user(i: int) -> None:
            nonlocal peak
            ids = await pool.acquire(1 + i % 3)
            assert not held & set(ids), f"ids {ids} handed out twice"
            held.update(ids)
            peak = max(peak, len(held))
            await asyncio.sleep(0.001 * (i % 5))
            held.difference_update(ids)
            await pool.release(ids)

        await asyncio.gather(*(user(i) for i in range(60)))
        assert pool.free == [0, 1, 2, 3]
        return peak

    assert asyncio.run(main()) >= 3


def test_device_pool_errors():
    async def main() -> None:
        pool = DevicePool([5, 7])
        with pytest.raises(ValueError, match="needs 3 devices but this worker has 2"):
            await pool.acquire(3)
        with pytest.raises(ValueError, match="must be >= 1"):
            await pool.acquire(0)
        ids = await pool.acquire(2)
        assert ids == [5, 7]
        await pool.release(ids)
        with pytest.raises(ValueError, match="not held"):
            await pool.release([5])

    asyncio.run(main())
    with pytest.raises(ValueError, match="duplicate"):
        DevicePool([1, 1])
    with pytest.raises(ValueError, match="at least 1 slot"):
        cpu_slots(0)


def test_parse_gpu_list():
    text = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n"
    assert parse_gpu_list(text) == [0, 1]
    assert parse_gpu_list("No devices were found\n") == []


# ------------------------------------------------------------------------------------------ the activity


def _activity(rig: Rig, slots: int = 1, heartbeat_every_s: float = 0.2) -> ExperimentActivities:
    return ExperimentActivities(
        rig.settings, rig.store, DevicePool(cpu_slots(slots)), rig.runner, heartbeat_every_s=heartbeat_every_s
    )


def test_activity_runs_and_heartbeats(rig):
    acts = _activity(rig)
    env = ActivityEnvironment()
    beats: list = []
    env.on_heartbeat = lambda *d: beats.append(d)
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=rig.code())
    res = asyncio.run(env.run(acts.run_experiment, req))
    assert res.status == "ok" and res.metric == pytest.approx(BASELINE_METRIC, rel=1e-9)
    assert beats and all(isinstance(d[0], Progress) for d in beats)
    assert acts.devices.free == [0]


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_activity_resumes_from_heartbeat_details_dicts(rig):
    code = rig.code()
    stop = threading.Event()
    beats: list[Progress] = []

    def beat(p: Progress) -> None:
        beats.append(p)
        if p.checkpoint:
            stop.set()

    with pytest.raises(RunCancelled):
        rig.run(code, profile="slow", heartbeat=beat, cancel_event=stop)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beats[-1].model_dump(mode="json")])
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code, profile="slow")
    res = asyncio.run(env.run(_activity(rig).run_experiment, req))
    assert res.status == "ok" and res.resumed_from_step == 5


def test_resume_point_ignores_garbage():
    assert resume_point([]) is None
    assert resume_point([{"step": "not a number"}]) is None
    assert resume_point([{"step": 3}]) == Progress(step=3)


def test_activity_cancellation_kills_training(rig):
    acts = _activity(rig)
    code = rig.code(("hang",))

    async def main() -> float:
        env = ActivityEnvironment()
        req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code)
        task = asyncio.ensure_future(env.run(acts.run_experiment, req))
        await asyncio.sleep(0.8)
        t = time.monotonic()
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - t

    assert asyncio.run(main()) < 3
    assert acts.devices.free == [0] and _work_dirs(rig) == []


def test_activity_worker_shutdown_hands_back_with_checkpoint(rig):
    acts = _activity(rig)
    code = rig.code()

    async def main() -> tuple[ApplicationError, list]:
        env = ActivityEnvironment()
        beats: list = []

        def on_beat(*d) -> None:
            beats.append(d)
            if d and isinstance(d[0], Progress) and d[0].checkpoint:
                asyncio.get_running_loop().call_soon(env.worker_shutdown)

        env.on_heartbeat = on_beat
        req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code, profile="slow")
        with pytest.raises(ApplicationError) as exc:
            await env.run(acts.run_experiment, req)
        return exc.value, beats

    err, beats = asyncio.run(main())
    assert err.type == "WorkerShutdown" and not err.non_retryable
    last = beats[-1][0]
    assert last.checkpoint is not None and last.checkpoint_step == 5
    assert acts.devices.free == [0]


def test_device_clock_counts_devices_times_wall_time_on_top_of_earlier_attempts():
    now = [100.0]
    before = DeviceTime(gpu_seconds=30.0, attempts=1)
    clock = DeviceClock(before, "gpu", clock=lambda: now[0])
    assert clock.so_far() == before, "nothing counts while waiting for devices"
    clock.start(4)
    now[0] = 110.0
    assert clock.so_far() == DeviceTime(gpu_seconds=30.0 + 4 * 10.0, attempts=2)
    clock.stop()
    now[0] = 500.0
    assert clock.so_far().gpu_seconds == 70.0, "devices given back: the figure stops"
    cpu = DeviceClock(DeviceTime(), "cpu", clock=lambda: now[0])
    cpu.start(2)
    now[0] = 503.0
    assert cpu.so_far() == DeviceTime(cpu_slot_seconds=6.0, attempts=1)


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_device_time_of_a_stopped_attempt_and_its_retry_is_summed(rig):
    """Attempt 1 is stopped by a worker shutdown after its first checkpoint; its error and every heartbeat carry
    its slot-seconds so far. Attempt 2 resumes from the last heartbeat: its result counts both attempts."""
    acts = _activity(rig)
    code = rig.code()
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=code, profile="slow")

    async def first() -> tuple[ApplicationError, list[Progress], float]:
        env = ActivityEnvironment()
        beats: list[Progress] = []

        def on_beat(*d) -> None:
            beats.append(d[0])
            if d[0].checkpoint:
                asyncio.get_running_loop().call_soon(env.worker_shutdown)

        env.on_heartbeat = on_beat
        t = time.monotonic()
        with pytest.raises(ApplicationError) as exc:
            await env.run(acts.run_experiment, req)
        return exc.value, beats, time.monotonic() - t

    err, beats, wall1 = asyncio.run(first())
    (spent1,) = err.details
    assert err.type == "WorkerShutdown" and spent1.attempts == 1 and spent1.gpu_seconds == 0
    assert 0 < spent1.cpu_slot_seconds <= wall1
    seconds = [b.device_time.cpu_slot_seconds for b in beats]
    assert seconds == sorted(seconds) and beats[-1].device_time == spent1, "each heartbeat carries the time so far"

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[beats[-1].model_dump(mode="json")])
    t = time.monotonic()
    res = asyncio.run(env.run(acts.run_experiment, req))
    wall2 = time.monotonic() - t
    assert res.status == "ok" and res.resumed_from_step == 5 and res.devices == 1
    assert res.device_time.attempts == 2 and res.device_time.gpu_seconds == 0
    second = res.device_time.cpu_slot_seconds - spent1.cpu_slot_seconds
    assert 0 < second <= wall2 and second >= res.finished_at - res.started_at - 0.5


def test_activity_bad_request_is_non_retryable(rig):
    env = ActivityEnvironment()
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=rig.code(), profile="nope")
    with pytest.raises(ApplicationError) as exc:
        asyncio.run(env.run(_activity(rig).run_experiment, req))
    assert exc.value.non_retryable and exc.value.type == "ValueError"


# ------------------------------------------------------------------------------------------ real Temporal server


class _FlakyRunner(ExperimentRunner):
    """Attempt 1 dies of a simulated infrastructure error right after its first checkpoint heartbeat."""

    async def run(self, req, *, resolved=None, heartbeat=None, resume=None, cancel_event=None, device_ids=None):
        from temporalio import activity

        from ideaforge.run.runner import RunnerError

        if activity.info().attempt > 1:
            return await super().run(
                req,
                resolved=resolved,
                heartbeat=heartbeat,
                resume=resume,
                cancel_event=cancel_event,
                device_ids=device_ids,
            )
        crash = threading.Event()

        def beat(p: Progress) -> None:
            heartbeat(p)
            if p.checkpoint is not None:
                crash.set()

        try:
            await super().run(req, heartbeat=beat, resume=resume, cancel_event=crash, device_ids=device_ids)
        except RunCancelled as e:
            raise RunnerError("simulated infrastructure failure") from e
        raise AssertionError("attempt 1 should have been stopped")


@workflow.defn(name="RunOnce")
class RunOnce:
    @workflow.run
    async def run(self, req: RunRequest) -> RunResult:
        return await workflow.execute_activity(
            RUN_EXPERIMENT,
            req,
            result_type=RunResult,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=3),
        )


@pytest.mark.integration
@pytest.mark.slow  # 3.6 s on an idle machine (Temporal's 1 s retry backoff, the slow profile), 6-9 s loaded
def test_retry_resumes_from_checkpoint_through_temporal(tmp_path, temporal_env):
    """Heartbeat details survive a failed attempt on a real server and come back (as dicts) to the retry."""
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    rig = _rig(tmp_path)
    runner = _FlakyRunner(rig.settings, rig.store, grace_s=0.5)
    acts = ExperimentActivities(rig.settings, rig.store, DevicePool([0]), runner, heartbeat_every_s=0.5)
    req = RunRequest(campaign="t", idea_id="i", env="toy_quad", code=rig.code(), profile="slow")
    client = temporal_env.client

    async def main() -> RunResult:
        queue = f"test-runner-{time.monotonic_ns()}"
        async with Worker(
            client,
            task_queue=queue,
            workflows=[RunOnce],
            activities=[acts.run_experiment],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            return await client.execute_workflow(RunOnce.run, req, id=queue, task_queue=queue)

    res = asyncio.run(main())
    assert res.status == "ok" and res.resumed_from_step == 5
    assert [p.step for p in res.curve] == list(range(1, 41))  # steps 1-5 came with the checkpoint's history
    # the failed attempt's slot-seconds came back through the server's heartbeat details and are summed
    assert res.device_time.attempts == 2
    assert res.device_time.cpu_slot_seconds > res.finished_at - res.started_at


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny_gpt", "tiny_grpo"])
def test_cpu_envs_run_in_the_sandbox(name, tmp_path):
    """The CPU envs' smoke profiles through the real runner: prepare, train and a locked evaluation, sandboxed."""
    settings = Settings(home=tmp_path / "home", train_slots=1)
    store = LocalStore(tmp_path / "artifacts")
    env = load_env(name)
    code = store.put_bytes(pack_tree(env.baseline), "code")
    runner = ExperimentRunner(settings, store, grace_s=0.5)
    req = RunRequest(campaign="t", idea_id="smoke", env=name, code=code, profile="smoke")
    res = asyncio.run(runner.run(req))
    assert res.status == "ok" and not res.unsafe, res.error
    lo, hi = env.spec.plausible_range
    assert lo <= res.metric <= hi
    eval_data = settings.home / "data" / name / "smoke" / "eval"
    assert any(eval_data.iterdir())  # the held-out data lives apart from IDEAFORGE_DATA
