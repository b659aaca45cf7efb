"""The two roles an LLM (or the offline default) plays, and the factory that picks one per ProviderConfig."""

from __future__ import annotations

from typing import Protocol

from ideaforge.models import IdeateRequest, IdeateResult, Implementation, ImplementRequest, ProviderConfig
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore


class Ideator(Protocol):
    async def propose(self, req: IdeateRequest, env: ResearchEnv) -> IdeateResult:
        """Return up to ``req.n`` new ideas for ``req.epoch`` (ids via ideaforge.models.idea_id)."""
        ...


class Implementer(Protocol):
    async def implement(self, req: ImplementRequest, env: ResearchEnv, store: ObjectStore) -> Implementation:
        """One implement attempt (revision ``req.revision``): a diff stored in ``store``, checked to apply."""
        ...


def make_ideator(provider: ProviderConfig, store: ObjectStore | None = None) -> Ideator:
    """The ideator for ``provider``; ``store`` (LLM providers only) receives the prompt/response transcript."""
    if provider.kind == "offline":
        from ideaforge.llm.offline import OfflineIdeator

        return OfflineIdeator()
    from ideaforge.llm.ideator import LLMIdeator

    return LLMIdeator(provider, store=store)


def make_implementer(provider: ProviderConfig, store: ObjectStore | None = None) -> Implementer:
    """The implementer for ``provider``; ``store`` is a fallback for LLM implementers (implement() passes one)."""
    if provider.kind == "offline":
        from ideaforge.llm.offline import OfflineImplementer

        return OfflineImplementer()
    from ideaforge.llm.implementer import LLMImplementer

    return LLMImplementer(provider, store=store)
