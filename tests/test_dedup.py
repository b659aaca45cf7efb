"""dedup: repeats vs refinements, lineage never compared, recipes, and precision/recall on labelled pairs."""

from __future__ import annotations

import pytest

from ideaforge.llm.dedup import Deduper, drop_duplicates, lexical_similarity, normalise, numbers
from ideaforge.models import Idea, IdeaSummary, Mutation
from ops.bench_dedup import evaluate
from tests.fixtures.dedup_pairs import PAIRS

COSINE = (
    "Cosine learning rate schedule: decay the learning rate with a cosine from 1e-3 to zero over training."
)


def idea(k: int, title: str, text: str, recipe=None, parents=None) -> Idea:
    return Idea(
        idea_id=f"i{k}", epoch=1, index=k, title=title, text=text, recipe=recipe, parent_ids=parents or []
    )


def summary(title: str, text: str, recipe=None, idea_id="old", parents=None) -> IdeaSummary:
    return IdeaSummary(
        idea_id=idea_id,
        epoch=0,
        title=title,
        text=text,
        origin="explore",
        status="ok",
        recipe=recipe,
        parent_ids=parents or [],
    )


def drop(ideas, archive, **kw):
    return drop_duplicates(ideas, archive, backend="lexical", **kw)


def test_normalise_and_numbers():
    assert normalise("  Use LR=3e-3, (not 0.01)! ") == "use lr 3e 3 not 0.01"
    assert numbers("lr 3e-3 (was 0.003), 4k steps, 10% warmup. KL 0.05.") == {0.003, 4000.0, 0.1, 0.05}


def test_exact_duplicate_of_archive_after_normalisation():
    kept, rejected = drop(
        [idea(0, "COSINE schedule", COSINE.upper() + "!!")], [summary("Cosine schedule", COSINE)]
    )
    assert kept == [] and rejected == 1


def test_paraphrase_rejected_changed_value_kept():
    reworded = (
        "Cosine LR schedule: decay the learning rate with a cosine from 1e-3 to 0 over the training run."
    )
    other_value = "Cosine learning rate schedule: decay the learning rate with a cosine from 3e-3 to zero over training."
    assert lexical_similarity(COSINE, other_value) > 0.9  # lexically near-identical ...
    kept, rejected = drop([idea(0, "", reworded), idea(1, "", other_value)], [summary("", COSINE)])
    assert [i.idea_id for i in kept] == ["i1"] and rejected == 1  # ... but a different value is a new idea


def test_a_refinement_is_never_compared_with_its_parent_or_ancestors():
    grandparent = summary("", COSINE, idea_id="g")
    parent = summary("", COSINE + " Also warm up.", idea_id="p", parents=["g"])
    child_text = COSINE + " Also warm up!"
    kept, rejected = drop([idea(0, "", child_text, parents=["p"])], [grandparent, parent])
    assert len(kept) == 1 and rejected == 0
    kept, rejected = drop([idea(0, "", child_text)], [grandparent, parent])  # no lineage: a repeat
    assert kept == [] and rejected == 1


def test_duplicates_within_the_batch_keep_the_first():
    a = idea(0, "RMSNorm", "Replace LayerNorm with RMSNorm everywhere.")
    b = idea(1, "rmsnorm", "replace layernorm with rmsnorm everywhere")
    c = idea(2, "RoPE", "Rotary position embeddings instead of learned absolute positions.")
    kept, rejected = drop([a, b, c], [])
    assert [i.idea_id for i in kept] == ["i0", "i2"] and rejected == 1


def test_recipes_decide_when_both_have_one():
    r1 = [Mutation(op="lr", value=0.001), Mutation(op="rmsnorm")]
    r1_reordered = [Mutation(op="rmsnorm"), Mutation(op="lr", value=0.001)]
    r2 = [Mutation(op="lr", value=0.002)]
    archive = [summary("Set lr to 0.001 and use RMSNorm.", "Set lr to 0.001 and use RMSNorm.", r1)]
    same = idea(0, "Totally different words", "Nothing alike at all", r1_reordered)
    similar_text_other_recipe = idea(1, "Set lr to 0.002.", "Set lr to 0.002.", r2)
    kept, rejected = drop([same, similar_text_other_recipe], archive)
    assert [i.idea_id for i in kept] == ["i1"] and rejected == 1


def test_threshold_and_backend_are_validated():
    with pytest.raises(ValueError, match="threshold"):
        Deduper("lexical", threshold=0)
    with pytest.raises(ValueError, match="backend"):
        Deduper("fancy")  # type: ignore[arg-type]


def test_labelled_pairs_lexical_precision_recall():
    """The fallback's figures on the labelled set (ops/bench_dedup.py prints them for both backends)."""
    assert len(PAIRS) >= 60
    r = evaluate(Deduper("lexical"))
    assert r["precision"] >= 0.7 and r["recall"] >= 0.75, r


@pytest.mark.slow
def test_labelled_pairs_embedding_precision_recall(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = Deduper("embedding")  # the packaged model, loaded offline
    r = evaluate(d)
    assert r["precision"] >= 0.75 and r["recall"] >= 0.8, r
    # the model sees meaning where words differ, and the values rule separates a changed value
    assert d.is_duplicate(
        "Weight tying. Share the token embedding matrix with the output head.",
        "Tie the lm_head weights to the input embedding table.",
    )
    assert not d.is_duplicate(
        "KL penalty 0.05 to the reference policy.", "KL penalty 0.1 to the reference policy."
    )


def test_no_ideas_load_no_model(monkeypatch):
    """An ideator reply with no ideas is deduplicated without loading the embedding model (seconds)."""
    from ideaforge.llm import dedup

    def refuse() -> None:
        raise AssertionError("the embedding model was loaded for no ideas")

    monkeypatch.setattr(dedup, "load_embedder", refuse)
    assert drop_duplicates([], [summary("Cosine", COSINE)]) == ([], 0)
