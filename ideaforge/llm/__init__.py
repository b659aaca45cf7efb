"""LLM provider plumbing: clients (Anthropic, OpenAI, OpenAI-compatible), rate limiting, pricing."""

from ideaforge.llm.budget import Budget
from ideaforge.llm.client import Completion, LLMClient
from ideaforge.llm.errors import BudgetExhausted, LLMError
from ideaforge.llm.pricing import cost_usd, price_for

__all__ = ["Budget", "BudgetExhausted", "Completion", "LLMClient", "LLMError", "cost_usd", "price_for"]
