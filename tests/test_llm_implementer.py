"""LLMImplementer through the real SDKs against the fake server: formats, repair, protection, k samples, revisions."""

from __future__ import annotations

import asyncio
import json

import pytest

from ideaforge.llm.implementer import LLMImplementer
from ideaforge.llm.providers import make_implementer
from ideaforge.models import Idea, ImplementRequest, ProviderConfig
from ideaforge.names import idea_id
from ideaforge.patch.apply import make_diff, patched_tree
from ideaforge.store.artifacts import LocalStore
from tests.fakes.llm_server import FakeLLMServer, write_tiny_env

KEY = "sk-impl-SECRET-77"


@pytest.fixture
def env(tmp_path):
    return write_tiny_env(tmp_path / "envs")


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("IMPL_KEY", KEY)
    with FakeLLMServer() as srv:
        yield srv


def prov(srv, kind="openai", **kw) -> ProviderConfig:
    model = "claude-sonnet-4-6" if kind == "anthropic" else "gpt-4o"
    return ProviderConfig(kind=kind, model=model, base_url=srv.base_url(kind), api_key_env="IMPL_KEY", **kw)


def request(p: ProviderConfig, **kw) -> ImplementRequest:
    idea = Idea(
        idea_id=idea_id("c1", 1, 0),
        epoch=1,
        index=0,
        title="Lower the learning rate",
        text="Use LR = 0.05 for stability.",
    )
    return ImplementRequest(**{"campaign": "c1", "env": "tiny_llm", "idea": idea, "provider": p, **kw})


def sr(path: str, search: str, replace: str) -> str:
    return f"Summary.\n{path}\n```\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"


def patched(env, store, ref, tmp_path) -> str:
    return (patched_tree(env.baseline, store.get_text(ref), tmp_path / "check") / "train.py").read_text()


def run(impl, req, env, store):
    return asyncio.run(impl.implement(req, env, store))


@pytest.mark.parametrize("kind", ["anthropic", "openai", "openai-compatible"])
def test_smart_fake_search_replace_applies(server, env, store, tmp_path, kind):
    p = prov(server, kind)
    impl = make_implementer(p, store=store)
    assert isinstance(impl, LLMImplementer)
    out = run(impl, request(p), env, store)
    assert out.applies and out.category is None and out.error is None
    assert out.touched_files == ["train.py"]
    assert "LR = 0.05" in patched(env, store, out.diff, tmp_path)  # first smart request: factor 0.5
    assert out.usage.calls == 1 and out.usage.input_tokens > 0
    system, prompt = server.requests[0].system, server.requests[0].prompt
    assert "Lower the learning rate" in prompt and '<file path="train.py">' in system
    assert "evaluate.py" in system and 'print("eval")' not in system + prompt  # the evaluator: named, not shown
    transcript = store.get_text(out.transcript)
    assert KEY not in transcript and "<<<<<<< SEARCH" in transcript


def test_broken_unified_diff_is_repaired(server, env, store, tmp_path):
    server.push_text(
        "I lower the learning rate.\n```diff\n--- train.py\n+++ train.py\n@@ -40,4 +40,4 @@\n"
        ' """Tiny env for LLM tests: gradient descent on a quadratic."""\n\n-LR = 0.1\n+LR = 0.05\n STEPS = 20\n```\n'
    )
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert out.applies, out.error
    assert "LR = 0.05" in patched(env, store, out.diff, tmp_path)
    assert store.get_text(out.diff).startswith("diff --git a/train.py b/train.py")


@pytest.mark.parametrize(
    "reply",
    [
        '--- a/evaluate.py\n+++ b/evaluate.py\n@@ -1,3 +1,3 @@\n-"""Locked evaluator."""\n+"""Hacked."""\n',
        sr("evaluate.py", 'print("eval")', 'print("hacked")'),
    ],
    ids=["diff", "search_replace"],
)
def test_protected_file_edit_is_rejected(server, env, store, reply):
    server.push_text(reply)
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies
    assert out.category == "protected_file_touched"
    assert "protected" in out.error and "evaluate.py" in out.error


def test_garbage_gives_patch_failed_with_raw_text_stored(server, env, store):
    server.push_text("I think you should lower the learning rate, good luck!")
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies and out.category == "patch_failed"
    assert "no change found in the reply" in out.error
    assert store.get_text(out.diff).startswith("I think you should")  # shown back on the next revision


def test_search_text_not_in_file_fails_clearly(server, env, store):
    server.push_text(sr("train.py", "LEARNING_RATE = 1e-3", "LEARNING_RATE = 1e-4"))
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies and out.category == "patch_failed"
    assert "not found in train.py" in out.error


def test_parallel_samples_keep_first_that_applies_in_completion_order(server, env, store, tmp_path):
    server.push_text("no diff here", delay=0.0)
    server.push_text(sr("train.py", "LR = 0.1", "LR = 0.02"), delay=0.8)  # applies, but finishes last
    server.push_text(sr("train.py", "LR = 0.1", "LR = 0.03"), delay=0.2)  # applies and finishes first
    p = prov(server)
    out = run(LLMImplementer(p), request(p, parallel_samples=3), env, store)
    assert out.applies
    assert "LR = 0.03" in patched(env, store, out.diff, tmp_path)
    assert len(server.requests) == 3
    assert out.usage.calls == 2  # the slow sample was cancelled before it completed
    samples = json.loads(store.get_text(out.transcript))["samples"]
    assert [s["applies"] for s in samples] == [False, True]


def test_parallel_samples_all_fail_reports_each(server, env, store):
    server.push_text("nothing useful")
    server.push_text(sr("train.py", "NOT THERE", "x"))
    p = prov(server)
    out = run(LLMImplementer(p), request(p, parallel_samples=2), env, store)
    assert not out.applies and out.category == "patch_failed"
    assert "sample 1:" in out.error and "sample 2:" in out.error and out.usage.calls == 2


def test_revision_feeds_previous_diff_and_error_back(server, env, store, tmp_path):
    prev = store.put_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 9\n+LR = 1\n", kind="diff")
    server.push_text(sr("train.py", "LR = 0.1", "LR = 0.04"))
    p = prov(server)
    req = request(p, revision=1, previous_diff=prev, previous_error="git apply failed: patch does not apply")
    out = run(LLMImplementer(p), req, env, store)
    assert out.applies
    prompt = server.requests[0].prompt
    assert "Your previous reply was not applied" in prompt
    assert "git apply failed: patch does not apply" in prompt and "-LR = 9" in prompt


def test_a_preflight_crash_is_fed_back_as_a_crash_not_as_a_refused_patch(server, env, store):
    prev = store.put_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 9\n+LR = 1\n", kind="diff")
    server.push_text(sr("train.py", "LR = 0.1", "LR = 0.04"))
    p = prov(server)
    crash = "the patched code exited with 1 ...\nModuleNotFoundError: No module named 'apex'"
    req = request(p, revision=1, previous_diff=prev, previous_error=crash, previous_category="preflight_failed")
    assert run(LLMImplementer(p), req, env, store).applies
    prompt = server.requests[0].prompt
    assert "Your previous change crashed before training" in prompt and "not applied" not in prompt
    assert "No module named 'apex'" in prompt and "-LR = 9" in prompt


def test_child_diff_is_relative_to_baseline_and_includes_parent(server, env, store, tmp_path):
    parent_files = {"train.py": (env.baseline / "train.py").read_text().replace("LR = 0.1", "LR = 0.05")}
    parent = store.put_text(make_diff(env.baseline, parent_files), kind="diff")
    server.push_text(sr("train.py", "STEPS = 20", "STEPS = 30"))
    p = prov(server)
    out = run(LLMImplementer(p), request(p, parent_diff=parent), env, store)
    assert out.applies, out.error
    assert "LR = 0.05" in server.requests[0].prompt  # the model saw the parent's code
    text = patched(env, store, out.diff, tmp_path)  # applied to the PRISTINE baseline
    assert "LR = 0.05" in text and "STEPS = 30" in text


def test_broken_parent_diff_is_reported(server, env, store):
    parent = store.put_text("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nope\n+yes\n", kind="diff")
    p = prov(server)
    out = run(LLMImplementer(p), request(p, parent_diff=parent), env, store)
    assert not out.applies and "parent's diff" in out.error and server.requests == []


def test_no_op_change_is_a_failure(server, env, store):
    server.push_text(sr("train.py", "LR = 0.1", "LR = 0.1"))
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies and "leaves every file as it was" in out.error


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_reply_cut_at_the_token_limit_is_not_applied(server, env, store, kind):
    # a diff that looks complete: only the API's stop reason (max_tokens / length) says it was cut
    server.push_text("--- a/train.py\n+++ b/train.py\n@@ -3,1 +3,1 @@\n-LR = 0.1\n+LR = 0.05\n", cut_off=True)
    p = prov(server, kind)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies and out.category == "patch_failed"
    assert "cut off at the output-token limit" in out.error


def test_refusal_message_quotes_the_file_region(server, env, store):
    server.push_text("```diff\n--- a/train.py\n+++ b/train.py\n@@ -3,1 +3,1 @@\n-LR = 0.3\n+LR = 0.05\n```\n")
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert not out.applies
    assert "hunk 1 does not match" in out.error and "    3 | LR = 0.1" in out.error
