"""The library side of an online RL campaign: sample a group from the served ideator, one GRPO update, reload.

- :func:`rl_messages` / :func:`read_reply`: the prompt of one RL step (the ideator's system prompt for the env,
  asking for ONE idea) and the idea read back from a reply.
- :func:`sample_group`: ``n`` replies from the OpenAI-compatible server (vLLM on a GPU, ``ideaforge.rl.serve``
  on a CPU) through the ideator's own client (:class:`ideaforge.llm.client.LLMClient`).
- :func:`train_step`: one GRPO update on the executed group with the same trainer as offline RL
  (:func:`ideaforge.rl.trainer.run_grpo`, replayed rollout). Idempotent: the step's result (adapter zip,
  metrics) is written to the store before the run's pointer moves, so a retried update returns it, and an
  update interrupted mid-way starts again from the last completed step's checkpoint.
- :func:`load_adapter`: unpack a step's adapter where the server reads it and ask the server to load it
  (vLLM's ``POST /v1/load_lora_adapter``; the CPU server implements the same endpoint).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ideaforge.llm.client import LLMClient
from ideaforge.llm.idea_reply import parse_ideas_lenient
from ideaforge.llm.ideator import system_prompt
from ideaforge.llm.prompts import render
from ideaforge.models import (
    ArtifactRef,
    RLResumePoint,
    RLSample,
    RLSampleRequest,
    RLSamples,
    RLStepRequest,
    RLStepResult,
    StepMetrics,
    Usage,
)
from ideaforge.names import rl_adapter_name
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.rl.metrics import split_reasoning
from ideaforge.rl.policy import completion_ids, load_policy, prompt_ids
from ideaforge.rl.trainer import Replay, latest_pointer, run_grpo, unzip_to, zip_dir
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
MAX_TITLE = 120


class RLStateError(RuntimeError):
    """The store and the campaign disagree about which step is done (e.g. the store was wiped)."""


FILLER_WORDS = "use add the a and with to of in change"


def tiny_corpus(env: ResearchEnv, extra: str = "") -> list[str]:
    """The tiny model's vocabulary for ``env``: its catalogue's change names and titles, filler words, ``extra``.

    The prompt's own words are left out on purpose: they map to ``<unk>``, and the tiny model's replies are
    drawn from a small vocabulary in which the env's changes are frequent (a CPU test of the RL loop)."""
    cat = env.spec.offline
    names_ = [v.name for v in cat.variants] + [v.title for v in cat.variants] + [k.name for k in cat.knobs]
    return [" ".join(names_), FILLER_WORDS, extra]


def rl_messages(env: ResearchEnv, reply_format: str) -> list[dict[str, str]]:
    """The prompt of an RL step: the ideator's system prompt for ``env`` and a request for one idea."""
    user = render(f"rl_idea_{reply_format}", metric=env.spec.metric)
    return [{"role": "system", "content": system_prompt(env)}, {"role": "user", "content": user}]


def read_reply(completion: str, reply_format: str) -> tuple[str, str] | None:
    """(title, description) of the idea in a reply, or None when it holds none in the asked format.

    json: the first valid idea of the ideator's ``{"ideas": [...]}`` answer; text: the first line is the title
    and the whole reply the description. A ``<think>`` block is never part of the idea."""
    _, reply = split_reasoning(completion)
    if not reply.strip():
        return None
    if reply_format == "json":
        drafts, _ = parse_ideas_lenient(reply)
        return (drafts[0].title, drafts[0].description) if drafts else None
    first = reply.strip().splitlines()[0].strip()
    title = first if len(first) <= MAX_TITLE else first[: MAX_TITLE - 1].rsplit(" ", 1)[0] + "…"
    return title, reply.strip()[:4000]


async def sample_group(req: RLSampleRequest, env: ResearchEnv) -> RLSamples:
    """``req.n`` replies to the step's prompt from the served model ``req.provider.model``."""
    messages = rl_messages(env, req.reply_format)
    client = LLMClient(req.provider)
    comps = await asyncio.gather(
        *(client.complete(messages[0]["content"], messages[1:], max_tokens=req.provider.max_tokens) for _ in range(req.n))
    )
    samples, usage = [], Usage()
    for c in comps:
        usage = usage + c.usage
        idea = read_reply(c.text, req.reply_format)
        samples.append(
            RLSample(
                completion=c.text,
                finished=c.finish_reason != "length",
                title=idea[0] if idea else None,
                text=idea[1] if idea else None,
            )
        )
    return RLSamples(step=req.step, messages=messages, samples=samples, model=client.model, usage=usage)


# --------------------------------------------------------------------------- the trainer side


def step_key(run_name: str, step: int) -> str:
    return f"rl/{run_name}/step-{step:06d}.json"


def stored_step(store: ObjectStore, run_name: str, step: int) -> RLStepResult | None:
    raw = store.get_named(step_key(run_name, step))
    return RLStepResult.model_validate_json(raw) if raw else None


def resume_point(store: ObjectStore, run_name: str, max_history: int) -> RLResumePoint:
    """The run's last completed step in the store (None if none) and the metrics of its last steps."""
    pointer = latest_pointer(store, run_name)
    if pointer is None:
        return RLResumePoint()
    steps = [stored_step(store, run_name, k) for k in range(max(1, pointer.step - max_history + 1), pointer.step + 1)]
    done = [s for s in steps if s is not None]
    if not done or done[-1].step != pointer.step:
        raise RLStateError(f"RL run {run_name}: the store's pointer is at step {pointer.step} without its result")
    return RLResumePoint(last=done[-1], history=[s.metrics for s in done])


def adapter_zip(checkpoint: Path) -> bytes:
    """The PEFT adapter files of a trainer checkpoint, zipped (what the server loads)."""
    files = [checkpoint / f for f in ADAPTER_FILES if (checkpoint / f).is_file()]
    if not any(f.name.startswith("adapter_model") for f in files):
        raise RLStateError(f"{checkpoint}: no adapter weights (is the run a LoRA run?)")
    tmp = checkpoint / "_adapter"
    tmp.mkdir(exist_ok=True)
    for f in files:
        shutil.copy2(f, tmp / f.name)
    try:
        return zip_dir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_step(
    req: RLStepRequest, work_dir: Path, store: ObjectStore, mlflow_uri: str | None = None
) -> RLStepResult:
    """Step ``req.step`` of the run: the stored result if it is done, else one GRPO update from step - 1."""
    cfg = req.rl
    if not cfg.lora:
        raise ValueError("an RL campaign trains LoRA adapters (rl.lora = true): the server loads adapters")
    if len(req.scored) != cfg.num_generations:
        raise ValueError(f"step {req.step}: {len(req.scored)} scored ideas for a group of {cfg.num_generations}")
    done = stored_step(store, cfg.run_name, req.step)
    if done is not None:
        log.info("RL %s step %d was already done: %s", cfg.run_name, req.step, done.adapter_name)
        return done
    pointer = latest_pointer(store, cfg.run_name)
    have = pointer.step if pointer else 0
    if have != req.step - 1:
        raise RLStateError(
            f"RL run {cfg.run_name}: the store's last completed step is {have}, so step {req.step} cannot be "
            "trained (was the artifact store changed under the campaign?)"
        )
    model, tok = load_policy(Path(req.model_path), [])
    pids = prompt_ids(tok, req.messages)
    replay = Replay(
        prompt_ids=pids,
        completion_ids=[completion_ids(tok, s.completion, s.finished, cfg.max_completion_length) for s in req.scored],
        completions=[s.completion for s in req.scored],
        rewards=[s.reward for s in req.scored],
        executed=[s.executed for s in req.scored],
    )
    results: dict[int, RLStepResult] = {}

    def on_checkpoint(step: int, ckpt: Path, metrics: StepMetrics | None, run_id: str | None) -> None:
        if metrics is None:
            raise RLStateError(f"RL {cfg.run_name}: step {step} finished without metrics")
        ref = store.put_bytes(adapter_zip(ckpt), kind="rl-adapter")
        res = RLStepResult(
            step=step,
            adapter=ref,
            adapter_name=rl_adapter_name(cfg.run_name, step),
            metrics=metrics,
            resumed_from=have,
            mlflow_run_id=run_id,
        )
        store.put_named(step_key(cfg.run_name, step), res.model_dump_json().encode())
        results[step] = res

    shutil.rmtree(work_dir, ignore_errors=True)
    run_grpo(
        model,
        tok,
        [req.messages[-1]["content"]],  # a label only: the replayed rollout carries the prompt's token ids
        scorer=None,  # type: ignore[arg-type] - the rewards come with the replay
        config=cfg,
        work_dir=work_dir,
        store=store,
        mlflow_uri=mlflow_uri,
        replay=replay,
        until_step=req.step,
        on_checkpoint=on_checkpoint,
    )
    del model
    _free_accelerator()
    if req.step not in results:
        raise RLStateError(f"RL {cfg.run_name}: the trainer stopped before step {req.step}")
    return results[req.step]


def _free_accelerator() -> None:
    """Give the GPU memory of a finished update back (the ideas train on the GPUs between updates)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the server side


def unpack_adapter(store: ObjectStore, adapter: ArtifactRef, dest: Path) -> Path:
    """The adapter zip unpacked into ``dest`` (idempotent: an existing complete copy is kept)."""
    if (dest / "adapter_config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    unzip_to(store.get_bytes(adapter), tmp)
    tmp.rename(dest)
    return dest


def load_adapter(server_url: str, name: str, path: Path, timeout_s: float = 300) -> str:
    """Ask the OpenAI-compatible server to load the LoRA adapter at ``path`` as model ``name``.

    vLLM (``--enable-lora``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) and ``ideaforge.rl.serve`` both take
    ``POST <base>/load_lora_adapter {"lora_name", "lora_path"}``. An adapter already loaded under that name
    counts as loaded (a retried activity). Raises RuntimeError with the server's message otherwise."""
    url = server_url.rstrip("/") + "/load_lora_adapter"
    body = json.dumps({"lora_name": name, "lora_path": str(path)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        msg = e.read().decode(errors="replace")
        if e.code == 400 and "already" in msg.lower():
            return msg
        raise RuntimeError(f"server {server_url} refused adapter {name}: HTTP {e.code}: {msg[:500]}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"server {server_url} unreachable while loading adapter {name}: {e}") from e
