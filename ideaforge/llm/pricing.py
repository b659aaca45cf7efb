"""Prices of known models in USD per million tokens (input, output), overridable per provider."""

from __future__ import annotations

import logging

from ideaforge.models import ProviderConfig

log = logging.getLogger(__name__)

# Longest matching prefix wins. List prices; override with provider.price_in_per_mtok / price_out_per_mtok.
PRICES: dict[str, tuple[float, float]] = {
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-haiku": (0.25, 1.25),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
    "gpt-4.1-nano": (0.1, 0.4),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4o": (2.5, 10.0),
    "o4-mini": (1.1, 4.4),
    "o3-mini": (1.1, 4.4),
    "o3": (2.0, 8.0),
}

_warned: set[str] = set()


def price_for(provider: ProviderConfig) -> tuple[float, float]:
    """(input, output) USD per million tokens: provider overrides, else the table, else 0 for local servers."""
    table = _lookup(provider.model or "")
    if table is None:
        if provider.kind != "openai-compatible" and (provider.model or "") not in _warned:
            _warned.add(provider.model or "")
            log.warning(
                "no price known for model %r: cost counts as 0 unless price_*_per_mtok is set", provider.model
            )
        table = (0.0, 0.0)
    p_in = provider.price_in_per_mtok if provider.price_in_per_mtok is not None else table[0]
    p_out = provider.price_out_per_mtok if provider.price_out_per_mtok is not None else table[1]
    return p_in, p_out


def _lookup(model: str) -> tuple[float, float] | None:
    best = max((k for k in PRICES if model.startswith(k)), key=len, default=None)
    return PRICES[best] if best else None


def cost_usd(provider: ProviderConfig, input_tokens: int, output_tokens: int) -> float:
    p_in, p_out = price_for(provider)
    return (input_tokens * p_in + output_tokens * p_out) / 1_000_000
