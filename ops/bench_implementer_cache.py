"""What the implementer's prompt costs per idea, cold and cached: two ideas of one env through the real SDKs
against the loopback LLM server (which caches prompt prefixes as the real APIs do and reports cached tokens).

Prints, per env and model: the stable block and per-idea part in tokens (characters / 4), then the first and
second idea's input, cached and cache-written tokens and cost at the model's public price. The fake's replies are
short, so the figures isolate the input side (gpt-5's include the fake's 1,200 reasoning tokens at medium effort,
$0.012); real replies add their output tokens to both ideas alike.

    python ops/bench_implementer_cache.py [--env tiny_grpo --env grpo_math]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.llm.implement_prompt import system_prompt, user_prompt  # noqa: E402
from ideaforge.llm.implementer import LLMImplementer  # noqa: E402
from ideaforge.models import Idea, Implementation, ImplementRequest, ProviderConfig  # noqa: E402
from ideaforge.research_envs.registry import load_env  # noqa: E402
from ideaforge.store.artifacts import LocalStore  # noqa: E402
from tests.fakes.llm_server import FakeLLMServer  # noqa: E402

MODELS = [("anthropic", "claude-sonnet-4-6"), ("anthropic", "claude-opus-4-6"), ("openai", "gpt-5")]
KEY_ENV = "IDEAFORGE_BENCH_FAKE_KEY"


def two_ideas(env_name: str, kind: str, model: str, store: LocalStore) -> tuple[Implementation, Implementation]:
    env = load_env(env_name)
    with FakeLLMServer() as srv:
        p = ProviderConfig(kind=kind, model=model, base_url=srv.base_url(kind), api_key_env=KEY_ENV)
        reqs = [
            ImplementRequest(
                campaign="bench",
                env=env_name,
                idea=Idea(idea_id=f"bench/e001/i{i:02d}", epoch=1, index=i, title=f"Idea {i}", text="Change it."),
                provider=p,
            )
            for i in range(2)
        ]

        async def go() -> list[Implementation]:
            impl = LLMImplementer(p)
            return [await impl.implement(r, env, store) for r in reqs]

        first, second = asyncio.run(go())
    return first, second


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", action="append", help="env name (repeatable); default: the 4 shipped envs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault(KEY_ENV, "fake")
    envs = args.env or ["tiny_gpt", "tiny_grpo", "nanogpt_speedrun", "grpo_math"]
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        for name in envs:
            env = load_env(name)
            idea = Idea(idea_id="bench/e001/i00", epoch=1, index=0, title="Idea 0", text="Change it.")
            req = ImplementRequest(campaign="bench", env=name, idea=idea, provider=ProviderConfig())
            stable = len(system_prompt(env)) // 4
            per_idea = len(user_prompt(req, env, env.baseline, None, store)) // 4
            print(f"{name}: stable block ~{stable} tokens, per-idea part ~{per_idea} tokens")
            for kind, model in MODELS:
                a, b = two_ideas(name, kind, model, store)
                print(
                    f"  {model:18s} idea 1: in {a.usage.input_tokens} (cached {a.usage.cached_input_tokens}, "
                    f"written {a.usage.cache_write_tokens}) ${a.usage.cost_usd:.4f} | idea 2: in "
                    f"{b.usage.input_tokens} (cached {b.usage.cached_input_tokens}, written "
                    f"{b.usage.cache_write_tokens}) ${b.usage.cost_usd:.4f}"
                )


if __name__ == "__main__":
    main()
