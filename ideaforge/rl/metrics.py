"""Collapse metrics of one RL step's group of ideas: reward, distinct ideas, diversity, category entropy, lengths.

Semantic diversity is the dispersion of the ideas' sentence embeddings, from the dedup module's embedder
(:func:`ideaforge.llm.dedup.embedder_for`: all-MiniLM-L6-v2, unit vectors): the mean cosine distance of the
ideas to their centroid direction (0 = all the same, larger = spread out). Where dedup itself falls back to
its lexical score (model not installed, or ``IDEAFORGE_DEDUP=lexical``), so does this metric: the vectors are
then L2-normalised character-trigram counts. Ideas are embedded as :func:`ideaforge.llm.dedup.normalise`'d
text, as distinct ideas are counted.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ideaforge.llm.dedup import embedder_for, normalise
from ideaforge.models import StepMetrics

__all__ = ["StepMetrics", "collapse_metrics", "dispersion", "category_of", "entropy", "split_reasoning"]

_THINK = re.compile(r"<think>(.*?)(</think>|$)", re.S)

# Idea categories, first match wins; keywords are matched on normalised text as whole words or prefixes.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "normalisation": ("rmsnorm", "layernorm", "layer norm", "batchnorm", "norm", "qk norm", "prenorm"),
    "optimiser": ("adam", "adamw", "muon", "sgd", "lion", "momentum", "beta", "weight decay", "optimizer"),
    "schedule": ("warmup", "cosine", "schedule", "learning rate", "lr", "decay", "annealing"),
    "averaging": ("ema", "swa", "averaging", "polyak"),
    "attention": ("attention", "rope", "alibi", "heads", "flash", "window"),
    "activation": ("swiglu", "gelu", "relu", "silu", "activation", "glu"),
    "architecture": ("layer", "depth", "width", "embedding", "tie", "residual", "mlp", "init"),
    "regularisation": ("dropout", "label smoothing", "regular", "clip", "clipping"),
    "data": ("data", "batch", "sequence length", "curriculum", "token", "augment"),
}


def split_reasoning(completion: str) -> tuple[str, str]:
    """(reasoning inside ``<think>...</think>``, the reply after it); no think block -> ('', completion)."""
    m = _THINK.search(completion)
    if not m:
        return "", completion.strip()
    return m.group(1).strip(), (completion[: m.start()] + completion[m.end() :]).strip()


def category_of(text: str) -> str:
    """The first :data:`CATEGORIES` entry with a keyword in ``text``, else 'other'."""
    norm = f" {normalise(text)} "
    for cat, keys in CATEGORIES.items():
        if any(re.search(rf"\b{re.escape(k)}", norm) for k in keys):
            return cat
    return "other"


def entropy(labels: Sequence[str]) -> float:
    """Shannon entropy in bits of the label distribution (0 for one label or none)."""
    counts = Counter(labels)
    n = sum(counts.values())
    return max(0.0, -sum(c / n * math.log2(c / n) for c in counts.values())) if n else 0.0


def trigram_vector(text: str) -> dict[str, float]:
    """L2-normalised character-trigram counts of the normalised text (the lexical 'embedding')."""
    s = f"  {normalise(text)} "
    c = Counter(s[i : i + 3] for i in range(len(s) - 2))
    norm = math.sqrt(sum(v * v for v in c.values())) or 1.0
    return {k: v / norm for k, v in c.items()}


def dispersion(texts: Sequence[str]) -> float:
    """Mean cosine distance of the texts' unit vectors to their mean direction; 0 for fewer than 2 texts.

    Vectors: dedup's sentence embeddings, or trigram vectors where dedup falls back to lexical similarity."""
    if len(texts) < 2:
        return 0.0
    norm = [normalise(t) for t in texts]
    embedder = embedder_for()
    if embedder is not None:
        vecs: list[dict] = [dict(enumerate(v)) for v in embedder.encode(norm)]
    else:
        vecs = [trigram_vector(t) for t in norm]
    centroid: Counter = Counter()
    for v in vecs:
        centroid.update(v)
    cn = math.sqrt(sum(x * x for x in centroid.values())) or 1.0
    sims = [sum(x * centroid[k] for k, x in v.items()) / cn for v in vecs]
    return max(0.0, 1.0 - sum(sims) / len(sims))


def collapse_metrics(
    completions: Sequence[str], rewards: Sequence[float], executed: Sequence[bool]
) -> StepMetrics:
    """The collapse metrics of one step's ideas (completions), their rewards and whether each executed."""
    if not completions:
        raise ValueError("collapse_metrics needs at least one completion")
    if not len(completions) == len(rewards) == len(executed):
        raise ValueError("completions, rewards and executed must have the same length")
    parts = [split_reasoning(c) for c in completions]
    replies = [r for _, r in parts]
    distinct = len({normalise(r) for r in replies})
    n = len(completions)
    return StepMetrics(
        mean_reward=sum(rewards) / n,
        max_reward=max(rewards),
        distinct_ideas=distinct,
        distinct_fraction=distinct / n,
        semantic_diversity=dispersion(replies),
        category_entropy=entropy([category_of(r) for r in replies]),
        reply_length=sum(len(r.split()) for r in replies) / n,
        reasoning_length=sum(len(t.split()) for t, _ in parts) / n,
        execution_rate=sum(bool(e) for e in executed) / n,
        n=n,
    )
