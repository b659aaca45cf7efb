"""Client-side campaign operations (start, attach, status, pause/resume, cancel, leaderboard), no UI.

The CLI renders what these return; tests call them directly against a real Temporal server.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
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

RUNNING = WorkflowExecutionStatus.RUNNING
RESUMABLE = {
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TIMED_OUT,
}


class CampaignError(RuntimeError):
    """A campaign operation that cannot be done as asked; the message says why and what to do."""


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
        ).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def start(client: Client, config: CampaignConfig, state_loader=None) -> tuple[WorkflowHandle, str]:
    """Start a campaign, idempotently by name. Returns (handle, what happened: started|attached).

    A running campaign with the same config is attached to; with a different config the start is refused.
    A finished campaign is refused too (use a new name, or ``resume`` for a failed/terminated one).
    """
    desc = await describe(client, config.name)
    if desc is not None and desc.status == RUNNING:
        handle = client.get_workflow_handle_for(CampaignWorkflow.run, config.workflow_id)
        running_cfg = await _running_config(handle)
        if running_cfg is not None and running_cfg != config:
            raise CampaignError(
                f"campaign {config.name!r} is already running with a different config; "
                "attach with `ideaforge status`, or start under another --name"
            )
        return handle, "attached"
    if desc is not None:
        raise CampaignError(
            f"campaign {config.name!r} already exists ({desc.status.name.lower()}); "
            "use `ideaforge resume` to continue it or choose another --name"
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


async def _running_config(handle: WorkflowHandle) -> CampaignConfig | None:
    try:
        hist = await handle.fetch_history()
    except RPCError:
        return None
    for event in hist.events:
        attrs = event.workflow_execution_started_event_attributes
        if attrs and attrs.input and attrs.input.payloads:
            conv = handle._client.data_converter  # noqa: SLF001 - the client's own converter
            (inp,) = await conv.decode(attrs.input.payloads, [CampaignInput])
            return inp.config
    return None


async def resume(client: Client, name: str, saved: CampaignInput | None) -> tuple[WorkflowHandle, str]:
    """Resume a paused campaign (signal) or restart a failed/terminated/cancelled one from its saved state."""
    desc = await describe(client, name)
    if desc is None:
        raise CampaignError(f"no campaign named {name!r}")
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if desc.status == RUNNING:
        await handle.signal(CampaignWorkflow.resume)
        return handle, "unpaused"
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        raise CampaignError(f"campaign {name!r} already completed; nothing to resume")
    if desc.status not in RESUMABLE and desc.status != WorkflowExecutionStatus.CONTINUED_AS_NEW:
        raise CampaignError(f"campaign {name!r} is {desc.status.name.lower()}; cannot resume")
    if saved is None:
        raise CampaignError(
            f"campaign {name!r} stopped before its first epoch completed and has no saved state; start it again"
        )
    saved.state.paused = False
    handle = await client.start_workflow(
        CampaignWorkflow.run,
        saved,
        id=campaign_workflow_id(name),
        task_queue=names.ORCHESTRATOR_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        search_attributes=TypedSearchAttributes([SearchAttributePair(ENV, saved.config.env)]),
    )
    return handle, f"restarted from epoch {saved.state.next_epoch}"


async def status(client: Client, name: str) -> tuple[str, CampaignStatus | None, CampaignResult | None]:
    """(execution status, live status if running, result if completed)."""
    desc = await describe(client, name)
    if desc is None:
        raise CampaignError(f"no campaign named {name!r}")
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if desc.status == RUNNING:
        return "running", await handle.query(CampaignWorkflow.status), None
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        return "completed", None, await handle.result()
    return desc.status.name.lower(), None, None


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
    rows: dict[str, dict[str, Any]] = {}
    async for wf in client.list_workflows("WorkflowType='CampaignWorkflow'"):
        if wf.id in rows:
            continue  # newest run first
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
    return list(rows.values())


async def archive(client: Client, name: str, saved: CampaignInput | None) -> list[IdeaSummary]:
    """Every executed idea: from the running workflow, the result, or the last saved state."""
    desc = await describe(client, name)
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, campaign_workflow_id(name))
    if desc is not None and desc.status == RUNNING:
        return await handle.query(CampaignWorkflow.archive)
    if desc is not None and desc.status == WorkflowExecutionStatus.COMPLETED:
        return (await handle.result()).archive
    if saved is not None:
        return saved.state.archive
    raise CampaignError(f"no campaign named {name!r}")


def leaderboard(items: list[IdeaSummary], direction: str) -> list[IdeaSummary]:
    return ranked(items, direction)  # type: ignore[arg-type]
