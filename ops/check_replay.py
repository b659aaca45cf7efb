"""Before rolling out a new ideaforge version: replay live workflow histories against THIS checkout's workflows.

    python ops/check_replay.py                       # every running campaign/idea workflow (the default)
    python ops/check_replay.py --query "WorkflowType = 'CampaignWorkflow'" --limit 200
    docker compose run --rm -T orchestrator python - < ops/check_replay.py   # with the new image

Reads the Temporal address from ``IDEAFORGE_TEMPORAL_ADDRESS``/``IDEAFORGE_TEMPORAL_NAMESPACE``. A history that
fails to replay means the new workflow code would break the running workflow it belongs to: gate the change with
``workflow.patched(...)`` (see ops/DEPLOY.md, "Upgrade") or let those workflows finish on the old workers first.
Prints one line per failing workflow and a summary; exits 1 on any nondeterminism, 2 when nothing matched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from ideaforge.config import Settings
from ideaforge.workflows.campaign import CampaignWorkflow
from ideaforge.workflows.idea import IdeaWorkflow

DEFAULT_QUERY = "ExecutionStatus = 'Running'"


async def check(
    settings: Settings, query: str, limit: int, workflows: list[type] | None = None
) -> tuple[int, dict[str, str]]:
    """(histories replayed, {run id: failure}) for up to ``limit`` workflows matching ``query``, replayed against
    ``workflows`` (default: this checkout's CampaignWorkflow and IdeaWorkflow)."""
    workflows = workflows or [CampaignWorkflow, IdeaWorkflow]
    client = await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, data_converter=pydantic_data_converter
    )
    known = {"CampaignWorkflow", "IdeaWorkflow"}
    histories = []
    async for wf in client.list_workflows(query, limit=limit):
        if wf.workflow_type in known:
            histories.append(await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history())
    replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter)

    async def each():
        for h in histories:
            yield h

    results = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    return len(histories), {f"{k}": f"{type(e).__name__}: {e}" for k, e in results.replay_failures.items()}


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--query", default=DEFAULT_QUERY, help=f"visibility query (default: {DEFAULT_QUERY!r})")
    p.add_argument("--limit", type=int, default=1000, help="at most this many workflows")
    args = p.parse_args(argv)
    n, failures = asyncio.run(check(Settings.from_env(), args.query, args.limit))
    for run_id, err in sorted(failures.items()):
        print(f"NONDETERMINISTIC {run_id}: {err[:500]}")
    print(f"replay: {n - len(failures)}/{n} histories replay on this code")
    if n == 0:
        return 2
    return 1 if failures else 0


if __name__ == "__main__":
    code = run(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # temporalio can crash at interpreter exit in short processes (sdk-python#300)
