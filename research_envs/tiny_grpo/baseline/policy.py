"""PROTECTED. The policy network (fixed so the shared SFT checkpoint loads) and decoding helpers."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import task


class Policy(nn.Module):
    """A small causal transformer over the task's 14 tokens (2 layers, width 128, 4 heads)."""

    def __init__(self, n_layer: int = 2, n_embd: int = 128, n_head: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(task.VOCAB_SIZE, n_embd)
        self.pos = nn.Embedding(task.SEQ_LEN, n_embd)
        layer = nn.TransformerEncoderLayer(
            n_embd, n_head, 4 * n_embd, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, task.VOCAB_SIZE)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


def answer_logprobs(policy: nn.Module, sequences: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, ANSWER_LEN) of the answer tokens of full sequences (B, SEQ_LEN)."""
    logits = policy(sequences[:, :-1])[:, task.PROMPT_LEN - 1 :]
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, sequences[:, task.PROMPT_LEN :, None])[..., 0]


@torch.no_grad()
def decode(
    policy: nn.Module, prompts: torch.Tensor, temperature: float = 1.0, greedy: bool = False, gen=None
) -> torch.Tensor:
    """Complete prompts with ANSWER_LEN tokens; returns full sequences (B, SEQ_LEN)."""
    seq = prompts
    for _ in range(task.ANSWER_LEN):
        logits = policy(seq)[:, -1].float()
        if greedy:
            nxt = logits.argmax(dim=-1)
        else:
            nxt = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=gen)[:, 0]
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


@torch.no_grad()
def accuracy(policy: nn.Module, prompts: torch.Tensor, answers: torch.Tensor, batch: int = 250) -> float:
    """Greedy-decoding exact-match accuracy."""
    was_training = policy.training
    policy.eval()
    hits = 0.0
    for p, a in zip(prompts.split(batch), answers.split(batch), strict=True):
        hits += task.reward(decode(policy, p, greedy=True)[:, task.PROMPT_LEN :], a).sum().item()
    policy.train(was_training)
    return hits / len(prompts)
