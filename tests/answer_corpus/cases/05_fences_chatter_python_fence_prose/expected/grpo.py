"""GRPO on MATH problems with a verifiable \\boxed{} answer reward. Editable: the whole recipe.

Saves the trained policy to $IDEAFORGE_OUT/policy/ (Backend.save) for the evaluator.
Progress: ``IDEAFORGE_PROGRESS {...}`` lines.
"""

from __future__ import annotations

import json
import os
import random
import time

import torch

import problems
from answer import score
from policy import completion_logprobs, generate, load_policy, texts

LEARNING_RATE = 1e-6
PROMPTS_PER_STEP = 8
GROUP_SIZE = 16
PPO_EPOCHS = 1
CLIP_EPS = 0.2
KL_COEF = 0.0
TEMPERATURE = 1.0
GRAD_CLIP = 1.0
MICRO_BATCH = 8


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Group-relative advantages: (r - group mean) / (group std + eps), rewards shaped (prompts, group)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + 1e-4)


def policy_loss(pol, ref, batch, adv: torch.Tensor) -> torch.Tensor:
    """Clipped surrogate per completion token, averaged over each completion, then over the batch."""
    ids, mask, comp, cmask, old_logp = batch
    logp = completion_logprobs(pol, ids, mask, comp, cmask)
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    per_token = torch.min(ratio * a, torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * a)
    if KL_COEF > 0:
        with torch.no_grad():
            ref_logp = completion_logprobs(ref, ids, mask, comp, cmask)
        log_ratio = ref_logp - logp
        per_token = per_token - KL_COEF * (torch.exp(log_ratio) - log_ratio - 1)
    lengths = cmask.sum(1).clamp(min=1)
    return -((per_token * cmask).sum(1) / lengths).mean()


def main() -> None:
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))
    seed = problems.seed()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    pol = load_policy()
    ref = load_policy() if KL_COEF > 0 else None
    if ref is not None:
        ref.model.eval()
    opt = torch.optim.AdamW(pol.model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    pool = problems.train_problems()
    steps, max_new = problems.budget_steps(), problems.max_new_tokens()
    t0 = time.time()
    for step in range(steps):
        rows = [rng.choice(pool) for _ in range(PROMPTS_PER_STEP)]
        prompts = [pol.encode_prompt(r["problem"]) for r in rows for _ in range(GROUP_SIZE)]
        answers = [r["answer"] for r in rows for _ in range(GROUP_SIZE)]
        chunks, rewards = [], []
        for i in range(0, len(prompts), MICRO_BATCH):
            ids, mask, comp, cmask = generate(pol, prompts[i : i + MICRO_BATCH], max_new, TEMPERATURE, gen=gen)
            with torch.no_grad():
                old = completion_logprobs(pol, ids, mask, comp, cmask)
            chunks.append((ids, mask, comp, cmask, old))
            rewards += [score(t, a) for t, a in zip(texts(pol, comp, cmask), answers[i : i + MICRO_BATCH], strict=True)]
        reward_t = torch.tensor(rewards)
        adv = advantages(reward_t.view(PROMPTS_PER_STEP, GROUP_SIZE)).view(-1).to(pol.device)
        for _ in range(PPO_EPOCHS):
            opt.zero_grad(set_to_none=True)
            for j, batch in enumerate(chunks):
                a = adv[j * MICRO_BATCH : (j + 1) * MICRO_BATCH]
                loss = policy_loss(pol, ref, batch, a) * len(a) / len(adv)
                loss.backward()
            if GRAD_CLIP > 0:
                torch.nn.utils.clip_grad_norm_(pol.model.parameters(), GRAD_CLIP)
            opt.step()
        print(f"IDEAFORGE_PROGRESS {json.dumps({'step': step + 1, 'loss': loss.item()})}", flush=True)
        print(f"step {step + 1}: mean reward {reward_t.mean().item():.3f}", flush=True)
    pol.save(problems.out_dir() / "policy")
    print(f"GRPO: {steps} steps in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
