"""One async chat-completion interface over Anthropic, OpenAI and OpenAI-compatible servers.

API keys come only from the environment (``provider.api_key_env`` or the kind's default variable). They are
never stored on the client object, never put in repr/str, and scrubbed from every error message we raise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import weakref
from dataclasses import dataclass

import anthropic
import openai
from pydantic import BaseModel

from ideaforge.llm.pricing import cost_usd
from ideaforge.llm.ratelimit import TokenBucket
from ideaforge.models import ProviderConfig, Usage

log = logging.getLogger(__name__)

DEFAULT_KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4.1-mini"}
JSON_INSTRUCTION = "\n\nReply with one JSON object only: no prose, no markdown fences."
# OpenAI reasoning models take max_completion_tokens and only the default temperature.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class LLMError(RuntimeError):
    """The provider could not produce a completion (config, auth, rate limit, outage). Never holds a key.

    ``retryable`` says whether trying again later may help (rate limits, 5xx, network) or not (auth, bad request).
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Completion(BaseModel):
    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None


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

    # -- calls ----------------------------------------------------------------------------------------------

    async def complete(self, system: str, messages: list[dict], *, json_mode: bool = False) -> Completion:
        """One completion. ``messages`` are ``{"role": "user"|"assistant", "content": str}`` dicts."""
        limits = _limits_for(self.provider)
        attempt = 0
        while True:
            async with limits.semaphore:
                if limits.bucket:
                    await limits.bucket.acquire()
                try:
                    return await self._call(system, messages, json_mode)
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

    async def _call(self, system: str, messages: list[dict], json_mode: bool) -> Completion:
        p = self.provider
        if json_mode:
            system += JSON_INSTRUCTION
        if p.kind == "anthropic":
            resp = await self._sdk.messages.create(
                model=self.model,
                max_tokens=p.max_tokens,
                system=system,
                messages=messages,
            )  # anthropic SDK 2.x has no sampling parameters: provider.temperature is not sent
            text = "".join(b.text for b in resp.content if getattr(b, "type", None) == "text")
            tin, tout = resp.usage.input_tokens, resp.usage.output_tokens
            finish = resp.stop_reason
        else:
            kwargs: dict = {
                "model": self.model,
                "messages": [{"role": "system", "content": system}, *messages],
            }
            if p.kind == "openai" and self.model.startswith(_REASONING_PREFIXES):
                kwargs["max_completion_tokens"] = p.max_tokens
            else:
                kwargs["max_tokens"] = p.max_tokens
                kwargs["temperature"] = p.temperature
            if json_mode:
                kwargs["response_format"] = {"type": "json_object"}
            resp = await self._sdk.chat.completions.create(**kwargs)
            if not resp.choices:
                raise LLMError(f"{p.kind} model {self.model!r}: response has no choices", retryable=True)
            text = resp.choices[0].message.content or ""
            tin = resp.usage.prompt_tokens if resp.usage else 0
            tout = resp.usage.completion_tokens if resp.usage else 0
            finish = resp.choices[0].finish_reason
        usage = Usage(calls=1, input_tokens=tin, output_tokens=tout, cost_usd=cost_usd(p, tin, tout))
        return Completion(text=text, usage=usage, model=self.model, finish_reason=finish)
