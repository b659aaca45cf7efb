"""The CPU preflight of patched code (ideaforge.run.preflight) on the toy env, in the real sandbox: what passes,
what fails (with a bounded traceback free of host paths), what is only inconclusive, and the activity."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from ideaforge.activities.preflight import PreflightActivities
from ideaforge.config import Settings
from ideaforge.models import ArtifactRef, EnvSpec, PreflightRequest, PreflightResult
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import load_env
from ideaforge.run.preflight import Preflight
from ideaforge.run.runner import ExperimentRunner
from ideaforge.store.artifacts import LocalStore

ENVS = Path(__file__).resolve().parent / "fixtures" / "envs"
TOY = load_env("toy_quad", [ENVS])
STEP = "        loss = objective(w)\n"
# crashes when train.py is imported (before any step), at the first step, at the third step
CRASH_AT_IMPORT = {"train.py": ("from data import START, TARGET, objective\n", "from data import START, TARGET, objective\nimport no_such_module\n")}
CRASH_AT_STEP = {"train.py": (STEP, STEP + "        raise ValueError(f'bad shape at step {step}')\n")}
CRASH_LATE = {"train.py": (STEP, STEP + "        if step > 2:\n            raise ValueError('late')\n")}
NO_COMPILE = {"train.py": ("MOMENTUM = 0.0\n", "MOMENTUM = = 0.0\n")}
HANG = {"train.py": ("def main() -> None:\n", "def main() -> None:\n    import time; time.sleep(600)\n")}


def edited(tmp: Path, edits: dict[str, tuple[str, str]], env_root: Path = TOY.baseline) -> Path:
    tree = tmp / f"tree-{len(list(tmp.glob('tree-*')))}"
    shutil.copytree(env_root, tree, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, (old, new) in edits.items():
        text = (tree / rel).read_text()
        assert old in text, (rel, old)
        (tree / rel).write_text(text.replace(old, new, 1))
    return tree


class Rig:
    def __init__(self, tmp: Path, envs: list[Path] | None = None) -> None:
        self.tmp = tmp
        self.settings = Settings(home=tmp / "home", env_paths=envs or [ENVS], train_slots=1)
        self.store = LocalStore(tmp / "artifacts")
        self.preflight = Preflight(ExperimentRunner(self.settings, self.store, grace_s=0.5))

    def code(self, edits: dict[str, tuple[str, str]] | None = None) -> ArtifactRef:
        return self.store.put_bytes(pack_tree(edited(self.tmp, edits or {})), "code")

    def check(self, edits=None, profile: str = "default") -> PreflightResult:
        req = PreflightRequest(campaign="t", idea_id="campaign-t/e000/i00", env="toy_quad", code=self.code(edits),
                               profile=profile)
        return self.preflight.check(req)


@pytest.fixture
def rig(tmp_path) -> Rig:
    return Rig(tmp_path)


def test_unchanged_and_good_code_pass(rig):
    res = rig.check({"train.py": ("MOMENTUM = 0.0\n", "MOMENTUM = 0.5\n")})
    assert res.status == "passed" and res.stage == "run" and res.error is None
    assert res.checked_files == ["train.py"]
    assert res.cost.runs == 1 and res.cost.failures == 0 and res.cost.wall_s > 0 and res.cost.cpu_s > 0
    assert res.cost.saved_train_s == 0
    assert not list((rig.settings.home / "work").iterdir())  # nothing left behind


def test_crash_at_import_fails_with_a_scrubbed_bounded_traceback(rig):
    res = rig.check(CRASH_AT_IMPORT)
    assert res.status == "failed" and res.stage == "run"
    assert "ModuleNotFoundError: No module named 'no_such_module'" in res.error
    assert 'File "train.py", line' in res.error  # the attempt's path is gone from the traceback
    for host in (str(rig.settings.home), str(rig.tmp), "/work/", ".venv"):
        assert host not in res.error
    assert len(res.error) <= 3200
    # a caught crash saves a training slot: toy_quad declares no expected time, so its time limit stands in
    assert res.cost.failures == 1 and res.cost.saved_train_s == 5 and res.cost.saved_basis == "time_limit_s"


def test_crash_at_the_first_step_fails(rig):
    res = rig.check(CRASH_AT_STEP)
    assert res.status == "failed" and "ValueError: bad shape at step 1" in res.error


def test_crash_after_the_preflight_steps_is_not_caught(rig):
    """The preflight runs two steps only: a crash at step 3 is left to training (not a false alarm)."""
    assert rig.check(CRASH_LATE).status == "passed"


def test_code_that_does_not_compile_fails_before_anything_runs(rig):
    res = rig.check(NO_COMPILE)
    assert res.status == "failed" and res.stage == "compile"
    assert "does not compile" in res.error and 'File "train.py", line 12' in res.error and "SyntaxError" in res.error


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_running_out_of_time_is_inconclusive_not_a_failure(tmp_path):
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(toml.read_text().replace("time_limit_s = 30", "time_limit_s = 1.5"))
    res = Rig(tmp_path, [envs]).check(HANG)
    assert res.status == "inconclusive" and res.cost.inconclusive == 1 and res.cost.failures == 0
    assert "ran out of time" in res.error


def test_stop_at_step_ends_a_long_run_early(tmp_path):
    """``stop_at_step``: the run is stopped (and passes) once training reports that step."""
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(toml.read_text().replace(
        'env = { IDEAFORGE_STEPS = "2" }', 'env = { IDEAFORGE_STEPS = "100000", TOY_STEP_SLEEP = "0.5" }\nstop_at_step = 2'
    ))
    res = Rig(tmp_path, [envs]).check()
    assert res.status == "passed" and res.cost.wall_s < 20  # 100,000 steps of 0.5 s would never end


def test_an_env_without_a_preflight_only_compiles(tmp_path):
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    text = toml.read_text()
    start = text.index("[preflight]")
    toml.write_text(text[:start] + text[text.index("[profiles.default]"):])
    r = Rig(tmp_path, [envs])
    assert r.check(CRASH_AT_IMPORT).status == "passed"  # nothing runs
    res = r.check(NO_COMPILE)
    assert res.status == "failed" and res.stage == "compile"


def test_preflight_spec_is_validated():
    base = TOY.spec.model_dump()
    with pytest.raises(ValueError, match="not a profile"):
        EnvSpec.model_validate({**base, "preflight": {"profile": "nope"}})
    with pytest.raises(ValueError, match="must start with"):
        EnvSpec.model_validate({**base, "preflight": {"command": ["bash", "-c", "true"]}})
    gpu = {**base, "resources": {"device": "gpu", "gpu_type": "h100"}, "preflight": {"profile": "smoke"}}
    with pytest.raises(ValueError, match="must run on the CPU"):
        EnvSpec.model_validate(gpu)


def test_every_env_declares_a_cpu_preflight():
    from ideaforge.research_envs.registry import available_envs  # noqa: PLC0415

    names = available_envs([ENVS])
    assert {"toy_quad", "tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"} <= set(names)
    for name in names:
        spec = load_env(name, [ENVS]).spec
        assert spec.preflight is not None, name
        assert spec.resources_for(spec.preflight.profile).device == "cpu"


def test_the_activity_runs_it(rig):
    acts = PreflightActivities(rig.settings, rig.store)
    req = PreflightRequest(campaign="t", idea_id="campaign-t/e000/i00", env="toy_quad", code=rig.code(CRASH_AT_STEP))
    res = asyncio.run(ActivityEnvironment().run(acts.preflight, req))
    assert res.status == "failed" and "bad shape" in res.error


def test_a_preflight_broken_on_the_worker_never_blames_the_change(tmp_path):
    """When the env's preflight fails on the unchanged baseline too (a package missing on this worker), a failing
    change is inconclusive (it trains), not sent back for revision; the baseline's verdict is remembered."""
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(toml.read_text().replace(
        'env = { IDEAFORGE_STEPS = "2" }', 'env = { IDEAFORGE_STEPS = "2" }\ncommand = ["{python}", "-c", "import some_missing_wheel"]'
    ))
    r = Rig(tmp_path, [envs])
    res = r.check(CRASH_AT_IMPORT)
    assert res.status == "inconclusive" and res.cost.failures == 0 and res.cost.saved_train_s == 0
    assert "also fails on the unchanged baseline" in res.error and "some_missing_wheel" in res.error
    assert r.preflight._baseline_checked["toy_quad"][0] is not None
    assert r.check(CRASH_AT_STEP).status == "inconclusive"  # remembered: no second baseline run needed


# ----------------------------------------------------------------------------- the real envs (torch, transformers)
MLP = "        return self.out(F.gelu(self.fc(x)))\n"
REAL_CASES = {  # env -> (a one-line change that runs, a change that crashes in the first training step)
    "tiny_gpt": ({"model.py": (MLP, "        return self.out(F.relu(self.fc(x)).square())\n")},
                 {"model.py": (MLP, "        return self.out(F.gelu(self.fc(x)).transpose(1, 2))\n")}),
    "tiny_grpo": ({"grpo.py": ("CLIP_EPS = 0.2", "CLIP_EPS = 0.3")},
                  {"grpo.py": ("    loss = -surrogate.mean()\n", "    loss = -surrogate.mean(dim=5)\n")}),
    "nanogpt_speedrun": ({"model.py": (MLP, "        return self.out(F.relu(self.fc(x)).square())\n")},
                         {"model.py": (MLP, "        return self.out(F.gelu(self.fc(x)).transpose(1, 2))\n")}),
    "grpo_math": ({"grpo.py": ("CLIP_RANGE = 0.2\n", "CLIP_RANGE = 0.28\n")},
                  {"grpo.py": ("    grouped = rewards.view(-1, GROUP_SIZE)\n", "    grouped = rewards.view(-1, GROUP_SIZE).sum(dim=7)\n")}),
}


@pytest.mark.slow  # imports torch (and transformers) in the sandbox: 10-60 s each on a loaded 2-core machine
@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_the_real_envs_preflight_on_cpu_passes_good_code_and_catches_a_first_step_crash(name, tmp_path):
    """The GPU envs too: their preflight runs the smoke path on the CPU (no GPU), so a crash is caught."""
    env = load_env(name)
    settings = Settings(home=tmp_path / "home", train_slots=1)
    store = LocalStore(tmp_path / "artifacts")
    pre = Preflight(ExperimentRunner(settings, store, grace_s=0.5))
    good, bad = REAL_CASES[name]

    def check(edits) -> PreflightResult:
        code = store.put_bytes(pack_tree(edited(tmp_path, edits, env.baseline)), "code")
        return pre.check(PreflightRequest(campaign="t", idea_id="campaign-t/e000/i00", env=name, code=code))

    ok = check(good)
    assert ok.status == "passed", ok
    res = check(bad)
    assert res.status == "failed" and res.stage == "run", res
    assert "Error" in res.error and str(tmp_path) not in res.error
    assert pre._baseline_checked[name][0] is None  # the baseline passed: the change is to blame


def test_the_sandbox_resolves_its_own_hostname_without_a_network(tmp_path):
    """torchrun's rendezvous (the nanogpt_speedrun preflight and smoke runs) looks the host up by name."""
    import sys

    from ideaforge.run.sandbox import Box, Limits, run_sandboxed, scrubbed_env

    log = tmp_path / "log"
    code = "import socket; print(socket.gethostname(), socket.gethostbyname(socket.gethostname()))"
    res = run_sandboxed([sys.executable, "-c", code], Box(cwd=tmp_path, writable=[tmp_path]), scrubbed_env({}),
                        Limits(wall_s=30), log_path=log)
    assert res.returncode == 0, log.read_text()
    assert log.read_text().split() == ["sandbox", "127.0.0.1"]
