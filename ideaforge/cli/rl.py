"""RL campaign control over Temporal: build the config, start (idempotently by name), read the status."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from ideaforge import names
from ideaforge.cli.campaigns import CampaignError, CampaignNotFound
from ideaforge.models import RLCampaignConfig, RLCampaignInput, RLCampaignResult, RLCampaignStatus
from ideaforge.workflows.rl_campaign import RLCampaignWorkflow


def load_config(path: Path | None, overrides: dict[str, Any]) -> RLCampaignConfig:
    """An RL campaign config from a TOML file (optional) and flags (``rl.x`` keys go to the RL section)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise CampaignError(f"cannot read {path}: {e}") from e
    data.setdefault("rl", {})
    for key, value in overrides.items():
        if value is None:
            continue
        if key.startswith("rl."):
            data["rl"][key[3:]] = value
        else:
            data[key] = value
    if "name" in data:
        data["rl"].setdefault("run_name", data["name"])
    try:
        return RLCampaignConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise CampaignError(f"bad RL campaign config: {where}: {first['msg']}") from e


async def _describe(client: Client, name: str):
    try:
        return await client.get_workflow_handle(names.rl_workflow_id(name)).describe()
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def start(client: Client, config: RLCampaignConfig) -> tuple[WorkflowHandle, str]:
    """Start an RL campaign by name: a running one is attached to, a completed one is "finished" unless
    ``config.rl.steps`` asks for more; one that failed, was terminated or asks for more steps starts again and
    resumes from the last step its trainer completed (the store)."""
    desc = await _describe(client, config.name)
    wid = names.rl_workflow_id(config.name)
    handle = client.get_workflow_handle_for(RLCampaignWorkflow.run, wid)
    if desc is not None and desc.status == WorkflowExecutionStatus.RUNNING:
        return handle, "attached"
    if desc is not None and desc.status == WorkflowExecutionStatus.COMPLETED:
        done = await client.get_workflow_handle(wid, result_type=RLCampaignResult).result()
        if done.steps_done >= config.rl.steps:
            return handle, "finished"
    what = "started" if desc is None else "resumed"
    handle = await client.start_workflow(
        RLCampaignWorkflow.run,
        RLCampaignInput(config=config),
        id=wid,
        task_queue=names.ORCHESTRATOR_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return handle, what


async def status(client: Client, name: str) -> tuple[str, RLCampaignStatus | RLCampaignResult | None]:
    """(workflow state, the live status or the final result). CampaignNotFound when there is none."""
    desc = await _describe(client, name)
    if desc is None:
        raise CampaignNotFound(f"no RL campaign named {name!r} (workflow {names.rl_workflow_id(name)})")
    handle = client.get_workflow_handle(names.rl_workflow_id(name), result_type=RLCampaignResult)
    state = desc.status.name.lower() if desc.status else "unknown"
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return state, await handle.query(RLCampaignWorkflow.status)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        return state, await handle.result()
    return state, None


async def queues_unserved(client: Client) -> list[str]:
    """The queues an RL campaign needs (its workflow, sampling, the trainer) that no worker polled recently."""
    from ideaforge.cli.campaigns import workers_polling

    needed = (names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, names.RL_QUEUE)
    return [q for q in needed if not await workers_polling(client, q)]
