"""The revise-on-patch-failure loop of IdeaWorkflow, through a real Temporal dev server, worker and MLflow.

The loopback LLM server answers with a broken reply first and a good one second (or only broken ones): the
workflow must feed the exact failure back, revise, and run the corrected change, never the broken one.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from ideaforge.config import Settings
from ideaforge.patch.answer import apply_answer
from ideaforge.patch.apply import PatchError
from ideaforge.research_envs.registry import load_env
from ideaforge.store.artifacts import open_store
from tests.harness import run_llm_idea

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_ENV = "IDEAFORGE_TEST_REVISE_KEY"
# Cut off after the removed line: applying it would silently train the baseline without momentum's value.
TRUNCATED = (
    "Heavy-ball momentum should speed up the descent.\n\n--- a/train.py\n+++ b/train.py\n"
    "@@ -11,4 +11,4 @@\n LR = 0.05\n-MOMENTUM = 0.0\n"
)
GOOD = (
    "Heavy-ball momentum 0.9.\n\n```diff\n--- a/train.py\n+++ b/train.py\n@@ -11,3 +11,3 @@\n LR = 0.05\n"
    "-MOMENTUM = 0.0\n+MOMENTUM = 0.9\n NOISE = 0.01\n```\n"
)
# Three more ways to fail: a hunk that fits two places, a half line, and code that does not compile.
AMBIGUOUS = "```diff\n--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n \n+STEP_SCALE = 1.0\n \n```\n"
HALF_LINE = "```diff\n--- a/train.py\n+++ b/train.py\n@@ -11,3 +11,3 @@\n LR = 0.05\n-MOMENTUM = 0.0\n+MOMENTUM = max(0.9,"
NO_COMPILE = "```diff\n--- a/train.py\n+++ b/train.py\n@@ -11,3 +11,3 @@\n LR = 0.05\n-MOMENTUM = 0.0\n+MOMENTUM = = 0.9\n NOISE = 0.01\n```\n"


def _error_of(reply: str, settings: Settings, tmp: Path) -> str:
    """The exact refusal the implementer must report for ``reply`` (computed here, on a scratch copy)."""
    env = load_env("toy_quad", settings.env_paths)
    tree = tmp / f"check-{uuid.uuid4().hex[:6]}"
    shutil.copytree(env.baseline, tree)
    with pytest.raises(PatchError) as e:
        apply_answer(reply, tree, env.spec.protected_files, env.spec.editable_files)
    return str(e.value)


def _run_idea(settings: Settings, client, replies: list[str], max_revisions: int = 2, **extra):
    return run_llm_idea(settings, client, replies, KEY_ENV, "revise", max_revisions=max_revisions, **extra)


def test_broken_reply_is_revised_with_the_exact_error(served_settings, temporal_env, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-revise")
    error = _error_of(TRUNCATED, served_settings, tmp_path)
    assert "cut off" in error
    outcome, prompts = _run_idea(served_settings, temporal_env.client, [TRUNCATED, GOOD])

    assert outcome.revisions == 1
    assert len(prompts) == 2
    assert "Your previous reply was not applied" not in prompts[0]
    assert "Your previous reply was not applied" in prompts[1]
    assert error in prompts[1]  # the exact failure, quoted
    assert "-MOMENTUM = 0.0" in prompts[1]  # and the reply it refers to
    assert outcome.summary.status == "ok", outcome.error
    store = open_store(served_settings)
    diff = store.get_text(outcome.summary.diff)
    assert "+MOMENTUM = 0.9" in diff and "-MOMENTUM = 0.0" in diff
    assert diff.count("\n+") == 1 + diff.count("\n+++")  # exactly one added line: the good reply's


def test_every_failure_kind_goes_back_and_nothing_runs_when_all_fail(served_settings, temporal_env, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-revise")
    replies = [AMBIGUOUS, HALF_LINE, NO_COMPILE]
    errors = [_error_of(r, served_settings, tmp_path) for r in replies]
    assert "fits 3 places" in errors[0] and "cut off" in errors[1] and "does not compile" in errors[2]
    outcome, prompts = _run_idea(served_settings, temporal_env.client, replies)

    assert outcome.revisions == 2 and len(prompts) == 3
    assert errors[0] in prompts[1] and errors[1] in prompts[2]
    assert outcome.summary.status == "failed" and outcome.summary.category == "patch_failed"
    assert outcome.run is None and outcome.summary.code is None  # never packaged, never trained
    assert errors[2] in (outcome.error or "")


def test_each_failed_sample_goes_back_with_its_own_reply(served_settings, temporal_env, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-revise")
    errors = {r: _error_of(r, served_settings, tmp_path) for r in (AMBIGUOUS, NO_COMPILE)}
    outcome, prompts = _run_idea(
        served_settings, temporal_env.client, [AMBIGUOUS, NO_COMPILE, GOOD, GOOD], max_revisions=1,
        parallel_samples=2,
    )
    assert outcome.revisions == 1 and outcome.summary.status == "ok", outcome.error
    revision = prompts[2]  # both samples of round 2 got the same prompt
    assert prompts[3] == revision and "Your previous 2 replies were not applied" in revision
    blocks = revision.split("### Sample ")[1:]
    assert len(blocks) == 2
    for reply, error in errors.items():
        (block,) = [b for b in blocks if reply.strip() in b]
        assert block.index(reply.strip()) < block.index(error)  # its reply, then its own error
        other = next(e for r, e in errors.items() if r != reply)
        assert other not in block


def test_spent_budget_stops_the_idea_before_any_call(served_settings, temporal_env, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-revise")
    outcome, prompts = _run_idea(served_settings, temporal_env.client, [GOOD], budget_left_usd=0.0)
    assert prompts == []  # refused before anything was sent
    assert outcome.summary.status == "failed" and outcome.summary.category == "budget_exhausted"
    assert outcome.revisions == 0 and outcome.run is None  # not revised, never trained
    assert "budget exhausted" in (outcome.error or "")
