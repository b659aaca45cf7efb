"""GRPO fine-tuning of the shared SFT policy on 3-digit addition. Editable: the whole recipe.

Starts from the SFT checkpoint in $IDEAFORGE_DATA and writes the final policy weights to
$IDEAFORGE_OUT/policy.pt for the evaluator. Progress: ``IDEAFORGE_PROGRESS {...}`` lines.
"""

from __future__ import annotations

import json
import random
import time

import torch

import task
from policy import Policy, answer_logprobs, decode
from sft import ensure_sft

LEARNING_RATE = 3e-4
PROMPTS_PER_STEP = 32
GROUP_SIZE = 8
PPO_EPOCHS = 2
CLIP_EPS = 0.2
KL_COEF = 0.0
TEMPERATURE = 1.0
GRAD_CLIP = 1.0


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Group-relative advantages: (r - group mean) / (group std + eps), rewards shaped (prompts, group)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + 1e-4)


def policy_loss(policy, reference, seq, old_logp, adv) -> torch.Tensor:
    """Clipped surrogate objective per answer token, averaged (plus an optional KL penalty)."""
    logp = answer_logprobs(policy, seq)
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.min(ratio * a, torch.clamp(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * a)
    loss = -surrogate.mean()
    if KL_COEF > 0:
        with torch.no_grad():
            ref_logp = answer_logprobs(reference, seq)
        log_ratio = ref_logp - logp
        loss = loss + KL_COEF * (torch.exp(log_ratio) - log_ratio - 1).mean()
    return loss


def main() -> None:
    task.setup_threads()
    seed = task.seed()
    torch.manual_seed(seed)
    random.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    start = torch.load(ensure_sft(), map_location="cpu", weights_only=True)
    policy, reference = Policy(), Policy()
    policy.load_state_dict(start)
    reference.load_state_dict(start)
    reference.eval()
    opt = torch.optim.Adam(policy.parameters(), lr=LEARNING_RATE)
    iterations = task.budget_iterations()
    t0 = time.time()
    for it in range(iterations):
        prompts, answers = task.sample_problems(PROMPTS_PER_STEP, gen)
        prompts = prompts.repeat_interleave(GROUP_SIZE, dim=0)
        answers = answers.repeat_interleave(GROUP_SIZE, dim=0)
        policy.eval()
        temp = TEMPERATURE * (1.0 - 0.5 * it / max(1, iterations - 1))
        seq = decode(policy, prompts, temperature=temp, gen=gen)
        rewards = task.reward(seq[:, task.PROMPT_LEN :], answers)
        adv = advantages(rewards.view(PROMPTS_PER_STEP, GROUP_SIZE)).view(-1)
        with torch.no_grad():
            old_logp = answer_logprobs(policy, seq)
        policy.train()
        for _ in range(PPO_EPOCHS):
            loss = policy_loss(policy, reference, seq, old_logp, adv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if GRAD_CLIP > 0:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), GRAD_CLIP)
            opt.step()
        if (it + 1) % 5 == 0 or it + 1 == iterations:
            print(f"IDEAFORGE_PROGRESS {json.dumps({'step': it + 1, 'loss': loss.item()})}", flush=True)
            print(f"iteration {it + 1}: mean reward {rewards.mean().item():.3f}", flush=True)
    torch.save(policy.state_dict(), task.out_dir() / "policy.pt")
    print(f"GRPO: {iterations} iterations in {time.time() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
