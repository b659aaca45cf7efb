"""The evaluator / model-server split (PROTOCOL.md step 6): editable code an evaluator needs (the model's
classes) runs only in the model server, a sandbox of its own, so it can neither write the metric, nor read the
held-out targets, nor reach the evaluator. Real runs through the runner on ``toy_served`` (a line fitted to
points, the model in the editable model.py); a missing sandbox makes these tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ideaforge.config import Settings
from ideaforge.models import EnvSpec, RunRequest, RunResult
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import load_env
from ideaforge.run import runner as runner_module
from ideaforge.run.datacache import DataCache
from ideaforge.run.model_channel import run_local_evaluation
from ideaforge.run.runner import ExperimentRunner
from ideaforge.run.sandbox import check_sandbox
from ideaforge.store.artifacts import LocalStore

ENVS = Path(__file__).resolve().parent / "fixtures" / "envs"
SERVED = load_env("toy_served", [ENVS])

# model.py that, imported by the model server, tries everything an evaluator-side import could do; it prints
# what it achieved (one ATTACK line on the server's log) and then predicts honestly
ATTACK = r'''
import atexit, glob, json, os, signal
from pathlib import Path

FORGED = {"mse": 1e-9}
found = {"metric_env": os.environ.get("IDEAFORGE_METRIC_FILE"), "eval_env": os.environ.get("IDEAFORGE_EVAL_DATA")}
SEARCH = [str(Path.cwd().parents[2]), "/tmp", "/run"]  # the attempts' folder (the runner's layout) and tmpfs
guesses = [Path.cwd().parent / "metric" / "metric.json"]
guesses += [Path(p) for base in SEARCH for p in glob.glob(base + "/**/metric.json", recursive=True)]
for var in ("IDEAFORGE_METRIC_FILE",):
    if os.environ.get(var):
        guesses.append(Path(os.environ[var]))
written = []
for path in guesses:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(FORGED))
        written.append(str(path))
    except OSError:
        pass
found["written"] = written
heldout = [os.environ.get("IDEAFORGE_EVAL_DATA", ""), HELDOUT_GUESS]
heldout += [p for base in SEARCH for p in glob.glob(base + "/**/heldout.json", recursive=True)]
found["heldout"] = [p for p in heldout if p and os.path.isfile(p) and os.access(p, os.R_OK)]
evaluators = []
for proc in Path("/proc").iterdir():
    try:
        if proc.name.isdigit() and b"evaluate.py" in (proc / "cmdline").read_bytes():
            evaluators.append(int(proc.name))
    except OSError:
        pass
found["evaluators_seen"] = evaluators
for pid in evaluators:
    try:
        os.kill(pid, signal.SIGSTOP)
    except OSError:
        pass


def _late_forge():
    for path in guesses:
        try:
            path.write_text(json.dumps(FORGED))
        except OSError:
            pass


atexit.register(_late_forge)
print("ATTACK " + json.dumps(found), flush=True)


class Model:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def predict(self, x):
        return self.a * x + self.b
'''


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    check_sandbox.cache_clear()
    settings = Settings(home=tmp_path / "home", env_paths=[ENVS], train_slots=1)
    store = LocalStore(settings.home / "artifacts")
    runner = ExperimentRunner(settings, store, grace_s=0.5, eval_timeout_s=20)

    def run(files: dict[str, str] | None = None, loop_threads: int | None = None) -> tuple[RunResult, str]:
        tree = tmp_path / f"tree-{uuid.uuid4().hex[:8]}"
        shutil.copytree(SERVED.baseline, tree, ignore=shutil.ignore_patterns("__pycache__"))
        for rel, text in (files or {}).items():
            (tree / rel).write_text(text)
        code = store.put_bytes(pack_tree(tree), "code")
        req = RunRequest(campaign="t", idea_id=f"campaign-t/e000/i{uuid.uuid4().hex[:4]}", env="toy_served", code=code)

        async def in_loop() -> RunResult:
            if loop_threads:  # the event loop's default pool, as small as a busy worker's may be
                asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=loop_threads))
            return await runner.run(req)

        res = asyncio.run(in_loop())
        return res, store.get_text(res.log) if res.log else ""

    run.heldout = DataCache(settings.home).eval_dir(SERVED, "default") / "heldout.json"  # type: ignore[attr-defined]
    yield run
    check_sandbox.cache_clear()


def attack_report(log: str) -> dict:
    return json.loads(next(ln for ln in log.splitlines() if ln.startswith("ATTACK "))[len("ATTACK ") :])


def test_honest_model_is_scored_through_the_server(served):
    res, log = served()
    assert res.status == "ok", res.error
    assert 0.001 < res.metric < 0.05  # noise 0.1 -> mse about 0.01
    assert "===== model server 0 =====" in log


def test_model_code_cannot_forge_the_metric_read_targets_or_reach_the_evaluator(served):
    honest, _ = served()
    code = ATTACK.replace("HELDOUT_GUESS", repr(str(served.heldout)))
    res, log = served({"model.py": code})
    found = attack_report(log)
    assert found["metric_env"] is None and found["eval_env"] is None
    assert found["written"] == []
    assert found["heldout"] == []
    assert found["evaluators_seen"] == []
    assert res.status == "ok", res.error
    assert res.metric == pytest.approx(honest.metric, rel=1e-12)  # the honest score, not the forged 1e-9
    assert served.heldout.is_file()  # the guess was right: the file exists, outside the server's view


def test_a_served_evaluation_does_not_wait_for_the_event_loops_threads(served):
    """The evaluator and its server must run at once: with a one-thread default pool (a busy worker's), they
    would wait on each other until the evaluation timed out."""
    res, _ = served(loop_threads=1)
    assert res.status == "ok", res.error


def test_a_crashing_model_fails_the_evaluation_with_the_servers_error(served):
    res, _ = served({"model.py": "raise RuntimeError('model.py is broken on purpose')\n"})
    assert res.status == "failed" and res.category == "eval_failed"
    assert "the model server exited with 1" in res.error and "broken on purpose" in res.error


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_a_model_server_that_will_not_exit_is_stopped(served, monkeypatch):
    monkeypatch.setattr(runner_module, "SERVE_EXIT_GRACE_S", 1.0)
    hang = (SERVED.baseline / "model.py").read_text() + "\nimport atexit, time\natexit.register(time.sleep, 3600)\n"
    res, _ = served({"model.py": hang})
    assert res.status == "ok", res.error
    assert res.eval_s < 30


def test_serve_command_must_run_a_protected_script():
    spec = SERVED.spec.model_dump()
    with pytest.raises(ValueError, match="serve_command must be"):
        EnvSpec.model_validate({**spec, "serve_command": ["{python}", "model.py"]})
    with pytest.raises(ValueError, match="serve_command must be"):
        EnvSpec.model_validate({**spec, "serve_command": ["python", "serve.py"]})


def test_local_evaluation_joins_the_server_unsandboxed(tmp_path):
    """The unsandboxed helper (benchmarks, env tests) gives the same channel; the server's stderr is kept."""
    work = tmp_path / "work"
    shutil.copytree(SERVED.baseline, work)
    env = {"PATH": os.environ["PATH"], "IDEAFORGE_DATA": str(tmp_path / "d"), "IDEAFORGE_EVAL_DATA": str(tmp_path / "e"),
           "IDEAFORGE_OUT": str(tmp_path / "out"), "IDEAFORGE_METRIC_FILE": str(tmp_path / "metric.json")}  # fmt: skip
    (tmp_path / "out").mkdir()
    for cmd in (["data.py", "--prepare"], ["train.py"]):
        assert run_local_evaluation([sys.executable, *cmd], None, work, env).returncode == 0
    ok = run_local_evaluation([sys.executable, "evaluate.py"], [sys.executable, "serve.py"], work, env)
    assert ok.returncode == 0, ok.stderr
    assert 0.001 < json.loads((tmp_path / "metric.json").read_text())["mse"] < 0.05
    (work / "model.py").write_text("raise SystemExit('no model today')\n")
    bad = run_local_evaluation([sys.executable, "evaluate.py"], [sys.executable, "serve.py"], work, env)
    assert bad.returncode != 0 and "stopped answering" in bad.stderr and "no model today" in bad.stderr


def test_the_static_scan_finds_editable_imports_of_an_evaluator(tmp_path, caplog):
    """Shipped envs keep editable code out of the evaluator, except nanogpt_speedrun (open: its GPU evaluator
    still imports model.py in-process and is warned about); an evaluator that imports model.py is found."""
    from ideaforge.research_envs import registry

    assert {n: registry.evaluator_editable_imports(load_env(n)) for n in registry.available_envs()} == {
        "grpo_math": [], "nanogpt_speedrun": ["model"], "tiny_gpt": [], "tiny_grpo": [],
    }  # fmt: skip
    assert registry.evaluator_editable_imports(SERVED) == []
    copy = tmp_path / "toy_served"
    shutil.copytree(SERVED.root, copy)
    helper = copy / "baseline" / "data.py"  # a protected module the evaluator does not import today
    helper.write_text(helper.read_text() + "\n\ndef model_class():\n    from model import Model\n    return Model\n")
    evaluator = copy / "baseline" / "evaluate.py"
    evaluator.write_text("import data\n" + evaluator.read_text())
    registry.main(["lock", str(copy)])
    with caplog.at_level("WARNING", logger=registry.__name__):
        env = registry.load_env_folder(copy)
    assert registry.evaluator_editable_imports(env) == ["model"]  # through data.py, inside a function
    assert "imports editable code (model)" in caplog.text


TINY_GPT_ATTACK = '''

import atexit as _atexit
import json as _json
import os as _os

import sys as _sys

import torch.nn.functional as _F

if not any(a.endswith("train.py") for a in _sys.argv):  # training untouched: the same model either way
    _cross_entropy = _F.cross_entropy
    _F.cross_entropy = lambda *a, **k: _cross_entropy(*a, **k) * 0.5  # halve every loss computed outside training


def _forge():
    if _os.environ.get("IDEAFORGE_METRIC_FILE"):
        with open(_os.environ["IDEAFORGE_METRIC_FILE"], "w") as f:
            _json.dump({"val_loss": 1.0}, f)


_atexit.register(_forge)
'''


@pytest.mark.slow
def test_tiny_gpt_model_code_cannot_patch_the_loss_or_write_the_metric(tmp_path, monkeypatch):
    """tiny_gpt through the real runner: a model.py that halves the evaluator's cross-entropy and rewrites the
    metric file at exit (both would land with model.py imported by the evaluator) scores exactly as honest."""
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    check_sandbox.cache_clear()
    settings = Settings(home=tmp_path / "home", train_slots=1)
    store = LocalStore(settings.home / "artifacts")
    runner = ExperimentRunner(settings, store, grace_s=0.5)
    env = load_env("tiny_gpt")

    def run(model_py: str) -> RunResult:
        tree = tmp_path / f"tree-{uuid.uuid4().hex[:8]}"
        shutil.copytree(env.baseline, tree, ignore=shutil.ignore_patterns("__pycache__"))
        (tree / "model.py").write_text(model_py)
        req = RunRequest(campaign="t", idea_id=f"campaign-t/e000/i{uuid.uuid4().hex[:4]}", env="tiny_gpt",
                         code=store.put_bytes(pack_tree(tree), "code"), profile="smoke")  # fmt: skip
        return asyncio.run(runner.run(req))

    honest = run((env.baseline / "model.py").read_text())
    attacked = run((env.baseline / "model.py").read_text() + TINY_GPT_ATTACK)
    check_sandbox.cache_clear()
    assert honest.status == "ok", honest.error
    assert attacked.status == "ok", attacked.error
    assert attacked.metric == honest.metric
