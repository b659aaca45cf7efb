"""Client-side campaign operations (start, attach, status, pause/resume, cancel, leaderboard), no UI.

The CLI renders what these return; tests call them directly against a real Temporal server.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from ideaforge import names
from ideaforge.models import CampaignConfig, CampaignInput, CampaignResult, CampaignStatus, IdeaSummary
from ideaforge.names import BEST_METRIC, ENV, EPOCH, campaign_of_workflow_id, campaign_workflow_id
from ideaforge.ranking import ranked
from ideaforge.workflows.campaign import CampaignWorkflow

QUERY_TIMEOUT = timedelta(seconds=2)  # a query needs a worker: never wait longer than this for one
RPC_TIMEOUT = timedelta(seconds=5)
POLLER_FRESH_S = 90.0  # a worker polls at least every ~60 s; older than this, it is gone
RUNNING = WorkflowExecutionStatus.RUNNING
log = logging.getLogger(__name__)
RESUMABLE = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TIMED_OUT,
}


class CampaignError(RuntimeError):
    """A campaign operation that cannot be done as asked; the message says why and what to do."""


class CampaignNotFound(CampaignError):
    """No campaign of that name, in Temporal or in the saved state."""


def load_config(path: Path | None, overrides: dict[str, Any]) -> CampaignConfig:
    """Campaign config from a TOML file and/or flags (flags win). Raises CampaignError with every problem."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise CampaignError(f"config file not found: {path}") from e
        except tomllib.TOMLDecodeError as e:
            raise CampaignError(f"{path}: not valid TOML: {e}") from e
    for key, value in overrides.items():
        if value is None:
            continue
        target = raw
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    try:
        return CampaignConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"  {'.'.join(str(x) for x in err['loc']) or '(config)'}: {err['msg']}" for err in e.errors()
        ]
        raise CampaignError("invalid campaign config:\n" + "\n".join(lines)) from e


async def describe(client: Client, name: str):
    """The latest run's description, or None when the campaign was never started."""
    try:
        return await client.get_workflow_handle_for(
            CampaignWorkflow.run, campaign_workflow_id(name)
        ).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def start(client: Client, config: CampaignConfig, *, replace: bool = False) -> tuple[WorkflowHandle, str]:
    """Start a campaign, idempotently by name. Returns (handle, what happened: started|attached|finished).

    A running campaign with the same config is attached to; with a different config the start is refused.
    A completed campaign is not run again ("finished": show its result; ``delete`` it to start afresh);
    a failed/terminated/cancelled one is refused with the one command that continues it (``resume``).
    ``replace``: a closed campaign of that name is not looked at (it was just deleted, and the server may
    still be removing it): a new one starts.
    """
    desc = await describe(client, config.name)
    if replace and desc is not None and desc.status != RUNNING:
        desc = None
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, config.workflow_id)
    if desc is not None and desc.status == RUNNING:
        running = await _run_input(handle)
        if running is not None and running.config != config:
            raise CampaignError(
                f"campaign {config.name!r} is already running with a different config; "
                f"attach with `ideaforge status {config.name} --follow`, start under another --name, "
                "or replace it with --restart"
            )
        return handle, "attached"
    if desc is not None and desc.status == WorkflowExecutionStatus.COMPLETED:
        return handle, "finished"
    if desc is not None:
        view = CampaignView(name=config.name, state=desc.status.name.lower())
        raise CampaignError(
            f"campaign {config.name!r} exists ({view.state}): `ideaforge resume {config.name}` continues it, "
            "--restart starts it again from scratch"
        )
    handle = await client.start_workflow(
        CampaignWorkflow.run,
        CampaignInput(config=config),
        id=config.workflow_id,
        task_queue=names.ORCHESTRATOR_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes([SearchAttributePair(ENV, config.env)]),
    )
    return handle, "started"


async def _run_input(handle: WorkflowHandle) -> CampaignInput | None:
    """The input of the latest run (config and the state it started from), read from its history."""
    try:
        hist = await handle.fetch_history(rpc_timeout=RPC_TIMEOUT)
    except RPCError:
        return None
    for event in hist.events:
        attrs = event.workflow_execution_started_event_attributes
        if attrs and attrs.input and attrs.input.payloads:
            conv = handle._client.data_converter  # noqa: SLF001 - the client's own converter
            (inp,) = await conv.decode(attrs.input.payloads, [CampaignInput])
            return inp
    return None


async def resume(client: Client, name: str, saved: CampaignInput | None) -> tuple[WorkflowHandle, str]:
    """Resume a paused campaign (signal) or restart a failed/terminated/cancelled one from its saved state;
    with nothing saved yet, from the input of its last run (its first epoch, for one that failed early)."""
    desc = await describe(client, name)
    if desc is None:
        raise CampaignNotFound(f"no campaign named {name!r}; `ideaforge list` shows the campaigns")
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if desc.status == RUNNING:
        await handle.signal(CampaignWorkflow.resume)
        return handle, "unpaused"
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        raise CampaignError(
            f"campaign {name!r} already completed; `ideaforge start --name {name} --restart` runs it again"
        )
    inp = saved or await _run_input(handle)
    if inp is None:
        raise CampaignError(f"campaign {name!r} has no saved state and no readable input; delete it and start again")
    inp.state.paused = False
    handle = await client.start_workflow(
        CampaignWorkflow.run,
        inp,
        id=campaign_workflow_id(name),
        task_queue=names.ORCHESTRATOR_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(ENV, inp.config.env)]),
    )
    if saved is None and inp.state.next_epoch == 0:
        return handle, "restarted from the beginning (it stopped before its first epoch was saved)"
    done = inp.state.next_epoch
    return handle, f"restarted after epoch {done} of {inp.config.epochs} (runs epoch {done + 1} next)"


async def delete(client: Client, name: str, wait_s: float = 15.0) -> int:
    """Terminate (if running) and delete every Temporal execution of the campaign and its ideas.
    Returns how many executions were deleted. Saved state and MLflow are the caller's (see ``forget``)."""
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest

    wid = campaign_workflow_id(name)
    runs: list[tuple[str, str]] = []
    for q in (f"WorkflowId='{wid}'", f"ParentWorkflowId='{wid}'"):
        async for wf in client.list_workflows(q, rpc_timeout=RPC_TIMEOUT):
            runs.append((wf.id, wf.run_id))
    for wf_id, run_id in runs:
        try:
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=wf_id, run_id=run_id),
                ),
                timeout=RPC_TIMEOUT,
            )
        except RPCError as e:
            if e.status != RPCStatusCode.NOT_FOUND:
                raise
    deadline = asyncio.get_running_loop().time() + wait_s
    while (desc := await describe(client, name)) is not None:  # deletion is asynchronous on the server
        if asyncio.get_running_loop().time() > deadline:
            if desc.status == RUNNING:
                raise CampaignError(f"campaign {name!r} is still running; try the delete again in a few seconds")
            log.info("deletion of %s still in progress on the server", name)
            break  # stopped for good; the server finishes deleting it (a restart may reuse the name now)
        await asyncio.sleep(0.2)
    return len(runs)


class CampaignView(BaseModel):
    """What is known about one campaign, and where it came from.

    ``live`` is the workflow's own answer to the status query (a worker answered); when no worker answers
    within ``QUERY_TIMEOUT``, ``worker_answered`` is False and the CLI shows ``saved`` (the state saved in the
    artifact store) and the search attributes instead."""

    name: str
    state: str  # running | completed | failed | terminated | canceled | timed_out | unknown
    config: CampaignConfig | None = None
    live: CampaignStatus | None = None
    result: CampaignResult | None = None
    saved: CampaignInput | None = None
    worker_answered: bool = False
    worker_silent: bool = False  # running and no worker answers: what the CLI warns about
    started_at: datetime | None = None  # the campaign's first run, not the latest continue-as-new
    epoch: int | None = None  # search attribute: last completed epoch (0-based)
    best_metric: float | None = None  # search attribute

    model_config = {"arbitrary_types_allowed": True}


async def query_status(handle: WorkflowHandle) -> CampaignStatus | None:
    """The workflow's live status, or None when no worker answers within ``QUERY_TIMEOUT``.

    Fields a newer worker adds are ignored, so an older CLI still reads it."""
    try:
        raw = await handle.query("status", result_type=dict, rpc_timeout=QUERY_TIMEOUT)
    except (RPCError, TimeoutError, WorkflowQueryFailedError) as e:
        log.info("status query of %s unanswered: %s", handle.id, e)
        return None
    known = {k: v for k, v in raw.items() if k in CampaignStatus.model_fields}
    try:
        return CampaignStatus.model_validate(known)
    except ValidationError as e:
        log.warning("unreadable status from %s: %s", handle.id, e)
        return None


async def first_start(client: Client, name: str) -> datetime | None:
    """When the campaign started: the oldest run of its workflow id (continue-as-new makes one per epoch)."""
    times = [
        wf.start_time
        async for wf in client.list_workflows(
            f"WorkflowId='{campaign_workflow_id(name)}'", rpc_timeout=RPC_TIMEOUT
        )
    ]
    return min(times) if times else None


async def status(client: Client, name: str, saved: CampaignInput | None = None) -> CampaignView:
    """The campaign's view: live when a worker answers, else the result or the saved state.

    Raises CampaignError when Temporal knows no campaign of that name and nothing is saved."""
    desc = await describe(client, name)
    if desc is None:
        if saved is None:
            raise CampaignNotFound(f"no campaign named {name!r}; `ideaforge list` shows the campaigns")
        return CampaignView(name=name, state="unknown", saved=saved, config=saved.config)
    sa = desc.typed_search_attributes
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    running = desc.status == RUNNING
    completed = desc.status == WorkflowExecutionStatus.COMPLETED
    started, inp, live, result = await asyncio.gather(
        first_start(client, name),
        _run_input(handle) if saved is None else _none(),
        query_status(handle) if running else _none(),
        handle.result(rpc_timeout=RPC_TIMEOUT) if completed else _none(),
    )  # concurrently: the whole view takes as long as the slowest call (the query: at most QUERY_TIMEOUT)
    return CampaignView(
        name=name,
        state=desc.status.name.lower() if desc.status else "unknown",
        config=saved.config if saved is not None else (inp.config if inp else None),
        live=live,
        result=result,
        saved=saved,
        worker_answered=live is not None,
        worker_silent=running and live is None,
        started_at=started or desc.start_time,
        epoch=sa.get(EPOCH),
        best_metric=sa.get(BEST_METRIC),
    )


async def _none() -> None:
    return None


def next_step(view: CampaignView) -> str:
    """The one command that moves a stopped campaign on (no loops: each state has exactly one)."""
    if view.state == "running":
        return ""
    if view.state == "completed":
        return f"`ideaforge start --name {view.name} --restart` runs it again from scratch"
    if view.saved is not None:
        return f"`ideaforge resume {view.name}` continues it from epoch {view.saved.state.next_epoch}"
    return f"`ideaforge resume {view.name}` starts it again from the beginning (nothing was saved yet)"


async def workers_polling(client: Client, queue: str) -> list[str]:
    """Identities of the workers that polled ``queue`` recently (workflow and activity pollers)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    now = datetime.now(UTC)
    seen: set[str] = set()
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        resp = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind
            ),
            timeout=RPC_TIMEOUT,
        )
        for p in resp.pollers:
            if (now - p.last_access_time.ToDatetime(tzinfo=UTC)).total_seconds() < POLLER_FRESH_S:
                seen.add(p.identity)
    return sorted(seen)


async def signal(client: Client, name: str, what: str, arg: str | None = None) -> None:
    desc = await describe(client, name)
    if desc is None or desc.status != RUNNING:
        raise CampaignError(f"campaign {name!r} is not running")
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if what == "pause":
        await handle.signal(CampaignWorkflow.pause)
    elif what == "resume":
        await handle.signal(CampaignWorkflow.resume)
    elif what == "inject":
        await handle.signal(CampaignWorkflow.inject_idea, arg or "")
    else:
        raise CampaignError(f"unknown signal {what!r}")


async def cancel(client: Client, name: str) -> None:
    desc = await describe(client, name)
    if desc is None or desc.status != RUNNING:
        raise CampaignError(f"campaign {name!r} is not running")
    await client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name)).cancel()


async def list_campaigns(client: Client) -> list[dict[str, Any]]:
    """One row per campaign: the latest run's status and search attributes, the first run's start time."""
    rows: dict[str, dict[str, Any]] = {}
    async for wf in client.list_workflows("WorkflowType='CampaignWorkflow'", rpc_timeout=RPC_TIMEOUT):
        if wf.id in rows:  # newest run first: an older run only moves the start back
            if wf.start_time and (rows[wf.id]["started"] is None or wf.start_time < rows[wf.id]["started"]):
                rows[wf.id]["started"] = wf.start_time
            continue
        sa = wf.typed_search_attributes
        try:
            name = campaign_of_workflow_id(wf.id)
        except ValueError:
            name = wf.id  # started by hand under another id: still listed, by its workflow id
        rows[wf.id] = {
            "name": name,
            "status": wf.status.name.lower() if wf.status else "?",
            "env": sa.get(ENV),
            "epoch": sa.get(EPOCH),
            "best_metric": sa.get(BEST_METRIC),
            "started": wf.start_time,
        }
    return sorted(rows.values(), key=lambda r: r["started"] or datetime.min.replace(tzinfo=UTC), reverse=True)


async def archive(client: Client, name: str, saved: CampaignInput | None) -> tuple[list[IdeaSummary], bool]:
    """Every executed idea, and whether that is live: from the running workflow (if a worker answers within
    ``QUERY_TIMEOUT``), the result, or else the last saved state."""
    desc = await describe(client, name)
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if desc is not None and desc.status == RUNNING:
        try:
            raw = await handle.query("archive", result_type=list, rpc_timeout=QUERY_TIMEOUT)
            return [IdeaSummary.model_validate(x) for x in raw], True
        except (RPCError, TimeoutError, WorkflowQueryFailedError, ValidationError) as e:
            log.info("archive query of %s unanswered: %s", name, e)
            if saved is None:
                return [], False
            return saved.state.archive, False
    if desc is not None and desc.status == WorkflowExecutionStatus.COMPLETED and saved is None:
        return (await handle.result(rpc_timeout=RPC_TIMEOUT)).archive, True  # the bounded population
    if saved is not None:
        return saved.state.archive, True
    if desc is not None:
        return [], True
    raise CampaignNotFound(f"no campaign named {name!r}; `ideaforge list` shows the campaigns")


def leaderboard(items: list[IdeaSummary], direction: str) -> list[IdeaSummary]:
    return ranked(items, direction)  # type: ignore[arg-type]
