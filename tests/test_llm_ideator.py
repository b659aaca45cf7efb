"""LLMIdeator through the real SDKs against the fake server: prompts, JSON validation and retries, dedup, usage."""

from __future__ import annotations

import asyncio
import json

import pytest

from ideaforge.llm.idea_reply import parse_ideas, parse_ideas_lenient
from ideaforge.llm.ideator import LLMIdeator
from ideaforge.llm.providers import make_ideator
from ideaforge.models import IdeaSummary, IdeateRequest, ParentStats, ProviderConfig
from ideaforge.names import idea_id
from ideaforge.store.artifacts import LocalStore
from tests.fakes.llm_server import FakeLLMServer, write_tiny_env

KEY = "sk-ideator-SECRET-42"


@pytest.fixture(autouse=True)
def lexical_dedup(monkeypatch):
    """Fast tests use the lexical dedup (the embedding model takes ~10 s to load; tests/test_dedup.py has it)."""
    monkeypatch.setenv("IDEAFORGE_DEDUP", "lexical")


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
    kw.setdefault("model", "claude-sonnet-4-6" if kind == "anthropic" else "gpt-4o")
    return ProviderConfig(kind=kind, base_url=srv.base_url(kind), api_key_env="IDEATOR_KEY", **kw)


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


def describe(title: str) -> str:
    """A description of its own for each title (so dedup sees different ideas)."""
    words = title.lower().split()
    return f"In train.py, {' and '.join(words)} changes how {words[0]} behaves; try a variant of {title}."


def ideas_json(*titles: str, parents: list[str] | None = None) -> str:
    return json.dumps(
        {"ideas": [{"title": t, "description": describe(t), "parent_ids": parents or []} for t in titles]}
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
    assert (
        "Minimise the final loss" in req.system and "LR = 0.1" in req.system
    )  # env + code: the cached prefix
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
    assert len(server.requests) == 2  # exploit and explore are separate calls
    (exploit,) = [r for r in server.requests if "Task: exploit" in r.prompt]
    (explore,) = [r for r in server.requests if "Task: explore" in r.prompt]
    assert "exactly 2 ideas: 2 that improve" in exploit.prompt
    assert f"[id: {parents[0].idea_id}]" in exploit.prompt and "metric 0.5, baseline 0.9" in exploit.prompt
    assert "[crashed] Crashing idea" in explore.prompt  # failures with their category, for explore
    assert (
        "Lower learning rate" in explore.prompt and "exactly 2 ideas, each a new direction" in explore.prompt
    )
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
    assert "Task: explore" in server.requests[0].prompt and "Task: exploit" not in server.requests[0].prompt
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
    assert "idea 1 is invalid" in res.errors[0]
    assert len(json.loads(store.get_text(res.transcript))["exchanges"]) == 3


def test_partial_batch_asks_for_the_missing_ones(server, env):
    p = prov(server)
    server.push_text(ideas_json("Nesterov momentum"))
    server.push_text(ideas_json("Gradient clipping", "Exponential averaging of iterates"))
    res = asyncio.run(LLMIdeator(p).propose(request(p), env))
    assert [i.title for i in res.ideas] == [
        "Nesterov momentum",
        "Gradient clipping",
        "Exponential averaging of iterates",
    ]
    assert "Return exactly 2 ideas" in server.requests[1].prompt
    assert [i.index for i in res.ideas] == [0, 1, 2]


def test_duplicates_of_archive_and_batch_are_rejected(server, env):
    archive = [summary(0, "Cosine decay", 0.5, describe("Cosine decay"))]
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
    req = request(p, epoch=1, n=1, exploit_share=1.0, parents=parents, archive=parents)
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


# --------------------------------------------------------------------------- campaign scale


def winners(k: int) -> list[IdeaSummary]:
    return [
        summary(i, f"Winner {i}", 0.5 - i / 1000, f"Idea number {i}: change component {i} of the optimiser.")
        for i in range(k)
    ]


def test_80_ideas_per_epoch_in_concurrent_calls(server, env):
    """80 ideas: 8 calls of 10, exploit and explore prompted apart, each with its own sampled context,
    at most `concurrency` in flight; at least 76 distinct ideas come back."""
    archive = winners(60)
    p = prov(server, concurrency=3)
    req = request(
        p, epoch=2, n=80, exploit_share=0.5, parents=archive[:4], archive=archive, baseline_metric=0.9
    )
    res = asyncio.run(LLMIdeator(p).propose(req, env))
    assert server.max_inflight <= 3
    # 8 planned calls; follow-ups (asking for ideas that dedup rejected) say so
    prompts = [r.prompt for r in server.requests if "About your previous reply" not in r.prompt]
    assert len(prompts) == 8
    assert sum("Task: exploit" in x for x in prompts) == 4 and sum("Task: explore" in x for x in prompts) == 4
    assert all("exactly 10 ideas" in x for x in prompts)
    assert len(set(prompts)) == 8  # every call drew its own context
    assert len({r.system for r in server.requests}) == 1  # one stable, cacheable prefix
    ideas = res.ideas
    assert len(ideas) == 80 and len({(i.title, i.text) for i in ideas}) >= 76
    assert [i.origin for i in ideas].count("exploit") == 40
    assert [i.index for i in ideas] == list(range(80))
    assert not any("valid new ideas of" in e for e in res.errors)
    # deterministic per request: the same request draws the same contexts
    server.requests.clear()
    asyncio.run(LLMIdeator(p).propose(req, env))
    again = [r.prompt for r in server.requests if "About your previous reply" not in r.prompt]
    assert sorted(again) == sorted(prompts)


def test_truncated_replies_keep_complete_ideas_and_retry_with_a_larger_budget(server, env):
    p = prov(server, "anthropic", max_tokens=120)  # ~2 smart ideas fit in 120 tokens
    res = asyncio.run(LLMIdeator(p).propose(request(p, n=10), env))
    assert len(res.ideas) == 10
    budgets = [r.body["max_tokens"] for r in server.requests]
    assert budgets[:3] == [120, 240, 480]  # doubled after each cut reply
    assert res.usage.truncated_calls >= 2
    assert any("cut at the token limit" in e and "complete ideas were kept" in e for e in res.errors)


def test_reasoning_model_whose_limit_goes_to_reasoning_is_retried(server, env):
    """gpt-5 counts reasoning in max_completion_tokens: a reply that comes back empty is retried larger."""
    p = prov(server, model="gpt-5-mini", max_tokens=200, thinking_budget=1024)
    server.reasoning_tokens_by_effort = {"medium": 1300}
    res = asyncio.run(LLMIdeator(p).propose(request(p, n=3), env))
    first = server.requests[0].body
    assert first["max_completion_tokens"] == 1224 and "max_tokens" not in first
    assert any("nothing usable came back" in e for e in res.errors)
    assert len(res.ideas) == 3


def test_one_invalid_idea_does_not_discard_the_batch(server, env):
    p = prov(server)
    good = json.loads(ideas_json("Nesterov momentum", "Gradient clipping"))["ideas"]
    server.push_text(json.dumps({"ideas": [good[0], {"title": "x", "description": "?"}, good[1]]}))
    server.push_text(ideas_json("Stochastic weight averaging"))
    res = asyncio.run(LLMIdeator(p).propose(request(p, n=3), env))
    assert [i.title for i in res.ideas] == [
        "Nesterov momentum",
        "Gradient clipping",
        "Stochastic weight averaging",
    ]
    assert any("idea 2 is invalid" in e for e in res.errors)
    assert (
        "Return exactly 1 ideas" in server.requests[1].prompt
        and "idea 2 is invalid" in server.requests[1].prompt
    )


def test_budget_cap_stops_ideation_before_a_call_past_it(server, env):
    p = prov(server, concurrency=1, price_in_per_mtok=1000.0, price_out_per_mtok=1000.0)
    res = asyncio.run(LLMIdeator(p).propose(request(p, n=30, budget_left_usd=0.5), env))
    assert len(server.requests) == 1  # the first call's cost passed the cap: the other two never started
    assert len(res.ideas) == 10 and res.usage.cost_usd > 0.5
    assert any("budget exhausted" in e for e in res.errors)


def test_env_guidance_is_in_the_cached_system_prompt(server, tmp_path):
    envdir = tmp_path / "g"
    env = write_tiny_env(envdir)
    toml = env.root / "env.toml" if hasattr(env, "root") else envdir / "tiny_llm" / "env.toml"
    toml.write_text(toml.read_text() + 'ideator_guidance = "Never stack hyperparameter tweaks."\n')
    from ideaforge.research_envs.registry import load_env_folder

    env = load_env_folder(envdir / "tiny_llm")
    p = prov(server)
    asyncio.run(LLMIdeator(p).propose(request(p, n=2), env))
    assert "Never stack hyperparameter tweaks." in server.requests[0].system


def test_lenient_parser_keeps_ideas_before_a_cut():
    text = '{"ideas": [{"title": "Alpha idea", "description": "long enough text"}, {"title": "Beta", "descr'
    drafts, problems = parse_ideas_lenient(text)
    assert [d.title for d in drafts] == ["Alpha idea"] and problems == []
    assert parse_ideas_lenient("nothing")[0] == []


def test_a_refinement_of_its_own_parent_is_kept(server, env):
    """Exploit ideas restate much of their parent: dedup never compares an idea with its own lineage."""
    parent = summary(
        0, "Cosine decay", 0.5, "Decay the learning rate with a cosine from 0.1 to zero over training."
    )
    other = summary(
        1, "Cosine decay again", 0.6, "Decay the learning rate with a cosine from 0.1 to zero over training!"
    )
    p = prov(server)
    refined = {
        "title": "Cosine decay",
        "description": "Decay the learning rate with a cosine from 0.1 to zero over training, plus 3 warmup steps.",
    }
    server.push_text(json.dumps({"ideas": [{**refined, "parent_ids": [parent.idea_id]}]}))
    server.push_text(
        json.dumps({"ideas": [{**refined, "parent_ids": []}]})
    )  # cites no parent: a repeat of both
    req = request(p, epoch=1, n=1, exploit_share=1.0, parents=[parent], archive=[parent])
    res = asyncio.run(LLMIdeator(p).propose(req, env))
    assert [i.parent_ids for i in res.ideas] == [[parent.idea_id]] and res.rejected_duplicates == 0
    # the same text citing no parent repeats an executed idea: rejected
    p0 = prov(server, max_retries=0)
    req = request(p0, epoch=1, n=1, exploit_share=0.0, parents=[parent], archive=[parent, other])
    res = asyncio.run(LLMIdeator(p0).propose(req, env))
    assert res.ideas == [] and res.rejected_duplicates == 1


def test_ideate_activity_gives_an_80_idea_epoch_on_a_cpu_env(server, tmp_path):
    """The campaign's ideate activity (as the worker runs it) on the tiny_gpt CPU env: 80 ideas asked, at
    least 76 distinct ones back, numbered after the human idea, with usage and the env's guidance sent."""
    from temporalio.testing import ActivityEnvironment

    from ideaforge.activities.campaign import CampaignActivities
    from ideaforge.config import Settings

    archive = winners(30)
    acts = CampaignActivities(Settings(home=tmp_path / "home"), LocalStore(tmp_path / "store"))
    p = prov(server, concurrency=4, price_in_per_mtok=3.0, price_out_per_mtok=15.0)
    req = IdeateRequest(
        campaign="big",
        env="tiny_gpt",
        epoch=1,
        n=81,
        seed=3,
        provider=p,
        exploit_share=0.5,
        parents=archive[:4],
        archive=archive,
        baseline_metric=2.35,
        human_ideas=["Try RMSNorm."],
    )
    res = asyncio.run(ActivityEnvironment().run(acts.ideate, req))
    llm = [i for i in res.ideas if i.origin != "human"]
    assert len(llm) == 80 and len({(i.title, i.text) for i in llm}) >= 76
    assert [i.index for i in res.ideas] == list(range(81)) and res.ideas[0].origin == "human"
    assert res.usage.calls >= 8 and res.usage.cost_usd > 0
    assert all("Guidance for this environment" in r.system for r in server.requests)


def test_parents_come_with_their_diff_and_their_childrens_outcomes(server, env, store):
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 0.1\n+LR = 0.05\n"
    parent = summary(0, "Lower learning rate", 0.5).model_copy(update={"diff": store.put_text(diff, kind="diff")})
    p = prov(server)
    req = request(
        p, epoch=1, n=2, exploit_share=1.0, parents=[parent], archive=[parent], baseline_metric=0.9,
        parent_stats={parent.idea_id: ParentStats(delta=0.4, children=3, child_deltas=[0.1, None])},
    )  # fmt: skip
    asyncio.run(LLMIdeator(p, store=store).propose(req, env))
    exploit = next(r for r in server.requests if "Task: exploit" in r.prompt)
    assert "+LR = 0.05" in exploit.prompt, "the parent's diff is shown"
    assert "Children so far: 3" in exploit.prompt and "+0.1, failed" in exploit.prompt


D = "Replace LayerNorm with RMSNorm in every block."


@pytest.mark.parametrize(
    "reply",
    [
        '{"ideas": [{"title": "RMSNorm", "description": "DESC",}]}'.replace("DESC", D),  # trailing comma
        '{"ideas": [{"name": "RMSNorm", "details": "DESC"}]}'.replace("DESC", D),  # other field names
        '{"ideas": [{"title": "RMSNorm", "description": "Replace LayerNorm\nwith RMSNorm everywhere."}]}',  # raw newline
        "{'ideas': [{'title': 'RMSNorm', 'description': \"Don't keep LayerNorm: use RMSNorm.\"}]}",  # a Python dict
        'Shape of a block:\n```python\nx = [1]\n```\nThe ideas:\n```json\n{"ideas": [{"title": "RMSNorm", '
        '"description": "DESC"}]}\n```'.replace("DESC", D),  # the JSON in the second fence
    ],
    ids=["trailing_comma", "field_names", "raw_newline", "python_dict", "second_fence"],
)
def test_idea_replies_as_models_write_them(reply):
    drafts, problems = parse_ideas_lenient(reply)
    assert [d.title for d in drafts] == ["RMSNorm"] and problems == []


def test_one_unreadable_idea_costs_only_itself():
    reply = (
        '{"ideas": [{"title": "Alpha idea", "description": "DESC"}, {"title": "Beta" "description": "no comma"}, '
        '{"title": "Gamma idea", "description": "DESC"}]}'.replace("DESC", D)
    )
    drafts, problems = parse_ideas_lenient(reply)
    assert [d.title for d in drafts] == ["Alpha idea", "Gamma idea"]
    assert problems == [problems[0]] and problems[0].startswith("idea 2 is not valid JSON and was dropped")
