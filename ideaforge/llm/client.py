"""One async chat-completion interface over Anthropic, OpenAI and OpenAI-compatible servers.

API keys come only from the environment (``provider.api_key_env`` or the kind's default variable). They are
never stored on the client object, never put in repr/str, and scrubbed from every error message we raise.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import time
import weakref
from dataclasses import dataclass

import anthropic
import openai
from pydantic import BaseModel

from ideaforge.llm.budget import Budget
from ideaforge.llm.errors import BudgetExhausted, LLMError
from ideaforge.llm.pricing import cost_usd
from ideaforge.llm.ratelimit import TokenBucket
from ideaforge.models import ProviderConfig, Usage

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4.1-mini"}
JSON_INSTRUCTION = "\n\nReply with one JSON object only: no prose, no markdown fences."
# OpenAI reasoning models take max_completion_tokens (reasoning included) and only the default temperature.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
# Reasoning headroom on top of the answer budget when thinking_budget is not set, by reasoning effort.
REASONING_HEADROOM = {"none": 0, "minimal": 1024, "low": 4096, "medium": 8192, "high": 16384}  # else 32k
ANTHROPIC_THINKING_BUDGET = 2048  # the paper used 1.5-3k
CHARS_PER_TOKEN = 4  # estimate for calls without a reply (cancelled) and for worst-case reservations
ASSUMED_TOKENS_PER_S = 80  # generation speed assumed for a cancelled call's output estimate
TRUNCATED = ("length", "max_tokens", "model_context_window_exceeded")

__all__ = ["BudgetExhausted", "Completion", "LLMClient", "LLMError"]


class Completion(BaseModel):
    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None
    thinking: str = ""  # the reasoning text the API returned (Anthropic thinking blocks), if any

    @property
    def truncated(self) -> bool:
        """The reply stopped at the token limit (its text may be cut mid-way, or empty)."""
        return self.finish_reason in TRUNCATED


@dataclass
class _Limits:
    semaphore: asyncio.Semaphore
    bucket: TokenBucket | None


# Shared per event loop and provider endpoint, so every client of one provider respects one limit.
_LIMITS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, _Limits]] = (
    weakref.WeakKeyDictionary()
)


def _limits_for(provider: ProviderConfig) -> _Limits:
    loop = asyncio.get_running_loop()
    per_loop = _LIMITS.setdefault(loop, {})
    key = (
        provider.kind,
        provider.base_url,
        provider.model,
        provider.concurrency,
        provider.requests_per_minute,
    )
    if key not in per_loop:
        bucket = TokenBucket(provider.requests_per_minute) if provider.requests_per_minute else None
        per_loop[key] = _Limits(asyncio.Semaphore(provider.concurrency), bucket)
    return per_loop[key]


class LLMClient:
    """``await LLMClient(provider).complete(system, messages)`` -> :class:`Completion` with usage and cost.

    Retries: the SDK retries 429/5xx/network errors ``provider.max_retries`` times (honouring retry-after);
    on a rate limit that survives those, this client waits and tries again up to ``provider.max_retries``
    more times with exponential backoff, then raises :class:`LLMError`.
    """

    def __init__(self, provider: ProviderConfig, backoff_s: float = 2.0, max_backoff_s: float = 60.0) -> None:
        if provider.kind == "offline":
            raise LLMError("provider kind 'offline' has no LLM client: use the offline ideator/implementer")
        self.provider = provider
        self.kind = provider.kind
        self.model = provider.model or DEFAULT_MODEL.get(provider.kind, "")
        if not self.model:
            raise LLMError(f"provider kind {provider.kind!r} needs provider.model (the served model name)")
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._secret, key_env = self._read_key(provider)
        self._sdk = self._make_sdk(provider, self._secret)
        self.key_env = key_env

    # -- construction -------------------------------------------------------------------------------------

    @staticmethod
    def _read_key(provider: ProviderConfig) -> tuple[str, str | None]:
        if provider.kind == "openai-compatible":
            if not provider.base_url:
                raise LLMError(
                    "provider kind 'openai-compatible' needs base_url (e.g. http://127.0.0.1:8000/v1)"
                )
            if not provider.api_key_env:
                return "EMPTY", None  # local servers (vLLM, Ollama, llama.cpp) usually need no key
            env = provider.api_key_env
        else:
            env = provider.api_key_env or DEFAULT_KEY_ENV[provider.kind]
        key = os.environ.get(env, "")
        if not key:
            raise LLMError(f"{provider.kind} provider: environment variable {env} is not set (the API key)")
        return key, env

    def _make_sdk(self, p: ProviderConfig, key: str) -> anthropic.AsyncAnthropic | openai.AsyncOpenAI:
        common = {"api_key": key, "max_retries": p.max_retries, "timeout": p.timeout_s}
        if p.kind == "anthropic":
            return anthropic.AsyncAnthropic(base_url=p.base_url, **common)
        if p.base_url:
            return openai.AsyncOpenAI(base_url=p.base_url, **common)
        return openai.AsyncOpenAI(**common)

    def __repr__(self) -> str:
        return f"LLMClient(kind={self.kind!r}, model={self.model!r}, base_url={self.provider.base_url!r})"

    __str__ = __repr__

    def scrub(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``***``."""
        return text.replace(self._secret, "***") if self._secret and self._secret != "EMPTY" else text

    # -- token budgets -------------------------------------------------------------------------------------

    @property
    def reasoning(self) -> bool:
        """An OpenAI-style reasoning model: reasoning counts in max_completion_tokens, no temperature."""
        p = self.provider
        if p.kind == "anthropic":
            return False
        return p.reasoning_effort is not None or (
            p.kind == "openai" and self.model.startswith(_REASONING_PREFIXES)
        )

    def token_limit(self, answer_tokens: int | None = None) -> int:
        """The max tokens sent: the answer budget plus the thinking/reasoning headroom."""
        p = self.provider
        answer = answer_tokens or p.max_tokens
        if p.kind == "anthropic":
            return answer + (self.thinking_budget if p.thinking != "off" else 0)
        if self.reasoning:
            if p.thinking_budget is not None:
                return answer + p.thinking_budget
            return answer + REASONING_HEADROOM.get(p.reasoning_effort or "medium", 32768)
        return answer

    @property
    def thinking_budget(self) -> int:
        return self.provider.thinking_budget or ANTHROPIC_THINKING_BUDGET

    def worst_case_usd(self, system: str, messages: list[dict], answer_tokens: int | None = None) -> float:
        """Cost of a call that reads its whole prompt uncached and writes its whole token limit."""
        tin = _chars(system, messages) // CHARS_PER_TOKEN
        return cost_usd(self.provider, tin, self.token_limit(answer_tokens))

    # -- calls ----------------------------------------------------------------------------------------------

    async def complete(
        self,
        system: str,
        messages: list[dict],
        *,
        json_mode: bool = False,
        max_tokens: int | None = None,
        budget: Budget | None = None,
    ) -> Completion:
        """One completion. ``messages`` are ``{"role": "user"|"assistant", "content": str}`` dicts.

        ``system`` is the stable prefix of the prompt: with ``provider.prompt_cache`` it is marked cacheable
        (Anthropic ``cache_control``; OpenAI caches prefixes by itself and gets a ``prompt_cache_key``), so put
        large shared context there and what varies per call in ``messages``. ``max_tokens`` overrides the
        answer budget. ``budget`` is charged with the call's usage (also when the call is cancelled) and
        refuses the call with :class:`BudgetExhausted` before it starts once its cap is reached.
        """
        limits = _limits_for(self.provider)
        attempt = 0
        while True:
            async with limits.semaphore:
                if limits.bucket:
                    await limits.bucket.acquire()
                try:
                    return await self._metered_call(system, messages, json_mode, max_tokens, budget)
                except (anthropic.RateLimitError, openai.RateLimitError) as e:
                    if attempt >= self.provider.max_retries:
                        raise self._error(
                            e, f"rate limited (HTTP 429) after {attempt + 1} rounds of retries"
                        ) from None
                    wait = self._wait_s(e, attempt)
                except (anthropic.APIStatusError, openai.APIStatusError) as e:
                    retryable = e.status_code >= 500 or e.status_code in (408, 409)
                    raise self._error(e, f"HTTP {e.status_code}", retryable) from None
                except (anthropic.APIConnectionError, openai.APIConnectionError) as e:
                    raise self._error(e, "connection failed or timed out", True) from None
            attempt += 1
            log.warning("%s %s rate limited; waiting %.1f s (retry %d)", self.kind, self.model, wait, attempt)
            await asyncio.sleep(wait)

    async def _metered_call(
        self,
        system: str,
        messages: list[dict],
        json_mode: bool,
        max_tokens: int | None,
        budget: Budget | None,
    ) -> Completion:
        ticket = (
            budget.reserve(self.worst_case_usd(system, messages, max_tokens), "LLM call") if budget else None
        )
        started = time.monotonic()
        try:
            comp = await self._call(system, messages, json_mode, max_tokens)
        except asyncio.CancelledError:
            if budget:
                budget.settle(
                    ticket, self.cancelled_usage(system, messages, time.monotonic() - started, max_tokens)
                )
            raise
        except BaseException:
            if budget:
                budget.settle(ticket, None)  # an HTTP error or a dropped connection is not billed
            raise
        if budget:
            budget.settle(ticket, comp.usage)
        return comp

    def cancelled_usage(
        self, system: str, messages: list[dict], elapsed_s: float, answer_tokens: int | None = None
    ) -> Usage:
        """Estimated usage of a call abandoned after ``elapsed_s``: the provider bills its prompt and what it
        generated meanwhile (assumed ASSUMED_TOKENS_PER_S, at most the token limit)."""
        tin = _chars(system, messages) // CHARS_PER_TOKEN
        tout = min(self.token_limit(answer_tokens), int(elapsed_s * ASSUMED_TOKENS_PER_S))
        return Usage(
            input_tokens=tin,
            output_tokens=tout,
            cancelled_calls=1,
            cancelled_tokens=tin + tout,
            cost_usd=cost_usd(self.provider, tin, tout),
        )

    def _wait_s(self, e: Exception, attempt: int) -> float:
        headers = getattr(getattr(e, "response", None), "headers", None) or {}
        for name, div in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
            try:
                return min(self.max_backoff_s, max(0.0, float(headers.get(name)) / div))
            except (TypeError, ValueError):
                continue
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.75 + 0.5 * random.random())

    def _error(self, e: Exception, what: str, retryable: bool = True) -> LLMError:
        detail = self.scrub(str(e))[:500]
        return LLMError(f"{self.kind} model {self.model!r}: {what}: {type(e).__name__}: {detail}", retryable)

    async def _call(
        self, system: str, messages: list[dict], json_mode: bool, max_tokens: int | None
    ) -> Completion:
        if json_mode:
            system += JSON_INSTRUCTION
        if self.kind == "anthropic":
            return await self._call_anthropic(system, messages, max_tokens)
        return await self._call_openai(system, messages, json_mode, max_tokens)

    async def _call_anthropic(self, system: str, messages: list[dict], max_tokens: int | None) -> Completion:
        p = self.provider
        kwargs: dict = {
            "model": self.model,
            "max_tokens": self.token_limit(max_tokens),
            "messages": messages,
            "system": (
                [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
                if p.prompt_cache
                else system
            ),
        }
        if p.thinking == "budget":
            kwargs["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget}
        elif p.thinking == "adaptive":
            kwargs["thinking"] = {"type": "adaptive"}
        if p.reasoning_effort:
            kwargs["output_config"] = {"effort": p.reasoning_effort}
        if p.temperature is not None and p.thinking == "off":
            kwargs["extra_body"] = {"temperature": p.temperature}  # anthropic SDK 2.x has no such argument
        resp = await self._sdk.messages.create(**kwargs)
        text = "".join(b.text for b in resp.content if getattr(b, "type", None) == "text")
        thinking = "".join(b.thinking for b in resp.content if getattr(b, "type", None) == "thinking")
        u = resp.usage
        cached, written = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        details = getattr(u, "output_tokens_details", None)
        reasoning = getattr(details, "thinking_tokens", None)
        if reasoning is None:
            reasoning = len(thinking) // CHARS_PER_TOKEN if thinking else 0
        usage = self._usage(
            u.input_tokens + cached + written, u.output_tokens, cached, written, reasoning, resp.stop_reason
        )
        return Completion(
            text=text, usage=usage, model=self.model, finish_reason=resp.stop_reason, thinking=thinking
        )

    async def _call_openai(
        self, system: str, messages: list[dict], json_mode: bool, max_tokens: int | None
    ) -> Completion:
        p = self.provider
        kwargs: dict = {"model": self.model, "messages": [{"role": "system", "content": system}, *messages]}
        if self.reasoning:
            kwargs["max_completion_tokens"] = self.token_limit(max_tokens)
            if p.reasoning_effort:
                kwargs["reasoning_effort"] = p.reasoning_effort
        else:
            kwargs["max_tokens"] = self.token_limit(max_tokens)
            if p.temperature is not None:
                kwargs["temperature"] = p.temperature
        if json_mode:
            kwargs["response_format"] = {"type": "json_object"}
        if p.prompt_cache and p.kind == "openai":  # routes calls sharing the prefix to the same cache
            kwargs["prompt_cache_key"] = hashlib.sha256(system.encode()).hexdigest()[:32]
        resp = await self._sdk.chat.completions.create(**kwargs)
        if not resp.choices:
            raise LLMError(f"{p.kind} model {self.model!r}: response has no choices", retryable=True)
        text = resp.choices[0].message.content or ""
        finish = resp.choices[0].finish_reason
        u = resp.usage
        tin = u.prompt_tokens if u else 0
        tout = u.completion_tokens if u else 0
        cached = (
            (getattr(u.prompt_tokens_details, "cached_tokens", None) or 0)
            if u and u.prompt_tokens_details
            else 0
        )
        reasoning = (
            (getattr(u.completion_tokens_details, "reasoning_tokens", None) or 0)
            if u and u.completion_tokens_details
            else 0
        )
        usage = self._usage(tin, tout, cached, 0, reasoning, finish)
        return Completion(text=text, usage=usage, model=self.model, finish_reason=finish)

    def _usage(
        self, tin: int, tout: int, cached: int, written: int, reasoning: int, finish: str | None
    ) -> Usage:
        return Usage(
            calls=1,
            input_tokens=tin,
            output_tokens=tout,
            cached_input_tokens=cached,
            cache_write_tokens=written,
            reasoning_tokens=reasoning,
            truncated_calls=int(finish in TRUNCATED),
            cost_usd=cost_usd(self.provider, tin, tout, cached, written),
        )


def _chars(system: str, messages: list[dict]) -> int:
    n = len(system)
    for m in messages:
        c = m.get("content", "")
        n += len(c) if isinstance(c, str) else sum(len(b.get("text", "")) for b in c if isinstance(b, dict))
    return n
