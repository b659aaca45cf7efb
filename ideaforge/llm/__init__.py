"""LLM provider plumbing: clients (Anthropic, OpenAI, OpenAI-compatible), rate limiting, pricing."""

from ideaforge.llm.client import Completion, LLMClient, LLMError
from ideaforge.llm.pricing import cost_usd, price_for

__all__ = ["Completion", "LLMClient", "LLMError", "cost_usd", "price_for"]
