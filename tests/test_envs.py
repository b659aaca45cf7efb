"""Fast checks of the built-in research envs: specs load, offline catalogues apply cleanly, answer checker."""

from __future__ import annotations

import ast
import itertools
import re

import pytest

from ideaforge.models import SearchReplace
from ideaforge.patch.apply import PatchError, apply_search_replace, check_applies, make_diff
from ideaforge.research_envs.registry import ResearchEnv, available_envs, load_env

ENVS = ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"]


def knob_edit(env: ResearchEnv, knob, value) -> dict[str, str]:
    text = (env.baseline / knob.file).read_text()
    matches = list(re.finditer(knob.pattern, text))
    assert len(matches) == 1, f"{env.spec.name}: knob {knob.name} pattern matches {len(matches)} times"
    m = matches[0]
    return {knob.file: text[: m.start(1)] + str(value) + text[m.end(1) :]}


def assert_valid_change(env: ResearchEnv, files: dict[str, str]) -> None:
    for rel, text in files.items():
        ast.parse(text, filename=rel)
    diff = make_diff(env.baseline, files)
    assert diff, "the change must alter the baseline"
    info = check_applies(diff, env.baseline, env.spec.protected_files)
    assert set(info.files) <= set(env.spec.editable_files)


@pytest.mark.parametrize("name", ENVS)
def test_env_loads_with_profiles_and_catalogue(name: str) -> None:
    env = load_env(name)
    assert name in available_envs()
    assert {"default", "smoke"} <= set(env.spec.profiles)
    assert env.spec.offline.knobs and len(env.spec.offline.variants) >= 4
    assert (env.root / "README.md").is_file()
    assert len(env.protected_digest()) == 64
    if env.spec.resources.device == "cpu":
        assert env.spec.seed_noise and 5 <= len(env.spec.offline.knobs) <= 10


@pytest.mark.parametrize("name", ENVS)
def test_every_knob_value_applies(name: str) -> None:
    env = load_env(name)
    for knob in env.spec.offline.knobs:
        assert knob.file in env.spec.editable_files
        for value in knob.values:
            assert_valid_change(env, knob_edit(env, knob, value))


@pytest.mark.parametrize("name", ENVS)
def test_every_variant_and_pair_applies(name: str) -> None:
    env = load_env(name)
    variants = {v.name: v for v in env.spec.offline.variants}
    for v in variants.values():
        assert set(v.conflicts) <= set(variants), f"{v.name} conflicts with unknown variants"
        for other in v.conflicts:
            assert v.name in variants[other].conflicts, f"conflict {v.name}/{other} must be symmetric"
        assert_valid_change(env, apply_search_replace(env.baseline, v.edits))
    for a, b in itertools.combinations(variants.values(), 2):
        if b.name in a.conflicts:
            with pytest.raises(PatchError):
                apply_search_replace(env.baseline, [*a.edits, *b.edits])
            continue
        assert_valid_change(env, apply_search_replace(env.baseline, [*a.edits, *b.edits]))


@pytest.mark.parametrize("name", ENVS)
def test_variants_combine_with_every_knob(name: str) -> None:
    env = load_env(name)
    for v in env.spec.offline.variants:
        for knob in env.spec.offline.knobs:
            edited = knob_edit(env, knob, knob.values[0])
            files = apply_search_replace(env.baseline, v.edits, files=edited)
            assert_valid_change(env, files)


def test_an_edit_whose_search_text_is_missing_is_refused() -> None:
    env = load_env("tiny_gpt")
    bad = SearchReplace(file="model.py", search="this text is not in model.py", replace="x")
    with pytest.raises(PatchError, match="occurs 0 times"):
        apply_search_replace(env.baseline, [bad])
