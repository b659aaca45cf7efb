"""GPT-2 d12 as in llm.c (the paper's baseline). Editable.

RMSNorm without weights, no biases, attention output scaled by 1/sqrt(2 * n_layer), exact GELU, learned
position embeddings, token embedding tied to the output head, vocab 50257. The protected evaluator rebuilds
``GPT(GPTConfig(**saved_config))`` and scores it one token at a time through ``forward_with_cache``: keep
that method consistent with ``forward`` when you change the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


def rmsnorm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS normalisation without a learned scale, computed in float32."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.out_scale = 1.0 / math.sqrt(2 * cfg.n_layer)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, H * D)) * self.out_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def forward_with_cache(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        """One new position (T == 1) attending to the cached keys/values of the earlier positions."""
        q, k, v = self._heads(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=False)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.out = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rmsnorm(x))
        return x + self.mlp(rmsnorm(x))

    def forward_with_cache(self, x: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        a, cache = self.attn.forward_with_cache(rmsnorm(x), cache)
        x = x + a
        return x + self.mlp(rmsnorm(x)), cache


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied; linear layers keep PyTorch's default init (as llm.c)
        for emb in (self.wte, self.wpe):
            nn.init.normal_(emb.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(rmsnorm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def forward_with_cache(self, idx: torch.Tensor, caches: list[KVCache] | None):
        """Logits (B, 1, vocab) for one new token per sequence, given the caches of the earlier tokens."""
        past = 0 if caches is None else caches[0][0].shape[2]
        x = self.wte(idx) + self.wpe(torch.arange(past, past + idx.shape[1], device=idx.device))
        new: list[KVCache] = []
        for i, block in enumerate(self.blocks):
            x, cache = block.forward_with_cache(x, None if caches is None else caches[i])
            new.append(cache)
        return self.lm_head(rmsnorm(x)), new
