"""dedup: exact, near-duplicate and recipe duplicates against the archive and within a batch."""

from __future__ import annotations

import pytest

from ideaforge.llm.dedup import _Key, drop_duplicates, normalise, similarity
from ideaforge.models import Idea, IdeaSummary, Mutation

COSINE = (
    "Cosine learning rate schedule: decay the learning rate with a cosine from 1e-3 to zero over training."
)


def idea(k: int, title: str, text: str, recipe: list[Mutation] | None = None) -> Idea:
    return Idea(idea_id=f"i{k}", epoch=1, index=k, title=title, text=text, recipe=recipe)


def summary(title: str, text: str, recipe: list[Mutation] | None = None) -> IdeaSummary:
    return IdeaSummary(
        idea_id="old", epoch=0, title=title, text=text, origin="explore", status="ok", recipe=recipe
    )


def test_normalise_keeps_decimals():
    assert normalise("  Use LR=3e-3, (not 0.01)! ") == "use lr 3e 3 not 0.01"


def test_exact_duplicate_of_archive_after_normalisation():
    kept, rejected = drop_duplicates(
        [idea(0, "COSINE schedule", COSINE.upper() + "!!")], [summary("Cosine schedule", COSINE)]
    )
    assert kept == [] and rejected == 1


def test_near_duplicate_rewording_is_rejected_but_related_idea_kept():
    reworded = (
        "Cosine LR schedule: decay the learning rate with a cosine from 1e-3 to 0 over the training run."
    )
    related = "Linear warmup for 100 steps, then keep the learning rate constant at 3e-3."
    def text_similarity(a: str, b: str) -> float:
        return similarity(_Key.of(a, "", None), _Key.of(b, "", None))

    assert text_similarity(COSINE, reworded) >= 0.8 > text_similarity(COSINE, related)
    kept, rejected = drop_duplicates([idea(0, "", reworded), idea(1, "", related)], [summary("", COSINE)])
    assert [i.idea_id for i in kept] == ["i1"] and rejected == 1


def test_duplicates_within_the_batch_keep_the_first():
    a = idea(0, "RMSNorm", "Replace LayerNorm with RMSNorm everywhere.")
    b = idea(1, "rmsnorm", "replace layernorm with rmsnorm everywhere")
    c = idea(2, "RoPE", "Rotary position embeddings instead of learned absolute positions.")
    kept, rejected = drop_duplicates([a, b, c], [])
    assert [i.idea_id for i in kept] == ["i0", "i2"] and rejected == 1


def test_recipes_decide_when_both_have_one():
    r1 = [Mutation(op="lr", value=0.001), Mutation(op="rmsnorm")]
    r1_reordered = [Mutation(op="rmsnorm"), Mutation(op="lr", value=0.001)]
    r2 = [Mutation(op="lr", value=0.002)]
    archive = [summary("Set lr to 0.001 and use RMSNorm.", "Set lr to 0.001 and use RMSNorm.", r1)]
    same = idea(0, "Totally different words", "Nothing alike at all", r1_reordered)
    similar_text_other_recipe = idea(1, "Set lr to 0.002.", "Set lr to 0.002.", r2)
    kept, rejected = drop_duplicates([same, similar_text_other_recipe], archive)
    assert [i.idea_id for i in kept] == ["i1"] and rejected == 1


def test_threshold_is_validated_and_respected():
    with pytest.raises(ValueError, match="threshold"):
        drop_duplicates([], [], threshold=0)
    reworded = (
        "Cosine LR schedule: decay the learning rate with a cosine from 1e-3 to 0 over the training run."
    )
    kept, _ = drop_duplicates([idea(0, "", reworded)], [summary("", COSINE)], threshold=0.99)
    assert len(kept) == 1
