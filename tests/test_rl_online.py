"""Online RL of the ideator: the reply reader, the CPU server, the durable update, and a campaign on Temporal.

The campaign test is the whole loop on real servers: a tiny Llama served by ``ideaforge.rl.serve`` (a real
HTTP server process), the Temporal dev server, MLflow, the env ``rl_words`` (the loss falls for each named
change; ideas run through implement -> package -> train -> evaluate in the sandbox), and the trainer worker as
a real OS process that is killed with SIGKILL in the middle of a GRPO update.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from ideaforge.config import Settings
from ideaforge.models import RLCampaignConfig, RLConfig, RLResumePoint, RLScored, RLStepRequest
from ideaforge.research_envs.registry import load_env
from ideaforge.rl.online import read_reply, resume_point, rl_messages, stored_step, tiny_corpus, train_step
from ideaforge.rl.trainer import latest_pointer
from ideaforge.store.artifacts import LocalStore, open_store

FIXTURE_ENVS = Path(__file__).resolve().parent / "fixtures" / "envs"


def test_read_reply_json_text_think_and_nothing():
    js = '{"ideas": [{"title": "RMSNorm", "description": "Replace LayerNorm with RMSNorm everywhere."}]}'
    assert read_reply(js, "json") == ("RMSNorm", "Replace LayerNorm with RMSNorm everywhere.")
    assert read_reply(f"<think>which one</think>```json\n{js}\n```", "json")[0] == "RMSNorm"
    assert read_reply("just prose, no JSON", "json") is None  # the asked format is part of the task
    assert read_reply('{"ideas": [{"title": "x", "description": "short"}]}', "json") is None  # invalid idea
    assert read_reply("<think>only thinking, cut off", "json") is None
    assert read_reply("Use EMA\nkeep an EMA of the weights", "text") == (
        "Use EMA",
        "Use EMA\nkeep an EMA of the weights",
    )
    assert read_reply("   ", "text") is None
    title, _ = read_reply("word " * 100, "text")
    assert len(title) <= 120 and title.endswith("…")


def test_rl_campaign_config_rejects_inconsistent_settings():
    ok = {"name": "r1", "env": "rl_words", "model_path": "/m", "rl": {"run_name": "r1"}}
    assert RLCampaignConfig.model_validate(ok).rl.run_name == "r1"
    with pytest.raises(ValueError, match="must be the campaign name"):
        RLCampaignConfig.model_validate({**ok, "rl": {"run_name": "other"}})
    with pytest.raises(ValueError, match="one prompt per step"):
        RLCampaignConfig.model_validate({**ok, "rl": {"run_name": "r1", "prompts_per_step": 2}})
    with pytest.raises(ValueError, match="lowercase"):
        RLCampaignConfig.model_validate({**ok, "name": "Bad Name", "rl": {"run_name": "Bad"}})
    with pytest.raises(ValueError):
        RLCampaignConfig.model_validate({**ok, "unknown_field": 1})


def test_rl_prompt_is_the_ideators_system_prompt_and_one_idea():
    env = load_env("rl_words", [FIXTURE_ENVS])
    msgs = rl_messages(env, "json")
    assert msgs[0]["role"] == "system" and "rl_words" in msgs[0]["content"] and "train.py" in msgs[0]["content"]
    assert "exactly ONE" in msgs[1]["content"] and "loss" in msgs[1]["content"]
    assert "plain text" in rl_messages(env, "text")[1]["content"]
    assert {"rmsnorm", "muon"} <= set(" ".join(tiny_corpus(env)).split())


# --------------------------------------------------------------------------- helpers


def _tiny_model(tmp: Path) -> Path:
    from ideaforge.rl.policy import save_tiny_model

    return save_tiny_model(tmp / "model", tiny_corpus(load_env("rl_words", [FIXTURE_ENVS])))


def _lora(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights for the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ideaforge.rl.policy import load_policy

    torch.manual_seed(seed)
    base, _ = load_policy(model_dir, [])
    cfg = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(out)
    return out


def _http(url: str, body: dict | None = None) -> tuple[int, dict | str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw, code = r.read().decode(), r.status
    except urllib.error.HTTPError as e:
        raw, code = e.read().decode(), e.code
    try:
        return code, json.loads(raw)
    except json.JSONDecodeError:
        return code, raw


def _http_raw(req: urllib.request.Request) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _spawn_server(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "ideaforge.rl.serve", "--model", str(model_dir), "--port", str(port)],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if _http(f"http://127.0.0.1:{port}/health")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"server not up: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _adapter_tensors(data: bytes) -> dict:
    from safetensors.torch import load

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return load(z.read("adapter_model.safetensors"))


# --------------------------------------------------------------------------- the server


@pytest.mark.slow
def test_cpu_server_serves_base_and_each_loaded_adapter(tmp_path: Path):
    """The server computes with exactly the adapter named in the request; vLLM's endpoints and errors."""
    import torch
    from peft import PeftModel

    from ideaforge.rl.policy import load_policy, prompt_ids
    from ideaforge.rl.serve import ChatRequest, PolicyServer, ServeError

    model_dir = _tiny_model(tmp_path)
    a, b = _lora(model_dir, tmp_path / "a", 1), _lora(model_dir, tmp_path / "b", 2)
    srv = PolicyServer(model_dir, max_loras=2)
    msgs = [{"role": "user", "content": "use rmsnorm and ema"}]
    ids = torch.tensor([prompt_ids(srv.tok, msgs)])

    def logits(name: str) -> torch.Tensor:
        with srv.lock, srv._select(name), torch.no_grad():
            return srv.model(input_ids=ids).logits

    base = logits("base")
    srv.load("a", str(a))
    srv.load("b", str(b))
    la, lb = logits("a"), logits("b")
    assert not torch.allclose(la, base) and not torch.allclose(la, lb)
    assert torch.allclose(logits("base"), base)  # the base name computes without any adapter
    ref_model, _ = load_policy(model_dir, [])
    ref = PeftModel.from_pretrained(ref_model, str(a)).eval()
    with torch.no_grad():
        assert torch.allclose(la, ref(input_ids=ids).logits, atol=1e-5)  # adapter a, as PEFT loads it
    out = srv.chat(ChatRequest(model="b", messages=msgs, max_tokens=5, n=2, seed=0))
    assert len(out["choices"]) == 2 and out["usage"]["completion_tokens"] > 0
    with pytest.raises(ServeError, match="already been loaded"):
        srv.load("a", str(a))
    with pytest.raises(ServeError, match="not a LoRA adapter"):
        srv.load("c", str(tmp_path))
    with pytest.raises(ServeError, match="does not exist"):
        srv.chat(ChatRequest(model="nope", messages=msgs))
    srv.load("c", str(a))  # a third adapter: the oldest (a) is dropped (max_loras=2)
    assert [m["id"] for m in srv.models()] == ["base", "b", "c"]

    # over HTTP: OpenAI-style errors, and the ideator's own client gets a reply from an adapter
    import threading

    from ideaforge.cli.procs import free_port
    from ideaforge.llm.client import LLMClient, LLMError
    from ideaforge.models import ProviderConfig
    from ideaforge.rl.serve import serve

    port = free_port()
    httpd = serve(srv, port=port)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        req = urllib.request.Request(f"{url}/chat/completions", data=b"{not json", method="POST")
        code, body = _http_raw(req)
        assert code == 400 and "not JSON" in body["error"]["message"]
        code, body = _http(f"{url}/chat/completions", {"model": "b", "messages": []})
        assert code == 400 and body["error"]["message"].startswith("messages")
        assert _http(f"{url}/nowhere")[0] == 404
        code, body = _http(f"{url}/load_lora_adapter", {"lora_name": "d"})
        assert code == 400 and "lora_path is required" in body["error"]["message"]
        provider = ProviderConfig(kind="openai-compatible", base_url=url, model="c", max_tokens=16)
        reply = asyncio.run(LLMClient(provider).complete("system", [{"role": "user", "content": "use ema"}]))
        assert reply.usage.output_tokens > 0 and reply.finish_reason in ("stop", "length")
        ghost = provider.model_copy(update={"model": "ghost"})
        with pytest.raises(LLMError, match="404"):
            asyncio.run(LLMClient(ghost).complete("system", [{"role": "user", "content": "x"}]))
    finally:
        httpd.shutdown()


# --------------------------------------------------------------------------- the durable update


@pytest.mark.slow
def test_update_is_idempotent_and_refuses_a_step_the_store_cannot_continue(tmp_path: Path):
    model_dir = _tiny_model(tmp_path)
    env = load_env("rl_words", [FIXTURE_ENVS])
    store = LocalStore(tmp_path / "store")
    cfg = RLConfig(run_name="idem", steps=3, num_generations=4, max_completion_length=8, learning_rate=0.05)
    scored = [
        RLScored(completion=c, reward=r, executed=r > 0)
        for c, r in [("use rmsnorm", 0.4), ("add muon and ema", 1.1), ("the a", -1.0), ("", -1.0)]
    ]
    req = RLStepRequest(rl=cfg, step=1, model_path=str(model_dir), messages=rl_messages(env, "text"), scored=scored)
    assert resume_point(store, "idem", 50) == RLResumePoint()  # nothing done yet
    first = train_step(req, tmp_path / "w", store)
    assert resume_point(store, "idem", 50) == RLResumePoint(last=first, history=[first.metrics])
    assert first.step == 1 and first.adapter_name == "idem-step0001" and first.resumed_from == 0
    assert first.metrics.n == 4 and first.metrics.execution_rate == 0.5 and first.metrics.max_reward == 1.1
    assert train_step(req, tmp_path / "w2", store) == first  # a retried activity gets the stored step
    assert latest_pointer(store, "idem").step == 1
    with pytest.raises(RuntimeError, match="last completed step is 1"):
        train_step(req.model_copy(update={"step": 3}), tmp_path / "w", store)
    with pytest.raises(ValueError, match="group of 4"):
        train_step(req.model_copy(update={"step": 2, "scored": scored[:3]}), tmp_path / "w", store)


# --------------------------------------------------------------------------- the campaign on Temporal


async def _wait_for_update_attempt(client, workflow_id: str, step_phase: str, timeout_s: float = 600) -> None:
    """Until the campaign is in ``step_phase`` and its rl_update activity has been picked up by a worker."""
    from temporalio.api.enums.v1 import PendingActivityState

    from ideaforge.workflows.rl_campaign import RLCampaignWorkflow

    handle = client.get_workflow_handle(workflow_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            st = await handle.query(RLCampaignWorkflow.status)
        except Exception:  # noqa: BLE001 - not started yet
            st = None
        if st is not None and st.phase == step_phase:
            desc = await handle.describe()
            for pa in desc.raw_description.pending_activities:
                if pa.activity_type.name == "rl_update" and pa.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                    return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{workflow_id} never reached {step_phase!r} with a started update")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rl_campaign_on_temporal_trains_serves_and_survives_a_killed_trainer(
    served_settings: Settings, temporal_env, tmp_path: Path
):
    """3 RL steps through Temporal: each step samples from the adapter of the step before, runs its ideas as
    IdeaWorkflows, updates on the rl queue and loads the new adapter into the server. The trainer worker is
    SIGKILLed during step 2's update; a new one resumes step 2 from step 1's checkpoint in the store."""
    from ideaforge.cli import rl as rlc
    from ideaforge.cli.procs import free_port
    from ideaforge.models import RLCampaignResult
    from tests.harness import running_worker, spawn_worker

    model_dir = _tiny_model(tmp_path)
    port = free_port()
    server = _spawn_server(model_dir, port, tmp_path / "server.log")
    name = "rlt"
    cfg = RLCampaignConfig(
        name=name,
        env="rl_words",
        model_path=str(model_dir),
        server_url=f"http://127.0.0.1:{port}/v1",
        reply_format="text",
        adapter_root=str(tmp_path / "adapters"),
        trainer_heartbeat_s=10,
        steps_per_run=2,  # step 3 runs after a continue-as-new
        rl=RLConfig(run_name=name, steps=3, num_generations=4, max_completion_length=12, learning_rate=0.05),
    )
    trainer = spawn_worker(tmp_path / "trainer1.log", queues="rl")
    trainer2 = None
    store = open_store(served_settings)
    client = temporal_env.client

    async def scenario() -> tuple[RLCampaignResult, RLCampaignResult]:
        nonlocal trainer2
        async with running_worker(client, served_settings, ["orchestrator", "cpu", "cpu-train", "preflight"], slots=2):
            handle, what = await rlc.start(client, cfg)
            assert what == "started"
            assert (await rlc.start(client, cfg))[1] == "attached"  # idempotent by name
            await _wait_for_update_attempt(client, handle.id, "step 2: GRPO update")
            os.killpg(trainer.pid, signal.SIGKILL)  # the trainer dies while it trains step 2
            trainer.wait(timeout=30)
            p = latest_pointer(store, name)
            assert p is not None and p.step == 1, "the kill must land before step 2 completed"
            trainer2 = spawn_worker(tmp_path / "trainer2.log", queues="rl")
            first = await asyncio.wait_for(handle.result(), 600)
            assert (await rlc.status(client, name))[0] == "completed"
            assert (await rlc.start(client, cfg))[1] == "finished"
            # started again under its name with a longer budget, the campaign goes on from step 3
            longer = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"steps": 4})})
            again, what = await rlc.start(client, longer)
            assert what == "resumed"
            return first, await asyncio.wait_for(again.result(), 600)

    try:
        res, res4 = asyncio.run(scenario())
    finally:
        for proc in (trainer, trainer2):
            if proc is not None:
                _stop(proc)
        server_models = _http(f"http://127.0.0.1:{port}/v1/models")
        _stop(server)

    assert res.steps_done == 3 and len(res.history) == 3 and res.baseline_metric == pytest.approx(3.5)
    # each step sampled from the adapter the step before produced (step 1 from the base model)
    assert res.sampled_from == ["base", "rlt-step0001", "rlt-step0002"] and res.adapter_name == "rlt-step0003"
    steps = [stored_step(store, name, k) for k in (1, 2, 3)]
    assert [s.resumed_from for s in steps] == [0, 1, 2]  # step 2 was redone from step 1's checkpoint
    assert latest_pointer(store, name).step == 4  # after the resumed run below
    # the adapter changes from step to step
    tensors = [_adapter_tensors(store.get_bytes(s.adapter)) for s in steps]
    for before, after in zip(tensors, tensors[1:], strict=False):
        assert any(not bool((before[k] == after[k]).all()) for k in before)
    # the server serves the newest adapter, unpacked from the store's step-3 zip
    assert server_models[0] == 200
    served = {m["id"]: m["root"] for m in server_models[1]["data"]}
    assert served["rlt-step0003"] == str((tmp_path / "adapters" / "rlt-step0003").resolve())
    from safetensors.torch import load_file

    on_disk = load_file(Path(served["rlt-step0003"]) / "adapter_model.safetensors")
    assert all(bool((on_disk[k] == tensors[2][k]).all()) for k in tensors[2])
    # ideas were executed through the normal machinery and rewarded against the baseline
    assert any(m.execution_rate > 0 for m in res.history) and res.best_reward > 0
    # the steps are in MLflow, one run for the campaign
    from mlflow import MlflowClient

    hist = MlflowClient(served_settings.mlflow_uri).get_metric_history(steps[2].mlflow_run_id, "rl/mean_reward")
    assert {m.step for m in hist} == {1, 2, 3, 4}
    # the campaign started again resumed from the store: only step 4 ran, from step 3's adapter
    assert res4.steps_done == 4 and res4.sampled_from == ["rlt-step0003"] and res4.adapter_name == "rlt-step0004"
    assert len(res4.history) == 4 and res4.history[:3] == res.history
    assert stored_step(store, name, 4).resumed_from == 3
    # the CLI reads the campaign's steps
    from tests.test_cli import cli, no_traceback

    p = cli("rl", "status", name)
    no_traceback(p)
    assert p.returncode == 0 and "completed" in p.stdout and "rlt-step0004" in p.stdout, p.stdout + p.stderr
    assert cli("rl", "status", "ghost").returncode == 4


@pytest.mark.slow  # CLI processes
def test_rl_cli_refuses_a_bad_config_and_says_when_temporal_is_down(settings: Settings, tmp_path: Path):
    from tests.test_cli import cli, no_traceback

    p = cli("rl", "start", "r1", "--env", "rl_words")
    no_traceback(p)
    assert p.returncode == 1 and "bad RL campaign config: model_path" in p.stderr
    p = cli("rl", "start", "r1", "--env", "rl_words", "--model", str(tmp_path), "--group", "1")
    no_traceback(p)
    assert p.returncode == 1 and "rl.num_generations" in p.stderr
    (tmp_path / "bad.toml").write_text("name = [")
    p = cli("rl", "start", "r1", "--config", str(tmp_path / "bad.toml"))
    assert p.returncode == 1 and "cannot read" in p.stderr
    p = cli("rl", "start", "r1", "--env", "rl_words", "--model", str(tmp_path))  # nothing listens
    no_traceback(p)
    assert p.returncode == 2 and "cannot reach Temporal" in p.stderr
    p = cli("rl", "tiny-model", str(tmp_path / "m"), "--env", "rl_words")
    assert p.returncode == 0 and (tmp_path / "m" / "config.json").is_file()
    p = cli("rl", "tiny-model", str(tmp_path / "m"), "--env", "rl_words")
    assert p.returncode == 1 and "already holds a model" in p.stderr


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_rl_start_names_the_queues_no_worker_serves(temporal_env) -> None:
    """An RL campaign needs the orchestrator, cpu and rl queues: `rl start` names each one no worker polls
    (in a namespace of its own, so no other test's workers count)."""
    import uuid

    from google.protobuf.duration_pb2 import Duration
    from temporalio import activity
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
    from temporalio.client import Client
    from temporalio.worker import Worker

    from ideaforge import names
    from ideaforge.cli.rl import queues_unserved

    @activity.defn(name="rl_noop")
    async def noop() -> None:
        return None

    async def go() -> None:
        ns = f"rlq-{uuid.uuid4().hex[:8]}"
        await temporal_env.client.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=ns, workflow_execution_retention_period=Duration(seconds=86400))
        )
        client = await Client.connect(temporal_env.ideaforge_address, namespace=ns)
        for _ in range(50):  # a new namespace takes a moment to be served
            try:
                unserved = await queues_unserved(client)
                break
            except Exception:  # noqa: BLE001 - namespace not found yet
                await asyncio.sleep(0.2)
        assert unserved == [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, names.RL_QUEUE]
        async with Worker(client, task_queue=names.RL_QUEUE, activities=[noop]):
            deadline = time.monotonic() + 20
            while names.RL_QUEUE in (unserved := await queues_unserved(client)) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        assert unserved == [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE]

    asyncio.run(go())
