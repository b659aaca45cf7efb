"""The embedded offline ideator and implementer: real, varied, deduplicated changes as real diffs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ideaforge.llm.offline import OfflineIdeator, OfflineImplementer, canonical, recipe_from_text
from ideaforge.models import IdeaPlan, IdeaSummary, IdeateRequest, ImplementRequest, Mutation, ProviderConfig
from ideaforge.names import idea_id
from ideaforge.patch.package import patched_tree
from ideaforge.research_envs.registry import load_env
from ideaforge.store.artifacts import LocalStore

FIXTURES = [Path(__file__).parent / "fixtures" / "envs"]


def _req(**kw) -> IdeateRequest:
    base = dict(campaign="c", env="toy_quad", epoch=0, n=4, seed=0, provider=ProviderConfig())
    base.update(kw)
    return IdeateRequest(**base)


def test_epoch0_ideas_are_distinct_single_changes_with_deterministic_ids() -> None:
    env = load_env("toy_quad", FIXTURES)
    res = asyncio.run(OfflineIdeator().propose(_req(max_changes=1), env))
    assert [i.idea_id for i in res.ideas] == [idea_id("c", 0, k) for k in range(4)]
    assert all(i.origin == "explore" and len(i.recipe) == 1 for i in res.ideas)
    assert len({canonical(i.recipe) for i in res.ideas}) == 4
    again = asyncio.run(OfflineIdeator().propose(_req(max_changes=1), env))
    assert [i.recipe for i in again.ideas] == [i.recipe for i in res.ideas], "same seed must give same ideas"


def test_evolution_explores_with_several_changes_and_is_seeded_by_position_not_name() -> None:
    env = load_env("toy_quad", FIXTURES)
    res = asyncio.run(OfflineIdeator().propose(_req(n=12, n_planned=5, max_changes=3), env))
    sizes = [len(canonical(i.recipe)) for i in res.ideas]
    assert len(res.ideas) == 12 and min(sizes) == 1 and max(sizes) > 1 and max(sizes) <= 3
    other = asyncio.run(OfflineIdeator().propose(_req(campaign="other", n=12, n_planned=5, max_changes=3), env))
    assert [i.recipe for i in other.ideas] == [i.recipe for i in res.ideas], "paired campaigns draw alike"


def _ok(i: int, recipe: list[Mutation], metric: float) -> IdeaSummary:
    return IdeaSummary(
        idea_id=idea_id("c", 0, i), epoch=0, title=f"t{i}", text="t", origin="explore",
        recipe=recipe, status="ok", metric=metric,
    )  # fmt: skip


def test_crossover_combines_two_parents_recipes() -> None:
    env = load_env("toy_quad", FIXTURES)
    a = _ok(1, [Mutation(op="knob:lr", value=0.2)], 0.5)
    b = _ok(2, [Mutation(op="knob:momentum", value=0.5)], 0.6)
    plan = [IdeaPlan(parent_ids=[a.idea_id, b.idea_id])]
    res = asyncio.run(OfflineIdeator().propose(_req(epoch=1, n=1, plan=plan, parents=[a, b], archive=[a, b]), env))
    (idea,) = res.ideas
    assert canonical(idea.recipe) == canonical([*a.recipe, *b.recipe])
    assert idea.parent_ids == [a.idea_id, b.idea_id] and idea.origin == "exploit"


def test_ideas_past_the_catalogue_are_reported_not_dropped() -> None:
    env = load_env("toy_quad", FIXTURES)
    res = asyncio.run(OfflineIdeator().propose(_req(n=60, max_changes=1), env))
    assert len(res.ideas) < 60
    assert len(res.errors) == 60 - len(res.ideas)
    assert all("catalogue exhausted" in e for e in res.errors)


def test_exploit_ideas_extend_a_parent_and_skip_tried_recipes() -> None:
    env = load_env("toy_quad", FIXTURES)
    parent = IdeaSummary(
        idea_id=idea_id("c", 0, 1),
        epoch=0,
        title="lr",
        text="t",
        origin="explore",
        recipe=[Mutation(op="knob:lr", value=0.2)],
        status="ok",
        metric=0.5,
    )
    tried = IdeaSummary(
        idea_id=idea_id("c", 0, 2),
        epoch=0,
        title="m",
        text="t",
        origin="explore",
        recipe=[Mutation(op="knob:momentum", value=0.5)],
        status="ok",
        metric=0.9,
    )
    res = asyncio.run(
        OfflineIdeator().propose(
            _req(epoch=1, n=4, exploit_share=1.0, parents=[parent], archive=[parent, tried]), env
        )
    )
    assert len(res.ideas) == 4
    for i in res.ideas:
        assert i.origin == "exploit" and i.parent_ids == [parent.idea_id]
        # the parent's lr change is kept (or re-tuned to another value) and one change is added
        assert any(op == "knob:lr" for op, _ in canonical(i.recipe))
        assert canonical(i.recipe) not in {canonical(parent.recipe), canonical(tried.recipe)}


def test_implementer_makes_a_real_diff_that_git_applies(tmp_path: Path) -> None:
    env = load_env("toy_quad", FIXTURES)
    store = LocalStore(tmp_path / "store")
    ideas = asyncio.run(OfflineIdeator().propose(_req(n=3), env)).ideas
    for idea in ideas:
        impl = asyncio.run(
            OfflineImplementer().implement(
                ImplementRequest(campaign="c", env="toy_quad", idea=idea, provider=ProviderConfig()),
                env,
                store,
            )
        )
        assert impl.applies, impl.error
        diff = store.get_text(impl.diff)
        assert diff.startswith("diff --git a/train.py b/train.py")
        tree = patched_tree(env.baseline, diff, tmp_path / idea.idea_id.replace("/", "_"))
        assert (tree / "train.py").read_text() != (env.baseline / "train.py").read_text()


def test_unknown_recipe_and_free_text_are_patch_failures(tmp_path: Path) -> None:
    env = load_env("toy_quad", FIXTURES)
    store = LocalStore(tmp_path / "store")
    bad = asyncio.run(OfflineIdeator().propose(_req(n=1), env)).ideas[0]
    for idea, message in [
        (bad.model_copy(update={"recipe": [Mutation(op="variant:nope")]}), "unknown variant"),
        (
            bad.model_copy(update={"recipe": None, "text": "use a transformer", "title": "x"}),
            "offline implementer",
        ),
    ]:
        impl = asyncio.run(
            OfflineImplementer().implement(
                ImplementRequest(campaign="c", env="toy_quad", idea=idea, provider=ProviderConfig()),
                env,
                store,
            )
        )
        assert not impl.applies and impl.category == "patch_failed"
        assert message in impl.error


def test_human_text_is_read_for_catalogue_changes() -> None:
    env = load_env("toy_quad", FIXTURES)
    recipe = recipe_from_text("Please set lr to 0.05 and poison the loss", env.spec.offline)
    assert Mutation(op="knob:lr", value=0.05) in recipe
    assert Mutation(op="variant:nan_loss") in recipe


@pytest.mark.parametrize("strategy", ["best_of_n", "random"])
def test_baseline_strategies_never_exploit(strategy: str) -> None:
    env = load_env("toy_quad", FIXTURES)
    parent = IdeaSummary(
        idea_id="p",
        epoch=0,
        title="p",
        text="t",
        origin="explore",
        recipe=[Mutation(op="knob:lr", value=0.2)],
        status="ok",
        metric=0.5,
    )
    res = asyncio.run(
        OfflineIdeator().propose(
            _req(epoch=1, strategy=strategy, exploit_share=1.0, parents=[parent], archive=[parent]), env
        )
    )
    assert res.ideas and all(i.origin == "explore" and not i.parent_ids for i in res.ideas)
