"""Live progress of a campaign per idea, read from Temporal without needing a worker to answer.

The child IdeaWorkflows are found by visibility (``ParentWorkflowId``); a running one is described, and its
pending activity says where it is (implementing, packaging, queued for a training slot, training, recording),
with the training step, loss and elapsed time from the runner's heartbeats (re-validated as ``Progress``).
A closed one's outcome comes from its result. Nothing here is a workflow query, so it answers with the
worker down.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ValidationError
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from ideaforge import names
from ideaforge.models import IdeaInput, IdeaOutcome, Progress
from ideaforge.names import campaign_workflow_id

log = logging.getLogger(__name__)

IdeaState = Literal[
    "implementing", "packaging", "preflight", "queued", "training", "recording", "starting", "done", "failed"
]
ACTIVE: tuple[IdeaState, ...] = ("implementing", "packaging", "preflight", "training", "recording", "starting")
RPC_TIMEOUT_S = 2.0


class IdeaProgress(BaseModel):
    """Where one idea stands."""

    idea_id: str
    state: IdeaState
    title: str = ""
    origin: str = ""
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    attempt: int = 1
    metric: float | None = None
    category: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    closed_at: datetime | None = None

    @property
    def short_id(self) -> str:
        return self.idea_id.split("/", 1)[-1]


def eta(step: int | None, total: int | None, elapsed_s: float | None) -> float | None:
    """Seconds left at the pace so far, or None when it cannot be told yet."""
    if not step or not total or not elapsed_s or step >= total:
        return 0.0 if step and total and step >= total else None
    return (total - step) * elapsed_s / step


def with_total(ideas: list[IdeaProgress], total_steps: int | None) -> list[IdeaProgress]:
    """Fill in the step budget (and so the ETA) of training ideas once it is known."""
    if total_steps:
        for p in ideas:
            if p.step is not None and p.total_steps is None:
                p.total_steps = total_steps
                p.eta_s = eta(p.step, total_steps, p.elapsed_s)
    return ideas


def _activity_state(activity_type: str, state: int) -> IdeaState:
    if activity_type == names.RUN_EXPERIMENT:
        return "training" if state != PendingActivityState.PENDING_ACTIVITY_STATE_SCHEDULED else "queued"
    return {
        names.IMPLEMENT: "implementing",
        names.PACKAGE: "packaging",
        names.PREFLIGHT: "preflight",
        names.RECORD_IDEA: "recording",
    }.get(activity_type, "starting")


async def _running_idea(client: Client, idea_id: str, total_steps: int | None) -> IdeaProgress:
    p = IdeaProgress(idea_id=idea_id, state="starting", total_steps=total_steps)
    try:
        desc = await client.get_workflow_handle(idea_id).describe(rpc_timeout=_timeout())
    except RPCError as e:
        log.debug("describe %s failed: %s", idea_id, e)
        return p
    p.started_at = desc.start_time
    pending = list(desc.raw_description.pending_activities)
    if not pending:
        return p
    act = pending[0]
    p.state = _activity_state(act.activity_type.name, act.state)
    p.attempt = act.attempt or 1
    if act.last_failure.message and act.attempt > 1:
        p.error = act.last_failure.message[:200]
    if act.activity_type.name == names.RUN_EXPERIMENT and act.heartbeat_details.payloads:
        try:
            details = await client.data_converter.decode(list(act.heartbeat_details.payloads))
            beat = Progress.model_validate(details[-1] if not isinstance(details[-1], Progress) else details[-1])
        except (ValidationError, ValueError, TypeError, IndexError) as e:
            log.debug("unreadable heartbeat of %s: %s", idea_id, e)
        else:
            p.step, p.loss, p.elapsed_s = beat.step, beat.loss, beat.elapsed_s
            p.eta_s = eta(beat.step, total_steps, beat.elapsed_s)
    return p


async def _closed_idea(client: Client, idea_id: str, status: WorkflowExecutionStatus | None) -> IdeaProgress:
    if status != WorkflowExecutionStatus.COMPLETED:
        name = status.name.lower() if status else "closed"
        return IdeaProgress(idea_id=idea_id, state="failed", category=f"workflow {name}")
    try:
        out = await client.get_workflow_handle(idea_id, result_type=IdeaOutcome).result(rpc_timeout=_timeout())
    except Exception as e:  # noqa: BLE001 - an unreadable result is shown, not fatal
        return IdeaProgress(idea_id=idea_id, state="failed", category="unreadable result", error=str(e)[:200])
    s = out.summary
    return IdeaProgress(
        idea_id=idea_id,
        state="done" if s.status == "ok" else "failed",
        title=s.title,
        origin=s.origin,
        metric=s.metric,
        category=s.category,
        error=out.error,
    )


def _timeout():
    from datetime import timedelta

    return timedelta(seconds=RPC_TIMEOUT_S)


class IdeaTracker:
    """Per-idea progress of one campaign; closed ideas are read once and cached across polls."""

    def __init__(self, client: Client, name: str, total_steps: int | None = None) -> None:
        self.client = client
        self.name = name
        self.total_steps = total_steps
        self._closed: dict[str, IdeaProgress] = {}
        self._inputs: dict[str, tuple[str, str]] = {}  # idea id -> (title, origin), from the child's input

    async def _title(self, idea_id: str) -> tuple[str, str]:
        if idea_id not in self._inputs:
            try:
                hist = await self.client.get_workflow_handle(idea_id).fetch_history(rpc_timeout=_timeout())
                attrs = hist.events[0].workflow_execution_started_event_attributes
                (inp,) = await self.client.data_converter.decode(list(attrs.input.payloads), [IdeaInput])
                self._inputs[idea_id] = (inp.idea.title, inp.idea.origin)
            except Exception as e:  # noqa: BLE001 - a title is a nicety: show the id alone
                log.debug("no input for %s: %s", idea_id, e)
                return "", ""
        return self._inputs[idea_id]

    async def poll(self) -> list[IdeaProgress]:
        """Every idea of the campaign so far, in id order."""
        query = f"WorkflowType='IdeaWorkflow' AND ParentWorkflowId='{campaign_workflow_id(self.name)}'"
        latest: dict[str, tuple[WorkflowExecutionStatus | None, datetime | None, datetime | None]] = {}
        async for wf in self.client.list_workflows(query, rpc_timeout=_timeout()):
            if wf.id not in latest:  # newest run first
                latest[wf.id] = (wf.status, wf.start_time, wf.close_time)
        running: list[str] = []
        for idea_id, (status, _, closed) in latest.items():
            if status == WorkflowExecutionStatus.RUNNING:
                self._closed.pop(idea_id, None)
                running.append(idea_id)
            elif idea_id not in self._closed:
                p = await _closed_idea(self.client, idea_id, status)
                p.closed_at = closed
                self._closed[idea_id] = p
        live = await asyncio.gather(*(_running_idea(self.client, i, self.total_steps) for i in running))
        out = {p.idea_id: p for p in [*self._closed.values(), *live] if p.idea_id in latest}
        for idea_id, (_, started, _) in latest.items():
            p = out[idea_id]
            if p.started_at is None:
                p.started_at = started
            if not p.title or not p.origin:
                p.title, p.origin = await self._title(idea_id)
        return [out[k] for k in sorted(out)]
