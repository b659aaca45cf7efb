"""LLM activities (ideate, implement) heartbeat while the model thinks, so their short heartbeat timeout (1 min)
never cuts off a long LLM call, and a lost attempt is retried within it rather than after 15 minutes."""

from __future__ import annotations

import asyncio

from temporalio.testing import ActivityEnvironment

from ideaforge.activities import campaign as campaign_activities
from ideaforge.activities import heartbeat
from ideaforge.activities.campaign import CampaignActivities
from ideaforge.config import Settings
from ideaforge.models import (
    Idea,
    IdeateRequest,
    IdeateResult,
    Implementation,
    ImplementRequest,
    ProviderConfig,
)
from ideaforge.store.artifacts import LocalStore

THINKING_S = 0.5


class SlowModel:
    """An ideator and implementer that take THINKING_S to answer (a long LLM call, shortened)."""

    async def propose(self, req: IdeateRequest, env: object) -> IdeateResult:
        await asyncio.sleep(THINKING_S)
        return IdeateResult(ideas=[])

    async def implement(self, req: ImplementRequest, env: object, store: object) -> Implementation:
        await asyncio.sleep(THINKING_S)
        return Implementation(applies=False, category="llm_failed", error="thought too long")


def test_ideate_and_implement_heartbeat_while_the_model_thinks(tmp_path, monkeypatch):
    monkeypatch.setattr(heartbeat, "HEARTBEAT_EVERY_S", 0.05)
    monkeypatch.setattr(campaign_activities, "make_ideator", lambda *a, **k: SlowModel())
    monkeypatch.setattr(campaign_activities, "make_implementer", lambda *a, **k: SlowModel())
    acts = CampaignActivities(Settings(home=tmp_path / "home"), LocalStore(tmp_path / "store"))
    idea = Idea(idea_id="campaign-c/e001/i00", epoch=1, index=0, title="t", text="t", origin="explore")
    calls = {
        "ideate": (acts.ideate, IdeateRequest(campaign="c", env="tiny_gpt", epoch=1, n=2, seed=0, provider=ProviderConfig())),
        "implement": (acts.implement, ImplementRequest(campaign="c", env="tiny_gpt", idea=idea, provider=ProviderConfig())),
    }  # fmt: skip
    for name, (fn, req) in calls.items():
        env = ActivityEnvironment()
        beats: list[tuple] = []
        env.on_heartbeat = lambda *details, beats=beats: beats.append(details)
        asyncio.run(env.run(fn, req))
        assert len(beats) >= 5, (name, len(beats))  # ~10 in 0.5 s at 0.05 s; none without the heartbeat
