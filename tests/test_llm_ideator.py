"""LLMIdeator through the real SDKs against the fake server: prompts, JSON validation and retries, dedup, usage."""

from __future__ import annotations

import asyncio
import json

import pytest

from ideaforge.llm.ideator import LLMIdeator, parse_ideas
from ideaforge.llm.providers import make_ideator
from ideaforge.models import IdeaSummary, IdeateRequest, ProviderConfig
from ideaforge.names import idea_id
from ideaforge.store.artifacts import LocalStore
from tests.fakes.llm_server import FakeLLMServer, write_tiny_env

KEY = "sk-ideator-SECRET-42"


@pytest.fixture
def env(tmp_path):
    return write_tiny_env(tmp_path / "envs")


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("IDEATOR_KEY", KEY)
    with FakeLLMServer() as srv:
        yield srv


def prov(srv, kind="openai", **kw) -> ProviderConfig:
    model = "claude-sonnet-4-6" if kind == "anthropic" else "gpt-4o"
    return ProviderConfig(
        kind=kind, model=model, base_url=srv.base_url(kind), api_key_env="IDEATOR_KEY", **kw
    )


def request(p: ProviderConfig, **kw) -> IdeateRequest:
    base = {"campaign": "c1", "env": "tiny_llm", "epoch": 0, "n": 3, "seed": 7, "provider": p}
    return IdeateRequest(**{**base, **kw})


def summary(i: int, title: str, metric: float | None, text: str | None = None) -> IdeaSummary:
    return IdeaSummary(
        idea_id=idea_id("c1", 0, i),
        epoch=0,
        title=title,
        text=text or f"{title}: details of the change number {i}.",
        origin="explore",
        status="ok" if metric is not None else "failed",
        metric=metric,
        category=None if metric is not None else "crashed",
    )


def ideas_json(*titles: str, parents: list[str] | None = None) -> str:
    return json.dumps(
        {
            "ideas": [
                {
                    "title": t,
                    "description": f"{t}: concrete change to train.py explained in a sentence.",
                    "parent_ids": parents or [],
                }
                for t in titles
            ]
        }
    )


@pytest.mark.parametrize("kind", ["anthropic", "openai", "openai-compatible"])
def test_epoch0_smart_fake_with_transcript(server, env, store, kind):
    ideator = make_ideator(prov(server, kind), store=store)
    assert isinstance(ideator, LLMIdeator)
    res = asyncio.run(ideator.propose(request(prov(server, kind), human_ideas=["my own idea"]), env))
    assert [i.idea_id for i in res.ideas] == [idea_id("c1", 0, k) for k in (1, 2, 3)]  # after 1 human idea
    assert [i.index for i in res.ideas] == [1, 2, 3]
    assert all(
        i.origin == "explore" and i.parent_ids == [] and i.epoch == 0 and i.seed == 7 for i in res.ideas
    )
    assert res.errors == [] and res.usage.calls == 1
    req = server.requests[0]
    assert "Minimise the final loss" in req.prompt and "LR = 0.1" in req.prompt  # description + code
    assert "my own idea" in req.prompt
    transcript = store.get_text(res.transcript)
    assert KEY not in transcript and "Minimise the final loss" in transcript
    assert json.loads(transcript)["exchanges"][0]["response"].startswith('{"ideas"')


def test_exploit_and_explore_mix(server, env):
    parents = [summary(0, "Lower learning rate", 0.5), summary(1, "More steps", 0.7)]
    archive = [*parents, summary(2, "Crashing idea", None)]
    p = prov(server)
    req = request(p, epoch=1, n=4, exploit_share=0.5, parents=parents, archive=archive, baseline_metric=0.9)
    res = asyncio.run(LLMIdeator(p).propose(req, env))
    prompt = server.requests[0].prompt
    assert "exactly 4 ideas: 2 that improve" in prompt
    assert f"[id: {parents[0].idea_id}]" in prompt and "metric 0.5, baseline 0.9" in prompt
    assert "Crashing idea (failed: crashed)" in prompt
    origins = [i.origin for i in res.ideas]
    assert origins == ["exploit", "exploit", "explore", "explore"]
    assert all(i.parent_ids and set(i.parent_ids) <= {p.idea_id for p in parents} for i in res.ideas[:2])
    assert res.transcript is None  # no store given


@pytest.mark.parametrize("strategy", ["best_of_n", "random"])
def test_non_evolution_strategies_explore_only(server, env, strategy):
    parents = [summary(0, "Lower learning rate", 0.5)]
    p = prov(server)
    server.push_text(ideas_json("Alpha idea", "Beta idea", parents=[parents[0].idea_id]))
    req = request(p, epoch=1, n=2, exploit_share=1.0, strategy=strategy, parents=parents, archive=parents)
    res = asyncio.run(LLMIdeator(p).propose(req, env))
    assert "exactly 2 ideas: 0 that improve" in server.requests[0].prompt
    assert [i.origin for i in res.ideas] == ["explore", "explore"] and all(
        not i.parent_ids for i in res.ideas
    )


def test_malformed_then_valid_feeds_error_back(server, env):
    p = prov(server, "anthropic", max_retries=2)
    server.push_text("Sure, here are some ideas: 1. lower LR")
    server.push_text(ideas_json("Cosine decay", "Momentum warmup", "Bigger batch"))
    res = asyncio.run(LLMIdeator(p).propose(request(p), env))
    assert [i.title for i in res.ideas] == ["Cosine decay", "Momentum warmup", "Bigger batch"]
    assert len(server.requests) == 2 and res.usage.calls == 2
    assert "not valid JSON" in server.requests[1].prompt  # the validation error went back to the model
    assert any("attempt 1" in e and "not valid JSON" in e for e in res.errors)


def test_always_malformed_returns_errors_not_exception(server, env, store):
    p = prov(server, max_retries=2, price_in_per_mtok=1.0, price_out_per_mtok=2.0)
    server.push_text(
        '{"ideas": [{"title": "x"}]}', input_tokens=1000, output_tokens=100
    )  # too short, no description
    server.push_text("[not json", input_tokens=1000, output_tokens=100)
    server.push_text('{"something": 1}', input_tokens=1000, output_tokens=100)
    res = asyncio.run(LLMIdeator(p, store=store).propose(request(p), env))
    assert res.ideas == []
    assert len(server.requests) == 3  # 1 + max_retries
    assert res.usage.calls == 3 and res.usage.input_tokens == 3000 and res.usage.output_tokens == 300
    assert res.usage.cost_usd == pytest.approx((3000 * 1.0 + 300 * 2.0) / 1e6)
    assert len(res.errors) == 4 and "got 0 valid new ideas of 3" in res.errors[-1]
    assert len(json.loads(store.get_text(res.transcript))["exchanges"]) == 3


def test_partial_batch_asks_for_the_missing_ones(server, env):
    p = prov(server)
    server.push_text(ideas_json("Only one idea"))
    server.push_text(ideas_json("Second idea", "Third idea"))
    res = asyncio.run(LLMIdeator(p).propose(request(p), env))
    assert [i.title for i in res.ideas] == ["Only one idea", "Second idea", "Third idea"]
    assert "Return exactly 2 ideas" in server.requests[1].prompt
    assert [i.index for i in res.ideas] == [0, 1, 2]


def test_duplicates_of_archive_and_batch_are_rejected(server, env):
    archive = [
        summary(0, "Cosine decay", 0.5, "Cosine decay: concrete change to train.py explained in a sentence.")
    ]
    p = prov(server)
    server.push_text(ideas_json("Cosine decay", "Gradient noise", "gradient noise!"))
    server.push_text(ideas_json("Weight averaging"))
    res = asyncio.run(LLMIdeator(p).propose(request(p, epoch=1, n=2, archive=archive), env))
    assert [i.title for i in res.ideas] == ["Gradient noise", "Weight averaging"]
    assert res.rejected_duplicates == 2
    assert "repeated an idea" in server.requests[1].prompt


def test_unknown_parent_ids_are_dropped(server, env):
    parents = [summary(0, "Lower learning rate", 0.5)]
    p = prov(server)
    server.push_text(ideas_json("Tweak it", parents=["campaign-c1/e000/i99", parents[0].idea_id]))
    server.push_text(ideas_json("Fresh direction"))
    req = request(p, epoch=1, n=2, exploit_share=0.5, parents=parents, archive=parents)
    res = asyncio.run(LLMIdeator(p).propose(req, env))
    assert res.ideas[0].parent_ids == [parents[0].idea_id] and res.ideas[0].origin == "exploit"
    assert any("unknown parent_ids" in e for e in res.errors)


def test_parse_ideas_accepts_fences_and_lists():
    assert parse_ideas('```json\n{"ideas": []}\n```').ideas == []
    assert len(parse_ideas('Here: [{"title": "abc", "description": "long enough text"}]').ideas) == 1
    assert (
        len(
            parse_ideas(
                'Ideas follow {"ideas": [{"title": "abc", "description": "long enough text"}]} ok'
            ).ideas
        )
        == 1
    )
    with pytest.raises(ValueError):
        parse_ideas("no json here")
