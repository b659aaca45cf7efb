"""Prices of known models in USD per million tokens, overridable per provider, and the cost of a call."""

from __future__ import annotations

import logging
from typing import NamedTuple

from ideaforge.models import ProviderConfig

log = logging.getLogger(__name__)


class Price(NamedTuple):
    """USD per million tokens: input, output, and input read from the provider's prompt cache."""

    input: float
    output: float
    cached_input: float


# Public list prices (standard tier, prompts under 200k tokens). Longest matching prefix wins. Anthropic bills
# cache reads at 0.1x input and 5-minute cache writes at 1.25x input; OpenAI caches automatically (no write
# price) and bills cached input at the listed rate. Override with provider.price_*_per_mtok.
PRICES: dict[str, Price] = {
    "claude-opus-4-6": Price(5.0, 25.0, 0.5),
    "claude-opus-4-5": Price(5.0, 25.0, 0.5),
    "claude-opus-4-1": Price(15.0, 75.0, 1.5),
    "claude-opus-4": Price(15.0, 75.0, 1.5),
    "claude-sonnet-4": Price(3.0, 15.0, 0.3),
    "claude-3-7-sonnet": Price(3.0, 15.0, 0.3),
    "claude-3-5-sonnet": Price(3.0, 15.0, 0.3),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.1),
    "claude-3-5-haiku": Price(0.8, 4.0, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.03),
    "gpt-5.2": Price(1.75, 14.0, 0.175),
    "gpt-5-nano": Price(0.05, 0.4, 0.005),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4o-mini": Price(0.15, 0.6, 0.075),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "o3-mini": Price(1.1, 4.4, 0.55),
    "o3": Price(2.0, 8.0, 0.5),
}
CACHE_WRITE_FACTOR = {"anthropic": 1.25}  # x input price; other kinds: cache writes cost plain input

_warned: set[str] = set()


def price_for(provider: ProviderConfig) -> Price:
    """The provider's overrides, else the table, else 0 for local servers (a warning for unknown paid ones)."""
    table = _lookup(provider.model or "")
    if table is None:
        if provider.kind != "openai-compatible" and (provider.model or "") not in _warned:
            _warned.add(provider.model or "")
            log.warning(
                "no price known for model %r: cost counts as 0 unless price_*_per_mtok is set", provider.model
            )
        table = Price(0.0, 0.0, 0.0)
    p_in = provider.price_in_per_mtok if provider.price_in_per_mtok is not None else table.input
    p_out = provider.price_out_per_mtok if provider.price_out_per_mtok is not None else table.output
    if provider.price_cached_in_per_mtok is not None:
        p_cached = provider.price_cached_in_per_mtok
    elif table.input:  # keep the table's cache discount, also under an input-price override
        p_cached = p_in * table.cached_input / table.input
    else:
        p_cached = p_in * (0.1 if provider.kind == "anthropic" else 1.0)
    return Price(p_in, p_out, p_cached)


def _lookup(model: str) -> Price | None:
    best = max((k for k in PRICES if model.startswith(k)), key=len, default=None)
    return PRICES[best] if best else None


def cost_usd(
    provider: ProviderConfig,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float:
    """USD of one call. ``input_tokens`` counts every prompt token, the cached and cache-written ones too."""
    price = price_for(provider)
    plain_in = max(0, input_tokens - cached_input_tokens - cache_write_tokens)
    write = price.input * CACHE_WRITE_FACTOR.get(provider.kind, 1.0)
    return (
        plain_in * price.input
        + cached_input_tokens * price.cached_input
        + cache_write_tokens * write
        + output_tokens * price.output
    ) / 1_000_000
