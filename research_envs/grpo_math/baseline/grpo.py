"""GRPO of Qwen2.5-Math-1.5B on MATH with the r1_zero reward, as in the paper. Editable: the whole recipe.

Each GRPO step samples ROLLOUT_PROMPTS training problems x GROUP_SIZE responses (vLLM on the GPU), rewards
them with the protected r1_zero reward, normalises rewards within each group, and takes one pass of clipped
policy-gradient updates (GRPO-Clip, token-level mean per micro-batch, MICRO_BATCH x GRAD_ACCUM responses per
optimizer step). Float32 master weights, bf16 autocast on the GPU. Stops before IDEAFORGE_DEADLINE (set by
launch.py) and saves the policy to $IDEAFORGE_OUT/policy/ (safetensors) for the evaluator.
Progress: ``IDEAFORGE_PROGRESS {...}`` lines.
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext

import torch

import problems
from answer import r1_zero_reward
from engine import HFEngine, Sampling, VLLMEngine, format_prompt, load_policy, load_tokenizer, token_logprobs, tokenize_pairs

LEARNING_RATE = 1e-5
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.0
ROLLOUT_PROMPTS = 128
GROUP_SIZE = 8
TEMPERATURE = 1.0
TOP_P = 1.0
MICRO_BATCH = 2
GRAD_ACCUM = 32
TRAIN_STEPS_PER_ROLLOUT = 1
CLIP_RANGE = 0.2
ADVANTAGE_EPS = 1e-6
NORMALIZE_BY_STD = True
GRAD_CLIP = 0.0
VLLM_GPU_MEMORY = 0.3
SAVE_MARGIN_S = 120.0
if os.environ.get("IDEAFORGE_TINY") == "1":  # smoke profile: the same code path at toy sizes on CPU
    LEARNING_RATE, ROLLOUT_PROMPTS, GROUP_SIZE, MICRO_BATCH, GRAD_ACCUM, SAVE_MARGIN_S = 1e-3, 4, 4, 4, 2, 5.0


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(r - group mean) / (group std + eps) over groups of GROUP_SIZE consecutive responses."""
    grouped = rewards.view(-1, GROUP_SIZE)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if NORMALIZE_BY_STD:
        centred = centred / (grouped.std(dim=1, keepdim=True) + ADVANTAGE_EPS)
    return centred.view(-1)


def grpo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Clipped surrogate, averaged over every response token of the micro-batch (token-level mean)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - CLIP_RANGE, 1 + CLIP_RANGE) * a)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def main() -> None:
    cuda = problems.require_device()
    stop_at = problems.deadline()
    seed = problems.seed()
    random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    init = problems.init_policy_dir()
    tok = load_tokenizer(init)
    model = load_policy(init, device)
    if cuda:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model.train()
    engine = VLLMEngine(init, init, VLLM_GPU_MEMORY, seed) if cuda else HFEngine(model, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    pool = problems.train_problems()
    t0, step_s, updates, done = time.time(), 0.0, 0, 0
    for step in range(problems.grpo_steps()):
        if time.time() + step_s > stop_at - SAVE_MARGIN_S:
            print(f"stopping before GRPO step {step + 1}: the next step would pass the deadline", flush=True)
            break
        t_step = time.time()
        rows = random.sample(pool, min(ROLLOUT_PROMPTS, len(pool)))
        prompts = [format_prompt(tok, r["problem"]) for r in rows]
        engine.sync(model)
        sampling = Sampling(TEMPERATURE, TOP_P, problems.max_tokens(), seed * 100003 + step)
        responses = [resp for group in engine.generate(prompts, GROUP_SIZE, sampling) for resp in group]
        flat_prompts = [p for p in prompts for _ in range(GROUP_SIZE)]
        answers = [r["answer"] for r in rows for _ in range(GROUP_SIZE)]
        scores = [r1_zero_reward(resp, ans) for resp, ans in zip(responses, answers, strict=True)]
        rewards = torch.tensor([s["reward"] for s in scores])
        adv = group_advantages(rewards)
        batches = []
        with torch.no_grad(), autocast:
            for i in range(0, len(responses), MICRO_BATCH):
                b = {k: v.to(device) for k, v in tokenize_pairs(tok, flat_prompts[i : i + MICRO_BATCH], responses[i : i + MICRO_BATCH]).items()}
                b["old_logp"] = token_logprobs(model, b["input_ids"], b["labels"], b["attention_mask"])
                b["adv"] = adv[i : i + MICRO_BATCH].to(device)
                batches.append(b)
        losses = []
        for _ in range(TRAIN_STEPS_PER_ROLLOUT):
            for j, b in enumerate(batches):
                with autocast:
                    logp = token_logprobs(model, b["input_ids"], b["labels"], b["attention_mask"])
                loss = grpo_clip_loss(logp, b["old_logp"], b["adv"], b["response_mask"]) / GRAD_ACCUM
                loss.backward()
                losses.append(loss.item() * GRAD_ACCUM)
                if (j + 1) % GRAD_ACCUM == 0 or j == len(batches) - 1:
                    if GRAD_CLIP > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    updates += 1
        step_s = time.time() - t_step
        info = {
            "step": step + 1,
            "loss": sum(losses) / len(losses),
            "reward": rewards.mean().item(),
            "format_rate": sum(s["format_reward"] for s in scores) / len(scores),
            "step_s": round(step_s, 1),
        }
        print(f"IDEAFORGE_PROGRESS {json.dumps(info)}", flush=True)
        done += 1
    out = problems.out_dir() / "policy"
    model.to(torch.bfloat16 if cuda else torch.float32).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    print(f"GRPO: {done} steps, {updates} updates in {time.time() - t0:.1f}s, peak GPU memory {peak:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
