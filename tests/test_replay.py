"""Replay: the current workflow code must reproduce the recorded histories of campaigns (a baseline campaign,
synchronous epochs with confirmation, an LLM campaign with revisions, a paused one, a crash-resumed one).

A change that would break campaigns already in flight fails here. To change workflow code compatibly, guard
the new behaviour with ``workflow.patched(...)``; to accept a deliberate break, re-record the histories with
``python -m tests.record_histories`` (README, "Changing workflow code").
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> list[WorkflowHistory]:
    return [WorkflowHistory.from_json(h["workflow_id"], h["history"]) for h in json.loads(path.read_text())]


def test_every_scenario_is_recorded() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"baseline", "sync_confirm", "llm_revisions", "paused", "crash_resumed"} <= names
    for p in HISTORIES:
        ids = [h.workflow_id for h in load(p)]
        assert sum("/" not in i for i in ids) >= 2, f"{p.name}: a campaign with a continue-as-new or a restart"
        assert any("/" in i for i in ids), f"{p.name}: idea workflows too"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
def test_recorded_histories_replay_on_the_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[CampaignWorkflow, IdeaWorkflow], data_converter=pydantic_data_converter)

    async def histories():
        for h in load(path):
            yield h

    async def replay():
        return await replayer.replay_workflows(histories(), raise_on_replay_failure=False)

    results = asyncio.run(replay())
    failures = {wid: str(err) for wid, err in results.replay_failures.items()}
    assert not failures, f"workflow code no longer replays {path.name}: {failures}"
