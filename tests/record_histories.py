"""Re-record the workflow histories that tests/test_replay.py replays (run it after a deliberate, versioned
change of workflow code; see README "Changing workflow code"):

    .venv/bin/python -m tests.record_histories [SCENARIO ...]   # all scenarios, or only the ones named

Each scenario runs the real CampaignWorkflow and IdeaWorkflow on a real Temporal dev server (with our search
attributes), with the stub activities of tests/test_workflows_fast.py, and writes every run of the campaign
(the continue-as-new chain, and both executions of a restarted one) plus a few of its idea workflows to
tests/histories/<scenario>.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio.client import Client  # noqa: E402
from temporalio.common import SearchAttributePair, TypedSearchAttributes  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from ideaforge import names  # noqa: E402
from ideaforge.activities.campaign import load_saved_state  # noqa: E402
from ideaforge.models import CampaignConfig, ProviderConfig  # noqa: E402
from ideaforge.research_envs.registry import load_env  # noqa: E402
from ideaforge.store.artifacts import LocalStore  # noqa: E402
from ideaforge.workflows.campaign import CampaignWorkflow  # noqa: E402
from tests.test_workflows_fast import FIXTURES, Stubs, run_campaign  # noqa: E402

HISTORIES = REPO / "tests" / "histories"
LLM = ProviderConfig(kind="openai-compatible", model="stub", base_url="http://127.0.0.1:9/v1")


def scenarios() -> dict[str, tuple[CampaignConfig, dict]]:
    """name -> (campaign config, stub settings and what to do while it runs)."""
    base = dict(env="toy_quad", seed=1)
    return {
        "baseline": (CampaignConfig(name="hist-baseline", epochs=2, ideas_per_epoch=3, **base), {}),
        "sync_confirm": (
            CampaignConfig(
                name="hist-sync", epochs=2, ideas_per_epoch=3, schedule="sync", confirm_top_k=1, **base
            ),
            {},
        ),
        "llm_revisions": (
            CampaignConfig(name="hist-llm", epochs=2, ideas_per_epoch=3, ideator=LLM, **base),
            {"bad_titles": {"idea 1", "idea 4"}, "hopeless_titles": {"idea 2"}},
        ),
        "paused": (CampaignConfig(name="hist-paused", epochs=3, ideas_per_epoch=2, **base), {"pause": True}),
        "crash_resumed": (
            CampaignConfig(name="hist-crash", epochs=3, ideas_per_epoch=2, **base),
            {"crash": True},
        ),
        "preflight_revisions": (  # a crash in the CPU preflight revised once; one that crashes every time
            CampaignConfig(name="hist-preflight", epochs=2, ideas_per_epoch=3, implementer=LLM, **base),
            {"crashing_titles": {"idea 1"}, "always_crashing_titles": {"idea 2"}, "bad_titles": {"idea 3"}},
        ),
    }


async def pause_inject_resume(handle) -> None:  # noqa: ANN001
    await handle.signal(CampaignWorkflow.pause)
    await handle.signal(CampaignWorkflow.inject_idea, "A human idea: momentum 0.5")
    await asyncio.sleep(1.0)
    await handle.signal(CampaignWorkflow.resume)


def crash_then_resume(client: Client, store_dir: Path, attrs):  # noqa: ANN001, ANN201
    """Terminate the campaign once epoch 0 is saved, then restart it from the saved state (as ``resume``)."""

    async def during(handle):  # noqa: ANN001, ANN202
        store = LocalStore(store_dir)
        name = handle.id.removeprefix("campaign-")
        for _ in range(500):
            saved = load_saved_state(store, name)
            if saved and saved.state.next_epoch >= 1:
                break
            await asyncio.sleep(0.02)
        await handle.terminate("recording: simulated crash")
        saved = load_saved_state(store, name)
        saved.state.archive = []
        return await client.start_workflow(
            CampaignWorkflow.run,
            saved,
            id=handle.id,
            task_queue=names.ORCHESTRATOR_QUEUE,
            search_attributes=attrs,
        )

    return during


async def record(client: Client, name: str, cfg: CampaignConfig, opts: dict, tmp: Path) -> int:
    stubs = Stubs(spec=load_env("toy_quad", FIXTURES).spec, run_s=0.05)
    stubs.bad_titles = opts.get("bad_titles", set())
    stubs.hopeless_titles = opts.get("hopeless_titles", set())
    stubs.crashing_titles = opts.get("crashing_titles", set())
    stubs.always_crashing_titles = opts.get("always_crashing_titles", set())
    attrs = TypedSearchAttributes([SearchAttributePair(names.ENV, cfg.env)])
    during = None
    if opts.get("pause"):
        during = pause_inject_resume
    if opts.get("crash"):
        during = crash_then_resume(client, tmp / "store", attrs)
    await run_campaign(client, stubs, tmp, cfg, during=during, search_attributes=attrs)
    histories = []
    wid = cfg.workflow_id
    async for wf in client.list_workflows(f"WorkflowId = '{wid}' OR WorkflowId STARTS_WITH '{wid}/e000/i0'"):
        hist = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        histories.append({"workflow_id": wf.id, "history": json.loads(hist.to_json())})
    (HISTORIES / f"{name}.json").write_text(json.dumps(histories))
    return len(histories)


async def main() -> None:
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=shutil.which("temporal") or str(REPO / ".venv/bin/temporal"),
        search_attributes=list(names.SEARCH_ATTRIBUTES),
        data_converter=pydantic_data_converter,
        ui=False,
        dev_server_log_level="error",
    )
    try:
        wanted = set(sys.argv[1:]) or set(scenarios())
        unknown = wanted - set(scenarios())
        if unknown:
            raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {sorted(scenarios())}")
        for name, (cfg, opts) in scenarios().items():
            if name not in wanted:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                n = await record(env.client, name, cfg, opts, Path(tmp))
            print(f"{name}: {n} histories -> tests/histories/{name}.json")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
