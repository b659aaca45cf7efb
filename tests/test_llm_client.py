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
    # reasoning counts in max_completion_tokens: the answer budget plus headroom for medium effort
    assert (
        body["max_completion_tokens"] == 123 + 8192 and "temperature" not in body and "max_tokens" not in body
    )


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
    assert price_for(ProviderConfig(kind="anthropic", model="claude-sonnet-4-5-20250929")) == (3.0, 15.0, 0.3)
    assert price_for(ProviderConfig(kind="openai", model="gpt-4o-mini-2024"))[:2] == (
        0.15,
        0.6,
    )  # longest prefix
    assert price_for(ProviderConfig(kind="openai", model="gpt-4o")) == (2.5, 10.0, 1.25)
    assert price_for(ProviderConfig(kind="openai-compatible", model="qwen")) == (0.0, 0.0, 0.0)
    p = ProviderConfig(kind="openai", model="gpt-4o", price_in_per_mtok=1.0)
    assert price_for(p) == (1.0, 10.0, 0.5)  # the table's cache discount (50%) kept under an override
    assert cost_usd(p, 2_000_000, 100_000) == pytest.approx(2.0 + 1.0)
    # cached input at the cache price; Anthropic cache writes at 1.25x input
    a = ProviderConfig(kind="anthropic", model="claude-sonnet-4-6")
    assert cost_usd(a, 10_000, 0, cached_input_tokens=6_000, cache_write_tokens=4_000) == pytest.approx(
        (6_000 * 0.3 + 4_000 * 3.0 * 1.25) / 1e6
    )


# --------------------------------------------------------------------------- thinking, reasoning, caching


def test_anthropic_thinking_budget_reaches_the_api(server):
    server.push_text("answer")
    p = provider(server, "anthropic", thinking="budget", thinking_budget=3000, max_tokens=8000)
    out = ask(LLMClient(p))
    body = server.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert (
        body["max_tokens"] == 11_000 and "temperature" not in body
    )  # budget + answer, temperature default 1
    assert out.text == "answer" and out.thinking  # the thinking block is kept apart from the answer
    assert out.usage.reasoning_tokens == server.thinking_tokens == 1500
    assert out.usage.output_tokens == 1500 + 2  # thinking counts as output


def test_anthropic_adaptive_thinking_and_effort(server):
    server.push_text("ok")
    ask(
        LLMClient(
            provider(server, "anthropic", thinking="adaptive", reasoning_effort="high", max_tokens=4000)
        )
    )
    body = server.requests[0].body
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}
    assert body["max_tokens"] == 4000 + 2048  # default thinking headroom


def test_thinking_config_errors():
    with pytest.raises(ValueError, match="thinking needs temperature 1"):
        ProviderConfig(kind="anthropic", thinking="budget", temperature=0.5)
    with pytest.raises(ValueError, match="Anthropic setting"):
        ProviderConfig(kind="openai", thinking="budget")
    with pytest.raises(ValueError, match="greater than or equal to 1024"):
        ProviderConfig(kind="anthropic", thinking="budget", thinking_budget=500)


def test_fake_rejects_malformed_thinking_like_the_api(server):
    """budget >= max_tokens is a 400 from the API: a clear, non-retryable error, one request."""

    async def raw():
        c = LLMClient(provider(server, "anthropic"))
        return await c._sdk.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": "x"}],
        )

    import anthropic

    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        asyncio.run(raw())
    assert len(server.requests) == 1


def test_openai_reasoning_effort_and_reasoning_tokens(server):
    server.push_text("fine")
    out = ask(
        LLMClient(provider(server, "openai", model="gpt-5-mini", reasoning_effort="high", max_tokens=1000))
    )
    body = server.requests[0].body
    assert body["reasoning_effort"] == "high" and body["max_completion_tokens"] == 1000 + 16384
    assert out.usage.reasoning_tokens == 4000 and out.usage.output_tokens == 4000 + 1
    assert not out.truncated


def test_reasoning_effort_on_a_non_reasoning_model_is_a_clear_400(server):
    c = LLMClient(provider(server, "openai", model="gpt-4o", reasoning_effort="low"))
    with pytest.raises(LLMError, match="HTTP 400.*reasoning_effort") as ei:
        ask(c)
    assert not ei.value.retryable


def test_reasoning_that_eats_the_limit_gives_an_empty_truncated_reply(server):
    server.push_text("the answer", thinking_tokens=5000)
    p = provider(server, "openai", model="gpt-5", max_tokens=100, thinking_budget=1024)
    out = ask(LLMClient(p))
    assert out.text == "" and out.finish_reason == "length" and out.truncated
    assert out.usage.truncated_calls == 1 and out.usage.reasoning_tokens == 1124


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_max_tokens_truncates_with_the_api_finish_reason(server, kind):
    server.push_text("word " * 400)  # ~500 tokens
    out = ask(LLMClient(provider(server, kind, max_tokens=50)))
    assert out.truncated and out.finish_reason == ("max_tokens" if kind == "anthropic" else "length")
    assert len(out.text) == 200 and out.usage.truncated_calls == 1


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
def test_stable_system_prompt_is_cached_and_priced(server, kind):
    system = "You are a researcher. " + "The codebase line. " * 600  # ~3000 tokens
    model = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-5"}[kind]
    c = LLMClient(
        provider(
            server,
            kind,
            model=model,
            max_tokens=100,
            reasoning_effort="minimal" if kind == "openai" else None,
        )
    )

    async def two():
        a = await c.complete(system, [{"role": "user", "content": "first"}])
        b = await c.complete(system, [{"role": "user", "content": "second"}])
        return a, b

    server.push_text("a")
    server.push_text("b")
    first, second = asyncio.run(two())
    if kind == "anthropic":
        assert server.requests[0].body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert first.usage.cache_write_tokens > 2500 and first.usage.cached_input_tokens == 0
    else:
        assert server.requests[0].body["prompt_cache_key"] == server.requests[1].body["prompt_cache_key"]
    assert second.usage.cached_input_tokens > 2500
    assert second.usage.input_tokens == first.usage.input_tokens  # cached tokens are part of the prompt
    assert second.usage.cost_usd < first.usage.cost_usd  # cache reads are cheaper


# --------------------------------------------------------------------------- budget and cancelled samples


def test_cost_across_parallel_samples_counts_the_cancelled_ones(server):
    """Three samples in parallel; the first to answer wins and the other two are cancelled: the ledger still
    charges their prompts and what they generated meanwhile."""
    from ideaforge.llm.budget import Budget

    p = provider(server, "openai", model="gpt-4o", concurrency=3)
    server.push_text("fast", delay=0.05, input_tokens=1000, output_tokens=10)
    server.push_text("slow", delay=3.0)
    server.push_text("slow", delay=3.0)
    ledger = Budget()

    async def race():
        c = LLMClient(p)
        tasks = [
            asyncio.create_task(c.complete("s" * 4000, [{"role": "user", "content": "x"}], budget=ledger))
            for _ in range(3)
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.3)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return next(iter(done)).result()

    winner = asyncio.run(race())
    u = ledger.usage
    assert winner.text == "fast"
    assert (u.calls, u.cancelled_calls) == (1, 2)
    assert u.input_tokens == 1000 + 2 * 1000  # 4000 chars of prompt ~ 1000 tokens each
    assert u.output_tokens > 10  # the cancelled ones generated for ~0.3 s
    assert u.cost_usd > winner.usage.cost_usd > 0
    assert ledger.reserved_usd == 0


def test_budget_cap_is_enforced_before_each_call(server):
    from ideaforge.llm.budget import Budget
    from ideaforge.llm.errors import BudgetExhausted

    p = provider(server, "openai", model="gpt-4o", max_tokens=100)
    server.push_text("one", input_tokens=1000, output_tokens=100)  # $0.0035
    server.push_text("two")
    budget = Budget(cap_usd=0.003)
    c = LLMClient(p)
    assert ask(c, budget=budget).text == "one"  # started under the cap
    with pytest.raises(BudgetExhausted, match="budget exhausted.*cap \\$0.0030"):
        ask(c, budget=budget)
    assert len(server.requests) == 1  # the refused call never reached the provider
    assert budget.spent_usd == pytest.approx(0.0035)


def test_calls_in_flight_count_against_the_cap(server):
    """Parallel calls cannot all start just under the cap: each reserves its worst case while in flight."""
    from ideaforge.llm.budget import Budget
    from ideaforge.llm.errors import BudgetExhausted

    p = provider(server, "openai", model="gpt-4o", max_tokens=1000, concurrency=4)
    c = LLMClient(p)
    worst = c.worst_case_usd("s", [{"role": "user", "content": "x"}])
    budget = Budget(cap_usd=worst * 1.5)
    for _ in range(4):
        server.push_text("r", delay=0.3, input_tokens=10, output_tokens=10)

    async def many():
        return await asyncio.gather(
            *(c.complete("s", [{"role": "user", "content": "x"}], budget=budget) for _ in range(4)),
            return_exceptions=True,
        )

    results = asyncio.run(many())
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 2  # 2 fit under 1.5x one worst case
    assert len(server.requests) == 2


def test_whole_call_budget_never_starts_a_call_it_cannot_cover(server):
    """``whole_calls=True`` (the implementer): a call starts only if its worst case fits in what is left."""
    from ideaforge.llm.budget import Budget
    from ideaforge.llm.errors import BudgetExhausted

    p = provider(server, "openai", model="gpt-4o", max_tokens=1000, concurrency=4)
    c = LLMClient(p)
    msgs = [{"role": "user", "content": "x"}]
    worst = c.worst_case_usd("s", msgs)
    for _ in range(4):
        server.push_text("r", delay=0.3, input_tokens=10, output_tokens=10)

    async def many(budget):
        return await asyncio.gather(
            *(c.complete("s", msgs, budget=budget) for _ in range(4)), return_exceptions=True
        )

    budget = Budget(cap_usd=worst * 1.5, whole_calls=True)
    results = asyncio.run(many(budget))
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 3  # only one worst case fits in 1.5
    assert len(server.requests) == 1 and budget.spent_usd <= budget.cap_usd
    with pytest.raises(BudgetExhausted, match="this call up to"):
        Budget(cap_usd=worst * 0.99, whole_calls=True).reserve(worst)
    assert Budget(cap_usd=worst, whole_calls=True).reserve(worst) == 0  # exactly fits
