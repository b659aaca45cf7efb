"""GRPO of the ideator with LoRA (TRL ``GRPOTrainer`` + PEFT): per-step collapse metrics, MLflow, resumable.

Every completed step: the group's collapse metrics join the history (and MLflow, one run per RL campaign,
metrics by step); the trainer checkpoint (adapter, optimiser, scheduler, RNG, trainer state, history and the
novelty archive) is zipped into the artifact store (content-addressed) and the named pointer
``rl/<run_name>/latest.json`` moves to it. A run started again with the same ``run_name`` resumes from the
last completed step.

Two ways to get a step's ideas: TRL generates them from the policy and ``scorer`` rewards them (offline RL
and the CPU benchmark), or ``replay`` gives them already sampled and executed (the online RL campaign: the
served ideator sampled them, the normal machinery executed them); they then enter TRL through its
``rollout_func`` hook and their execution rewards through the reward function, and TRL computes the GRPO
loss, the update and the checkpoint as usual. ``until_step`` stops after that step (one durable update per
call) with the schedule of the whole run.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ideaforge.models import ArtifactRef, RLConfig
from ideaforge.rl.metrics import StepMetrics, collapse_metrics
from ideaforge.rl.scoring import NoveltyBonus, Scorer
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

STATE_FILE = "ideaforge_rl_state.json"


class RLPointer(BaseModel):
    """The named pointer to a run's last completed step."""

    run_name: str
    step: int
    checkpoint: ArtifactRef
    mlflow_run_id: str | None = None


class RLResult(BaseModel):
    run_name: str
    steps_done: int
    resumed_from: int | None
    history: list[StepMetrics]
    adapter_dir: str
    mlflow_run_id: str | None = None


class StopAfterStep(RuntimeError):
    """Raised by a test hook to simulate a crash in the middle of a step."""


def as_text(x: Any) -> str:
    """A TRL prompt/completion as text: plain strings stay, conversations give their last message's content."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


def best_of_group(rewards: Sequence[float], group: int) -> list[float]:
    """1.0 for each idea that ties its group's best reward, 0.0 for the others (groups are consecutive runs).

    GRPO then pushes only towards the best idea of each group instead of towards everything above the group
    mean, which favours the max reward over the mean.
    """
    if group < 1 or len(rewards) % group:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group}")
    out: list[float] = []
    for i in range(0, len(rewards), group):
        chunk = rewards[i : i + group]
        top = max(chunk)
        out += [1.0 if r >= top - 1e-12 else 0.0 for r in chunk]
    return out


def pointer_key(run_name: str) -> str:
    return f"rl/{run_name}/latest.json"


def zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(path.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(path).as_posix())
    return buf.getvalue()


def unzip_to(data: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise ValueError(f"unsafe path in checkpoint zip: {name}")
        z.extractall(dest)
    return dest


class Replay(BaseModel):
    """A step's group, sampled and executed elsewhere: one prompt (token ids) and its scored completions."""

    prompt_ids: list[int]
    completion_ids: list[list[int]]
    completions: list[str]
    rewards: list[float]
    executed: list[bool]


def latest_pointer(store: ObjectStore, run_name: str) -> RLPointer | None:
    raw = store.get_named(pointer_key(run_name))
    return RLPointer.model_validate_json(raw) if raw else None


class _Recorder:
    """Collects what the reward functions saw during a step; the callback turns it into metrics."""

    def __init__(self) -> None:
        self.completions: list[str] = []
        self.rewards: list[float] = []
        self.executed: list[bool] = []

    def pop(self) -> tuple[list[str], list[float], list[bool]]:
        out = (self.completions, self.rewards, self.executed)
        self.completions, self.rewards, self.executed = [], [], []
        return out


def _mlflow_run(uri: str | None, run_name: str, run_id: str | None, config: RLConfig):
    if not uri:
        return None, None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if run_id is None:
        exp = client.get_experiment_by_name("ideaforge-rl")
        exp_id = exp.experiment_id if exp else client.create_experiment("ideaforge-rl")
        run = client.create_run(exp_id, run_name=run_name, tags={"ideaforge.kind": "rl"})
        run_id = run.info.run_id
        for k, v in config.model_dump().items():
            client.log_param(run_id, k, str(v))
    return client, run_id


def _replay_rollout(replay: Replay):
    """A TRL ``rollout_func`` that returns the given group instead of generating (one entry per prompt row)."""

    def rollout(prompts: list, trainer: Any) -> dict:
        n = len(replay.completion_ids)
        if len(prompts) != n:
            raise ValueError(f"the trainer asks for {len(prompts)} completions, the replayed group has {n}")
        return {
            "prompt_ids": [list(replay.prompt_ids) for _ in range(n)],
            "completion_ids": [list(c) for c in replay.completion_ids],
            "logprobs": None,
            "replay_reward": list(replay.rewards),
            "replay_executed": list(replay.executed),
            "replay_text": list(replay.completions),
        }

    return rollout


def run_grpo(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    scorer: Scorer,
    config: RLConfig,
    work_dir: Path,
    store: ObjectStore | None = None,
    mlflow_uri: str | None = None,
    novelty_seed: Sequence[str] = (),
    crash_at_step: int | None = None,
    replay: Replay | None = None,
    until_step: int | None = None,
    on_checkpoint: Any = None,
) -> RLResult:
    """Train ``model`` with GRPO on ``prompts`` rewarded by ``scorer``; resume from the store if a run exists.

    ``replay``: the step's completions and rewards are given (``scorer`` is not called). ``until_step``:
    stop once that global step is done. ``on_checkpoint(step, checkpoint_dir, metrics, mlflow_run_id)`` runs after a
    step's checkpoint is written and before the store's pointer moves to it.
    ``crash_at_step`` (tests): raise :class:`StopAfterStep` while generating that step (1-based), i.e. after
    step ``crash_at_step - 1`` completed and before step ``crash_at_step`` does.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    if not prompts:
        raise ValueError("no prompts to train on")
    work_dir = Path(work_dir)
    out_dir = work_dir / "trainer"
    history: list[StepMetrics] = []
    novelty = NoveltyBonus(novelty_seed) if config.novelty_weight > 0 else None
    resume_dir: str | None = None
    pointer = latest_pointer(store, config.run_name) if store else None
    mlflow_run_id = pointer.mlflow_run_id if pointer else None
    if pointer:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        ckpt = unzip_to(store.get_bytes(pointer.checkpoint), out_dir / f"checkpoint-{pointer.step}")
        state = json.loads((ckpt / STATE_FILE).read_text())
        history = [StepMetrics.model_validate(h) for h in state["history"]]
        if novelty is not None:
            for t in state.get("novelty_archive", []):
                novelty.add(t)
        resume_dir = str(ckpt)
        log.info("RL run %s resumes from step %d", config.run_name, pointer.step)
    client, mlflow_run_id = _mlflow_run(mlflow_uri, config.run_name, mlflow_run_id, config)

    rec = _Recorder()

    def execution_reward(prompts: list, completions: list, **kw: Any) -> list[float]:
        prompts, completions = [as_text(p) for p in prompts], [as_text(c) for c in completions]
        if crash_at_step is not None and len(history) + 1 >= crash_at_step:
            raise StopAfterStep(f"simulated crash during step {len(history) + 1}")
        if "replay_reward" in kw:  # executed elsewhere: the rewards came with the rollout
            rewards = [float(r) for r in kw["replay_reward"]]
            rec.completions += list(kw["replay_text"])
            rec.executed += [bool(e) for e in kw["replay_executed"]]
        else:
            scored = [scorer.score(p, c) for p, c in zip(prompts, completions, strict=True)]
            rewards = [s.reward for s in scored]
            rec.completions += list(completions)
            rec.executed += [s.executed for s in scored]
        rec.rewards += rewards
        return best_of_group(rewards, config.num_generations) if config.group_reward == "best" else rewards

    def novelty_bonus(prompts: list, completions: list, **_: Any) -> list[float]:
        return (
            novelty.bonus([as_text(c) for c in completions])
            if novelty is not None
            else [0.0] * len(completions)
        )

    class Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if until_step is not None and state.global_step >= until_step:
                control.should_training_stop = True
            completions, rewards, executed = rec.pop()
            if not completions:
                return
            m = collapse_metrics(completions, rewards, executed)
            history.append(m)
            log.info("rl step %d: %s", state.global_step, m.model_dump())
            if client:
                for k, v in m.model_dump().items():
                    client.log_metric(mlflow_run_id, f"rl/{k}", float(v), step=state.global_step)

        def on_save(self, args, state, control, **kw):
            if store is None:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / STATE_FILE).write_text(
                json.dumps(
                    {
                        "history": [h.model_dump() for h in history],
                        "novelty_archive": novelty.archive if novelty else [],
                    }
                )
            )
            if on_checkpoint is not None:
                on_checkpoint(state.global_step, ckpt, history[-1] if history else None, mlflow_run_id)
            ref = store.put_bytes(zip_dir(ckpt), kind="rl-checkpoint")
            p = RLPointer(
                run_name=config.run_name, step=state.global_step, checkpoint=ref, mlflow_run_id=mlflow_run_id
            )
            store.put_named(pointer_key(config.run_name), p.model_dump_json().encode())
            shutil.rmtree(ckpt, ignore_errors=True)  # the store holds it now

    import torch

    args = GRPOConfig(
        output_dir=str(out_dir),
        max_steps=config.steps,
        per_device_train_batch_size=config.num_generations * config.prompts_per_step,
        gradient_accumulation_steps=1,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        learning_rate=config.learning_rate,
        temperature=config.temperature,
        beta=config.beta,
        reward_weights=[1.0, config.novelty_weight],
        logging_steps=1,
        save_strategy="steps" if store else "no",
        save_steps=1,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        data_seed=config.seed,
        disable_tqdm=True,
    )
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    reps = max(1, (config.steps * config.prompts_per_step) // len(prompts) + 1)
    dataset = Dataset.from_dict({"prompt": list(prompts) * reps})
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[execution_reward, novelty_bonus],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Progress()],
        peft_config=peft_config,
        rollout_func=_replay_rollout(replay) if replay is not None else None,
    )
    trainer.train(resume_from_checkpoint=resume_dir)
    adapter_dir = work_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    if store is not None:
        ref = store.put_bytes(zip_dir(adapter_dir), kind="rl-adapter")
        log.info("RL run %s: final adapter %s", config.run_name, ref.uri)
    if client and len(history) >= config.steps:
        client.set_terminated(mlflow_run_id)
    return RLResult(
        run_name=config.run_name,
        steps_done=len(history),
        resumed_from=pointer.step if pointer else None,
        history=history,
        adapter_dir=str(adapter_dir),
        mlflow_run_id=mlflow_run_id,
    )
