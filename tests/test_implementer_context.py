"""What the implementer is shown, how its prompt caches, how revisions pair replies with errors, and what it
costs: LLMImplementer through the real SDKs against the loopback LLM server, on the shipped tiny_grpo env
(editable grpo.py calls the protected policy.py, task.py and sft.py; evaluate.py stays hidden)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ideaforge.llm.client import LLMClient
from ideaforge.llm.implement_prompt import (
    MAX_PROTECTED_CHARS,
    numbered,
    protected_section,
    system_prompt,
    user_prompt,
)
from ideaforge.llm.implementer import LLMImplementer
from ideaforge.llm.pricing import cost_usd
from ideaforge.models import Idea, ImplementRequest, ProviderConfig, SampleAttempt, Usage
from ideaforge.names import idea_id
from ideaforge.patch.apply import make_diff
from ideaforge.research_envs.registry import available_envs, load_env, load_env_folder
from ideaforge.store.artifacts import LocalStore
from tests.fakes.llm_server import FakeLLMServer

KEY = "sk-context-SECRET-5"
ENVS = ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"]


@pytest.fixture
def env():
    return load_env("tiny_grpo")


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("CTX_KEY", KEY)
    with FakeLLMServer() as srv:
        yield srv


def prov(srv, kind="anthropic", **kw) -> ProviderConfig:
    model = "claude-sonnet-4-6" if kind == "anthropic" else "gpt-4.1"
    return ProviderConfig(kind=kind, model=model, base_url=srv.base_url(kind), api_key_env="CTX_KEY", **kw)


def request(p: ProviderConfig, n: int = 0, **kw) -> ImplementRequest:
    idea = Idea(
        idea_id=idea_id("c1", 1, n),
        epoch=1,
        index=n,
        title=f"Sequence-level loss {n}",
        text="Average the clipped surrogate per sequence instead of per token.",
    )
    return ImplementRequest(**{"campaign": "c1", "env": "tiny_grpo", "idea": idea, "provider": p, **kw})


def run(impl, req, env, store):
    return asyncio.run(impl.implement(req, env, store))


def run_in_turn(impl, reqs, env, store):
    """Requests one after the other on one event loop (the SDK's connections belong to their loop)."""

    async def go():
        return [await impl.implement(r, env, store) for r in reqs]

    return asyncio.run(go())


def own_lines(env, rel: str) -> list[str]:
    """Lines of ``rel`` long enough to be telling and found in no other file of the baseline."""
    others = "\n".join(
        p.read_text(errors="replace") for p in env.baseline.rglob("*") if p.is_file() and p.name != rel
    )
    return [x for x in (env.baseline / rel).read_text().splitlines() if len(x.strip()) > 25 and x not in others]


def sr(path: str, search: str, replace: str) -> str:
    return f"Summary.\n{path}\n```\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"


# -- what the model sees ------------------------------------------------------------------------------------


def test_prompt_shows_env_protected_files_numbered_and_evaluator_interface(server, env, store):
    p = prov(server)
    out = run(LLMImplementer(p), request(p), env, store)
    assert out.applies, out.error
    system, prompt = server.requests[0].system, server.requests[0].prompt
    assert env.spec.description.strip() in system
    assert env.spec.evaluator_interface.strip() in system
    # the protected code grpo.py calls, read-only and line-numbered: every line of policy.py, with its number
    for rel in ("policy.py", "task.py", "sft.py"):
        lines = (env.baseline / rel).read_text().splitlines()
        assert f'<protected_file path="{rel}" lines="{len(lines)}">' in system
        width = len(str(len(lines)))
        for i, line in enumerate(lines, 1):
            assert f"{i:>{width}}| {line}\n" in system
    # the evaluator and the eval-only script that draws the validation set stay hidden, named only
    for rel in ("evaluate.py", "prepare.py"):
        assert own_lines(env, rel) and not any(line in system + prompt for line in own_lines(env, rel)), rel
        assert f"{rel} (" in system
    # the editable file is in the stable block, unnumbered, exactly as in the baseline
    assert f'<file path="grpo.py">\n{(env.baseline / "grpo.py").read_text()}</file>' in system
    assert "Sequence-level loss 0" in prompt and "Sequence-level loss" not in system
    anthropic_system = server.requests[0].body["system"]
    assert anthropic_system == [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]


def test_parent_diff_and_changed_files_come_in_the_per_idea_part(server, env, store, tmp_path):
    base = (env.baseline / "grpo.py").read_text()
    assert "CLIP_EPS = 0.2" in base
    parent = store.put_text(make_diff(env.baseline, {"grpo.py": base.replace("CLIP_EPS = 0.2", "CLIP_EPS = 0.3")}))
    p = prov(server)
    impl = LLMImplementer(p)
    plain, child = run_in_turn(impl, [request(p, 0), request(p, 1, parent_diff=parent)], env, store)
    assert plain.applies and child.applies, child.error
    first, second = server.requests
    assert first.system == second.system  # the parent changes nothing in the stable block
    assert "builds on its parent's change" in second.prompt and "-CLIP_EPS = 0.2\n+CLIP_EPS = 0.3" in second.prompt
    assert '<file path="grpo.py">' in second.prompt and "CLIP_EPS = 0.3" in second.prompt  # grpo.py as it is now
    assert "builds on its parent" not in first.prompt and '<file path="grpo.py">' not in first.prompt
    assert "+CLIP_EPS = 0.3" in store.get_text(child.diff)  # the child's diff keeps the parent's change


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_stable_prefix_is_byte_identical_and_cached_on_the_second_idea(server, env, store, kind):
    p = prov(server, kind)
    impl = LLMImplementer(p)
    first, second = run_in_turn(impl, [request(p, 0), request(p, 1)], env, store)
    a, b = server.requests
    assert a.system == b.system and a.prompt != b.prompt
    assert len(a.system) > 3 * len(a.prompt)  # the large part is the cacheable one
    assert first.usage.cached_input_tokens == 0 and second.usage.cached_input_tokens > 0
    assert second.usage.cached_input_tokens >= len(a.system) // 4 - 128  # the whole system block was read
    if kind == "anthropic":
        assert first.usage.cache_write_tokens > 0 and second.usage.cache_write_tokens == 0
    else:  # OpenAI routes calls of one env to the same cache
        assert a.body["prompt_cache_key"] == b.body["prompt_cache_key"]
    assert second.usage.cost_usd < first.usage.cost_usd / 2  # cached input bills at a tenth (or a quarter)


def test_every_shipped_env_describes_its_hidden_evaluator_and_fits_the_bound():
    assert set(ENVS) <= set(available_envs())
    fixture = load_env_folder(Path(__file__).parent / "fixtures" / "envs" / "toy_quad")
    for env in [*(load_env(n) for n in ENVS), fixture]:
        name = env.spec.name
        assert len(env.spec.evaluator_interface.strip()) > 100, name
        section = protected_section(env)
        assert "evaluate.py (the evaluator" in section, name
        evaluator = own_lines(env, "evaluate.py")
        assert evaluator and not any(line in section for line in evaluator), name
        assert len(section) < MAX_PROTECTED_CHARS + 2000, name


def test_huge_protected_file_is_cut_with_a_marker():
    text = "\n".join(f"x_{i} = {i}" for i in range(10_000))
    cut = numbered(text, 2000)
    assert len(cut) < 2100
    assert cut.splitlines()[0] == "    1| x_0 = 0"
    assert cut.splitlines()[-1].startswith("... (truncated: lines ") and cut.endswith("of 10000 not shown)")


# -- revisions ------------------------------------------------------------------------------------------------


def test_revision_pairs_each_failed_sample_reply_with_its_own_error(server, env, store):
    server.push_text("ALPHA: I would rather not change anything.")  # no change in the reply
    server.push_text(sr("grpo.py", "BETA_NOT_IN_THE_FILE = 1", "BETA_NOT_IN_THE_FILE = 2"))  # search not found
    p = prov(server)
    impl = LLMImplementer(p)
    first = run(impl, request(p, parallel_samples=2), env, store)
    impl = LLMImplementer(p)
    assert not first.applies and len(first.samples) == 2
    for s in first.samples:  # each sample keeps its own reply and error
        reply = store.get_text(s.reply)
        assert ("no change found" if reply.startswith("ALPHA") else "not found in grpo.py") in s.error
    out = run(
        impl,
        request(p, revision=1, previous_samples=first.samples, previous_diff=first.diff, previous_error=first.error),
        env,
        store,
    )
    assert out.applies, out.error
    prompt = server.requests[2].prompt
    assert "Your previous 2 replies were not applied" in prompt
    blocks = prompt.split("### Sample ")[1:]
    assert len(blocks) == 2
    for block, sample in zip(blocks, first.samples, strict=True):
        reply, error = store.get_text(sample.reply), sample.error
        assert block.index(reply) < block.index(error)  # the reply, then its own error
        other = next(s for s in first.samples if s is not sample)
        assert other.error not in block and store.get_text(other.reply) not in block


def test_identical_failed_samples_are_shown_once(env, store):
    reply = store.put_text("no diff at all", kind="reply")
    same = SampleAttempt(reply=reply, error="no change found in the reply")
    other = SampleAttempt(reply=store.put_text("still nothing", kind="reply"), error="no change found in the reply")
    req = request(ProviderConfig(), revision=1, previous_samples=[same, same, other])
    prompt = user_prompt(req, env, env.baseline, None, store)
    assert prompt.count("no diff at all") == 1 and prompt.count("still nothing") == 1
    assert "Your previous 2 replies were not applied" in prompt


def test_revision_bounds_each_reply(server, env, store):
    huge = "Z" * 200_000
    ref = store.put_text(huge)
    p = prov(server)
    req = request(p, revision=1, previous_diff=ref, previous_error="no change found in the reply")
    prompt = user_prompt(req, env, env.baseline, None, store)
    assert len(prompt) < 30_000 and "more characters not shown" in prompt
    assert prompt.index("ZZZ") < prompt.index("no change found in the reply")


# -- budget and cost ------------------------------------------------------------------------------------------


def _worst_case(p: ProviderConfig, env, store, req: ImplementRequest) -> float:
    user = user_prompt(req, env, env.baseline, None, store)
    return LLMClient(p).worst_case_usd(system_prompt(env), [{"role": "user", "content": user}])


def test_call_refused_when_the_budget_left_cannot_cover_it(server, env, store):
    p = prov(server)
    req = request(p, budget_left_usd=0.0)
    worst = _worst_case(p, env, store, req)
    for left in (0.0, worst * 0.9):
        out = run(LLMImplementer(p), req.model_copy(update={"budget_left_usd": left}), env, store)
        assert not out.applies and out.category == "budget_exhausted"
        assert "budget exhausted" in out.error and out.usage == Usage()
    assert server.requests == []  # nothing was sent, nothing was spent


def test_budget_admits_only_the_samples_it_can_cover(server, env, store):
    p = prov(server)
    req = request(p, parallel_samples=3)
    left = 1.5 * _worst_case(p, env, store, req)
    out = run(LLMImplementer(p), req.model_copy(update={"budget_left_usd": left}), env, store)
    assert out.applies, out.error
    assert len(server.requests) == 1 and out.usage.calls == 1  # 2 of 3 samples refused before they started
    assert 0 < out.usage.cost_usd <= left


def test_cost_of_parallel_samples_counts_the_cancelled_ones(server, env, store):
    p = prov(server, "openai", prompt_cache=False)
    server.push_text(sr("grpo.py", "CLIP_EPS = 0.2", "CLIP_EPS = 0.25"), input_tokens=5000, output_tokens=100)
    server.push_text("slow one", delay=3.0)
    server.push_text("slow two", delay=3.0)
    req = request(p, parallel_samples=3)
    out = run(LLMImplementer(p), req, env, store)
    assert out.applies, out.error
    u = out.usage
    assert (u.calls, u.cancelled_calls) == (1, 2)
    user = user_prompt(req, env, env.baseline, None, store)
    estimated_in = (len(system_prompt(env)) + len(user)) // 4  # what a cancelled call's prompt is billed as
    assert u.input_tokens == 5000 + 2 * estimated_in
    assert u.cancelled_tokens == u.input_tokens - 5000 + u.output_tokens - 100  # the estimated part, apart
    assert u.output_tokens >= 100  # plus what the cancelled calls generated meanwhile (estimated, 80 tokens/s)
    assert u.cost_usd == pytest.approx(
        cost_usd(p, u.input_tokens, u.output_tokens, u.cached_input_tokens, u.cache_write_tokens)
    )
    assert u.cost_usd > cost_usd(p, 5000, 100, u.cached_input_tokens)  # the cancelled samples are costed
    transcript = json.loads(store.get_text(out.transcript))
    assert transcript["usage"] == u.model_dump()
