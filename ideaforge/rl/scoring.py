"""Rewards for GRPO on ideas: an offline scorer fitted on an export, a synthetic env, and a novelty bonus.

A scorer maps (prompt, completion) to a :class:`Scored` (reward, executed). The completion is the idea; a
``<think>`` block, if any, is stripped before scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from pydantic import BaseModel

from ideaforge.llm.dedup import normalise
from ideaforge.rl.metrics import split_reasoning, trigram_vector

log = logging.getLogger(__name__)


class Scored(BaseModel):
    reward: float
    executed: bool


class Scorer(Protocol):
    def score(self, prompt: str, completion: str) -> Scored: ...


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    """Cosine of two L2-normalised sparse vectors."""
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


class OfflineScorer:
    """Reward of an idea = the execution reward of the NEAREST executed idea of the export (1-nearest neighbour).

    Nearness is the cosine of character-trigram vectors (:func:`ideaforge.rl.metrics.trigram_vector`) of the
    reply against each row's ``title + text``. If the best cosine is below ``min_similarity`` the idea is
    unlike anything executed: it gets ``unmatched_reward`` (default: the lowest reward in the export, i.e. an
    unknown idea is presumed no better than the worst one seen) and counts as not executed. A matched idea
    counts as executed when its neighbour's status is 'ok'. Rows without a reward (a success in a campaign
    without a baseline) are skipped.
    """

    def __init__(
        self, rows: Iterable[dict], min_similarity: float = 0.5, unmatched_reward: float | None = None
    ) -> None:
        self.rows = [r for r in rows if r.get("reward") is not None]
        if not self.rows:
            raise ValueError("the export has no row with a reward: nothing to learn from")
        self.vecs = [trigram_vector(f"{r.get('title', '')} {r.get('text', '')}") for r in self.rows]
        self.min_similarity = min_similarity
        self.unmatched_reward = (
            unmatched_reward if unmatched_reward is not None else min(float(r["reward"]) for r in self.rows)
        )

    def score(self, prompt: str, completion: str) -> Scored:
        _, reply = split_reasoning(completion)
        v = trigram_vector(reply)
        best, sim = max(((i, cosine(v, w)) for i, w in enumerate(self.vecs)), key=lambda t: t[1])
        if not reply.strip() or sim < self.min_similarity:
            return Scored(reward=self.unmatched_reward, executed=False)
        row = self.rows[best]
        return Scored(reward=float(row["reward"]), executed=row.get("status") == "ok")


class SyntheticEnv:
    """A synthetic research env: the loss falls by a fixed fraction for each particular change the idea names.

    ``metric = baseline * prod(1 - gain[c])`` over the distinct changes ``c`` of ``gains`` named in the reply
    (whole words); reward = ``(baseline - metric) * scale`` (lower is better). An empty reply fails to
    "execute" and gets ``failure_reward``. The best idea names every change.
    """

    DEFAULT_GAINS = {"rmsnorm": 0.04, "warmup": 0.03, "ema": 0.02, "swiglu": 0.05, "rope": 0.03, "muon": 0.06}

    def __init__(
        self,
        gains: dict[str, float] | None = None,
        baseline: float = 3.5,
        scale: float = 10.0,
        failure_reward: float = -1.0,
    ) -> None:
        self.gains = dict(gains or self.DEFAULT_GAINS)
        self.baseline, self.scale, self.failure_reward = baseline, scale, failure_reward

    def metric(self, reply: str) -> float:
        named = set(normalise(reply).split()) & set(self.gains)
        m = self.baseline
        for c in named:
            m *= 1 - self.gains[c]
        return m

    def score(self, prompt: str, completion: str) -> Scored:
        _, reply = split_reasoning(completion)
        if not reply.strip():
            return Scored(reward=self.failure_reward, executed=False)
        return Scored(reward=(self.baseline - self.metric(reply)) * self.scale, executed=True)

    @property
    def max_reward(self) -> float:
        return (self.baseline - self.metric(" ".join(self.gains))) * self.scale


class NoveltyBonus:
    """Anti-collapse: reward ``1 - max cosine`` of an idea to the archive (earlier ideas and earlier groups).

    The archive starts with ``seed_texts`` (e.g. the export's ideas) and grows with every scored group, so an
    idea the policy has already produced earns nothing, and within a group only the first of identical
    ideas earns the bonus. At most ``max_archive`` recent ideas are kept.
    """

    def __init__(self, seed_texts: Sequence[str] = (), max_archive: int = 2000) -> None:
        self.max_archive = max_archive
        self.archive: list[str] = []
        self._vecs: list[dict[str, float]] = []
        for t in seed_texts:
            self.add(t)

    def add(self, text: str) -> None:
        self.archive.append(text)
        self._vecs.append(trigram_vector(text))
        if len(self.archive) > self.max_archive:
            del self.archive[0], self._vecs[0]

    def bonus(self, completions: Sequence[str]) -> list[float]:
        """Bonuses for one group, then the group joins the archive."""
        out = []
        for c in completions:
            _, reply = split_reasoning(c)
            v = trigram_vector(reply)
            nearest = max((cosine(v, w) for w in self._vecs), default=0.0)
            out.append(max(0.0, 1.0 - nearest) if reply.strip() else 0.0)
            self.add(reply)
        return out
