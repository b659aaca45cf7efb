"""Slow: run every env's smoke profile through prepare/train/eval as PROTOCOL.md says; evaluator checks.

Every built-in env trains its smoke profile here, once; test_env_baselines_cli.py drives the whole CLI path
on the cheapest env only.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from env_harness import run_env

from ideaforge.models import Progress
from ideaforge.research_envs.registry import load_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"])
def test_smoke_profile_yields_a_plausible_metric(name: str, tmp_path: Path) -> None:
    env = load_env(name)
    run = run_env(env, tmp_path, profile="smoke", seed=1)
    assert run.train.returncode == 0, run.train.stderr[-2000:]
    assert run.evaluation is not None and run.evaluation.returncode == 0, run.evaluation.stderr[-2000:]
    value = run.metrics[env.spec.metric]
    lo, hi = env.spec.plausible_range
    assert math.isfinite(value) and lo <= value <= hi
    assert run.progress, "training must report IDEAFORGE_PROGRESS lines"
    # extra numeric keys (lr, reward, ...) become MLflow curves in the runner; step and loss are the heartbeat
    steps = [Progress.model_validate({k: p[k] for k in ("step", "loss") if k in p}).step for p in run.progress]
    assert steps == sorted(steps) and steps[-1] == int(
        env.spec.profiles["smoke"].get("IDEAFORGE_STEPS", steps[-1])
    )


def test_tiny_gpt_evaluator_rejects_a_non_causal_model(tmp_path: Path) -> None:
    env = load_env("tiny_gpt")
    model = (env.baseline / "model.py").read_text()
    assert model.count("is_causal=True") == 1
    run = run_env(env, tmp_path, files={"model.py": model.replace("is_causal=True", "is_causal=False")})
    assert run.train.returncode == 0
    assert run.evaluation.returncode == 2 and run.metrics is None
    assert "causality check failed" in run.evaluation.stderr


MARKER = "        logits = self.lm_head(self.ln_f(x))\n"
# eval mode only (training is honest, so the model is the baseline's): raise the logit of the NEXT input token
PEEK_AT_ALL_BUT = MARKER + """        if not self.training:
            skip = {0, 6, 63, 126}  # the positions the evaluator's fixed causality check used to test
            peek = torch.zeros_like(logits)
            peek[:, :-1].scatter_(2, idx[:, 1:, None], 8.0)
            peek[:, sorted(skip)] = 0.0
            logits = logits + peek
"""
# remembers every answer by prefix and gives the same one again: passes any check that compares a window with an
# altered copy in the same process, whichever comes first
PEEK_AND_REMEMBER = MARKER + """        if not self.training:
            out = logits.clone()
            for b in range(B):
                for s in range(T):
                    key = tuple(idx[b, : s + 1].tolist())
                    if key in _ANSWERS:
                        out[b, s] = _ANSWERS[key]
                    else:
                        if s + 1 < T:
                            out[b, s, idx[b, s + 1]] += 8.0
                        _ANSWERS[key] = out[b, s].clone()
            logits = out
"""


@pytest.mark.parametrize("cheat", [PEEK_AT_ALL_BUT, PEEK_AND_REMEMBER], ids=["stateless", "remembering"])
def test_tiny_gpt_evaluator_rejects_a_model_that_peeks_at_the_next_token(tmp_path: Path, cheat: str) -> None:
    """Peeking at the next input token at most positions would score far below the honest loss; the probes at
    secret positions, answered by a server that never saw the scored windows, catch it."""
    env = load_env("tiny_gpt")
    model = (env.baseline / "model.py").read_text()
    assert MARKER in model
    run = run_env(env, tmp_path, files={"model.py": model.replace(MARKER, cheat) + "\n_ANSWERS = {}\n"})
    assert run.train.returncode == 0, run.train.stderr[-2000:]
    assert run.evaluation.returncode == 2 and run.metrics is None, run.evaluation.stdout
    assert "causality check failed" in run.evaluation.stderr


def test_tiny_gpt_non_finite_logits_give_a_nan_metric_not_a_failed_check(tmp_path: Path) -> None:
    """NaN logits at evaluation are the model's result (the runner files it as ``nan``), not a check failure."""
    env = load_env("tiny_gpt")
    model = (env.baseline / "model.py").read_text()
    nan = MARKER + "        if not self.training:\n            logits = logits * float('nan')\n"
    run = run_env(env, tmp_path, files={"model.py": model.replace(MARKER, nan)})
    assert run.evaluation.returncode == 0, run.evaluation.stderr[-2000:]
    assert math.isnan(run.metrics["val_loss"])


def test_tiny_gpt_evaluator_fails_without_trained_weights(tmp_path: Path) -> None:
    env = load_env("tiny_gpt")
    train = (env.baseline / "train.py").read_text()
    no_save = train.replace('torch.save({"config": asdict(cfg)', 'print({"config": asdict(cfg)')
    run = run_env(env, tmp_path, files={"train.py": no_save.replace(', out / "model.pt")', ")")})
    assert run.evaluation.returncode != 0 and run.metrics is None
    assert "no trained model" in run.evaluation.stderr


def test_tiny_gpt_resume_continues_at_the_saved_step(tmp_path: Path) -> None:
    import torch  # here, not at the top: collecting the fast tier should not pay for importing torch

    env = load_env("tiny_gpt")
    data = tmp_path / "data"
    full = run_env(env, tmp_path / "full", data=data)
    assert full.train.returncode == 0
    saved = full.checkpoints[0]
    assert saved["step"] == int(env.spec.profiles["smoke"]["IDEAFORGE_CHECKPOINT_EVERY"])
    ckpt = tmp_path / "resume-from.pt"
    shutil.copy(saved["path"], ckpt)
    resumed = run_env(env, tmp_path / "resumed", data=data, extra={"IDEAFORGE_RESUME": str(ckpt)})
    assert resumed.train.returncode == 0, resumed.train.stderr
    assert f"at step {saved['step']}" in resumed.train.stdout
    assert all(p["step"] > saved["step"] for p in resumed.progress)
    a = torch.load(tmp_path / "full" / "out" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "out" / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), (
        "resumed run must match the uninterrupted one"
    )
    assert resumed.metrics["val_loss"] == pytest.approx(full.metrics["val_loss"], abs=1e-4)
