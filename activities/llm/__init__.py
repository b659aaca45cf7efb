"""LLM provider plumbing: clients (Anthropic, OpenAI, OpenAI-compatible), rate limiting, pricing."""

from activities.llm.client import Completion, LLMClient, LLMError
from activities.llm.pricing import cost_usd, price_for

__all__ = ["Completion", "LLMClient", "LLMError", "cost_usd", "price_for"]
