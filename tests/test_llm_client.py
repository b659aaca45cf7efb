"""LLMClient against the loopback fake server, through the real anthropic/openai SDKs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ideaforge.llm.client import LLMClient, LLMError
from ideaforge.llm.pricing import cost_usd, price_for
from ideaforge.llm.ratelimit import TokenBucket
from ideaforge.models import ProviderConfig
from tests.fakes.llm_server import FakeLLMServer

KEY = "sk-test-SECRET-0123456789"
KINDS = ["anthropic", "openai", "openai-compatible"]
MODEL = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4o", "openai-compatible": "qwen-local"}


@pytest.fixture
def server():
    with FakeLLMServer(smart=False) as srv:
        yield srv


@pytest.fixture(autouse=True)
def key_env(monkeypatch):
    monkeypatch.setenv("IDEAFORGE_TEST_KEY", KEY)


def provider(srv: FakeLLMServer, kind: str, **kw) -> ProviderConfig:
    base = {
        "kind": kind,
        "model": MODEL[kind],
        "base_url": srv.base_url(kind),
        "api_key_env": "IDEAFORGE_TEST_KEY",
    }
    return ProviderConfig(**{**base, **kw})


def ask(client: LLMClient, text: str = "hi", **kw):
    return asyncio.run(client.complete("be brief", [{"role": "user", "content": text}], **kw))


@pytest.mark.parametrize("kind", KINDS)
def test_completion_usage_and_key_header(server, kind):
    server.push_text("hello there", input_tokens=1000, output_tokens=200)
    c = LLMClient(provider(server, kind, price_in_per_mtok=2.0, price_out_per_mtok=10.0))
    out = ask(c)
    assert out.text == "hello there"
    assert (out.usage.calls, out.usage.input_tokens, out.usage.output_tokens) == (1, 1000, 200)
    assert out.usage.cost_usd == pytest.approx((1000 * 2 + 200 * 10) / 1e6)
    (req,) = server.requests
    assert req.path == ("/v1/messages" if kind == "anthropic" else "/v1/chat/completions")
    assert req.body["model"] == MODEL[kind]
    assert KEY in (req.headers.get("x-api-key", "") + req.headers.get("authorization", ""))
    assert "be brief" in req.system and req.prompt == "hi"


@pytest.mark.parametrize("kind", KINDS)
def test_429_and_500_are_retried_then_succeed(server, kind):
    server.push_error(429, retry_after_ms=5)
    server.push_error(500, retry_after_ms=5)
    server.push_text("ok")
    c = LLMClient(provider(server, kind, max_retries=3))
    assert ask(c).text == "ok"
    assert len(server.requests) == 3


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_persistent_rate_limit_gives_clear_retryable_error(server, kind):
    for _ in range(10):
        server.push_error(429, retry_after_ms=1, message=f"slow down, key {KEY}")
    c = LLMClient(provider(server, kind, max_retries=1))
    with pytest.raises(LLMError) as ei:
        ask(c)
    # SDK: 1 try + 1 retry per round; our own bounded retry: 2 rounds
    assert len(server.requests) == 4
    assert ei.value.retryable
    assert "429" in str(ei.value) and MODEL[kind] in str(ei.value)
    assert KEY not in str(ei.value) and KEY not in repr(ei.value) and "***" in str(ei.value)


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_auth_error_is_not_retried_and_key_is_scrubbed(server, kind):
    server.push_error(401, message=f"invalid x-api-key {KEY}")
    c = LLMClient(provider(server, kind, max_retries=3))
    with pytest.raises(LLMError) as ei:
        ask(c)
    assert len(server.requests) == 1
    assert not ei.value.retryable
    assert "HTTP 401" in str(ei.value)
    assert KEY not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_key_never_in_repr_or_debug_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    for kind in KINDS:
        server.push_error(500, retry_after_ms=1)
        server.push_text("fine")
        c = LLMClient(provider(server, kind))
        assert KEY not in repr(c) and KEY not in str(c)
        assert ask(c).text == "fine"
    assert "Sending HTTP Request" in caplog.text or "Request options" in caplog.text  # debug logging was on
    assert KEY not in caplog.text


def test_missing_key_and_bad_config_errors(server, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(LLMError, match="ANTHROPIC_API_KEY is not set"):
        LLMClient(ProviderConfig(kind="anthropic", model="claude-sonnet-4-6"))
    with pytest.raises(LLMError, match="MY_MISSING_KEY is not set"):
        LLMClient(ProviderConfig(kind="openai", api_key_env="MY_MISSING_KEY"))
    with pytest.raises(LLMError, match="needs base_url"):
        LLMClient(ProviderConfig(kind="openai-compatible", model="m"))
    with pytest.raises(LLMError, match="needs provider.model"):
        LLMClient(ProviderConfig(kind="openai-compatible", base_url=server.openai_base_url))
    with pytest.raises(LLMError, match="offline"):
        LLMClient(ProviderConfig(kind="offline"))


def test_openai_compatible_without_key_env_sends_placeholder_not_openai_key(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # must NOT leak to a local server
    server.push_text("local")
    c = LLMClient(ProviderConfig(kind="openai-compatible", model="llama", base_url=server.openai_base_url))
    assert ask(c).text == "local"
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_json_mode_request_shape(server):
    server.push_text("{}")
    server.push_text("{}")
    ask(LLMClient(provider(server, "openai")), json_mode=True)
    ask(LLMClient(provider(server, "anthropic")), json_mode=True)
    oa, an = server.requests
    assert oa.body["response_format"] == {"type": "json_object"}
    assert "JSON object only" in an.system


def test_reasoning_models_get_max_completion_tokens(server):
    server.push_text("x")
    ask(LLMClient(provider(server, "openai", model="o3-mini", max_tokens=123)))
    body = server.requests[0].body
    assert body["max_completion_tokens"] == 123 and "temperature" not in body and "max_tokens" not in body


def test_concurrency_limit_is_shared_by_clients_of_one_provider(server):
    p = provider(server, "openai", concurrency=2)

    async def many():
        clients = [LLMClient(p) for _ in range(5)]
        return await asyncio.gather(*(c.complete("s", [{"role": "user", "content": "x"}]) for c in clients))

    for _ in range(5):
        server.push_text("r", delay=0.2)
    assert len(asyncio.run(many())) == 5
    assert server.max_inflight == 2


def test_requests_per_minute_spaces_requests(server):
    p = provider(server, "openai", requests_per_minute=600)  # 10 per second, burst 1

    async def many():
        c = LLMClient(p)
        t0 = time.monotonic()
        await asyncio.gather(*(c.complete("s", [{"role": "user", "content": "x"}]) for _ in range(5)))
        return time.monotonic() - t0

    for _ in range(5):
        server.push_text("r")
    assert asyncio.run(many()) >= 0.38  # 4 waits of 0.1 s
    assert len(server.requests) == 5


def test_token_bucket_with_fake_clock():
    now = [0.0]
    slept: list[float] = []

    async def run():
        b = TokenBucket(60, clock=lambda: now[0])  # 1 per second

        async def fake_sleep(s):
            slept.append(s)
            now[0] += s

        orig = asyncio.sleep
        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(3):
                await b.acquire()
        finally:
            asyncio.sleep = orig  # type: ignore[assignment]

    asyncio.run(run())
    assert slept == [pytest.approx(1.0), pytest.approx(1.0)]
    with pytest.raises(ValueError, match="must be > 0"):
        TokenBucket(0)


def test_pricing_table_and_overrides():
    assert price_for(ProviderConfig(kind="anthropic", model="claude-sonnet-4-5-20250929")) == (3.0, 15.0)
    assert price_for(ProviderConfig(kind="openai", model="gpt-4o-mini-2024")) == (0.15, 0.6)  # longest prefix
    assert price_for(ProviderConfig(kind="openai", model="gpt-4o")) == (2.5, 10.0)
    assert price_for(ProviderConfig(kind="openai-compatible", model="qwen")) == (0.0, 0.0)
    p = ProviderConfig(kind="openai", model="gpt-4o", price_in_per_mtok=1.0)
    assert price_for(p) == (1.0, 10.0)
    assert cost_usd(p, 2_000_000, 100_000) == pytest.approx(2.0 + 1.0)
