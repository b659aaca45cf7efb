"""Drop ideas that repeat the archive or each other: exact (normalised text or equal recipe) and near duplicates.

Near duplicates: the larger of character-trigram cosine and word-bigram Jaccard similarity of
``title + text`` reaches ``threshold``. Ideas that both carry a recipe (offline ideator) are compared by
recipe only, because their template texts look alike while the recipes differ.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from ideaforge.models import Idea, IdeaSummary, Mutation

_PUNCT = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")


def normalise(text: str) -> str:
    """Lower case, punctuation removed (decimal points kept), whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _trigrams(s: str) -> Counter[str]:
    s = f"  {s} "
    return Counter(s[i : i + 3] for i in range(len(s) - 2))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b[k] for k, v in a.items() if k in b)
    na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


def _bigrams(s: str) -> set[tuple[str, ...]]:
    w = s.split()
    return {tuple(w[i : i + 2]) for i in range(len(w) - 1)} or {tuple(w)}


@dataclass
class _Key:
    norm: str
    grams: Counter[str]
    words: set[tuple[str, ...]]
    recipe: tuple | None

    @classmethod
    def of(cls, title: str, text: str, recipe: list[Mutation] | None) -> _Key:
        norm = normalise(f"{title} {text}")
        rec = tuple(sorted((m.op, str(m.value)) for m in recipe)) if recipe else None
        return cls(norm, _trigrams(norm), _bigrams(norm), rec)


def similarity(a: _Key, b: _Key) -> float:
    """1.0 for exact duplicates, else the near-duplicate score in [0, 1]."""
    if a.recipe is not None and b.recipe is not None:
        return 1.0 if a.recipe == b.recipe else 0.0
    if a.norm == b.norm:
        return 1.0
    jac = len(a.words & b.words) / len(a.words | b.words)
    return max(_cosine(a.grams, b.grams), jac)


def drop_duplicates(
    ideas: list[Idea], archive: list[IdeaSummary], threshold: float = 0.8
) -> tuple[list[Idea], int]:
    """Ideas that are neither (near) duplicates of the archive nor of an earlier idea in ``ideas``.

    Returns (kept ideas in their original order, number rejected).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    seen = [_Key.of(s.title, s.text, s.recipe) for s in archive]
    kept: list[Idea] = []
    for idea in ideas:
        key = _Key.of(idea.title, idea.text, idea.recipe)
        if any(similarity(key, other) >= threshold for other in seen):
            continue
        seen.append(key)
        kept.append(idea)
    return kept, len(ideas) - len(kept)
