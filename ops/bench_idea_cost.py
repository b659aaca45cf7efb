"""Estimated LLM cost per idea at the paper's scale, from the real ideation prompts and public list prices.

No LLM is called. The ideation prompt is built exactly as the ideator builds it (system prompt with the env's
code and guidance; per-call context drawn from a synthetic archive of past ideas), tokens are estimated as
characters / 4, and the output per call is an assumption printed with the figures. Implementation is estimated
from the implementer's real prompt (its stable block with the env, the protected files and the baseline, cached
after the first call of the env; the per-idea part uncached) and an assumed diff size and attempt count.

    python ops/bench_idea_cost.py [--env tiny_gpt] [--archive 160] [--ideas-per-call 10]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.llm import implement_prompt  # noqa: E402
from ideaforge.llm.ideator import render_context, system_prompt  # noqa: E402
from ideaforge.llm.pricing import cost_usd, price_for  # noqa: E402
from ideaforge.llm.prompts import render  # noqa: E402
from ideaforge.models import Idea, IdeaSummary, IdeateRequest, ImplementRequest, ProviderConfig  # noqa: E402
from ideaforge.research_envs.registry import load_env  # noqa: E402
from ideaforge.store.artifacts import LocalStore  # noqa: E402

IDEA_TEXT = (
    "Replace the constant learning rate with a warmup-stable-decay schedule: warm up linearly over the first 5% "
    "of steps to 3e-3, hold, then decay linearly to 3e-4 over the last 20%. Motivation: the constant rate "
    "overshoots late in training; a short decay phase consistently lowers the final loss at equal compute. "
    "Code: compute lr per step in the training loop and set it on every param group."
)
ANSWER_TOKENS_PER_IDEA = 180  # title + description of ~700 characters
MODELS = {
    # name: (provider settings, thinking/reasoning tokens assumed per call)
    "claude-sonnet-4-6": (dict(kind="anthropic", thinking="budget", thinking_budget=2048), 2048),
    "claude-opus-4-6": (dict(kind="anthropic", thinking="budget", thinking_budget=2048), 2048),
    "gpt-5": (dict(kind="openai", reasoning_effort="medium"), 3000),
}
IMPL_DIFF_TOKENS = 1500  # a focused diff with context lines
IMPL_THINKING = 3000  # the paper's implementer thinking budget
IMPL_ATTEMPTS = 1.5  # average implement calls per idea (first try + revisions)


def archive(n: int, direction: str, baseline: float) -> list[IdeaSummary]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        ok = rng.random() < 0.7
        delta = rng.gauss(0, 0.05)
        out.append(
            IdeaSummary(
                idea_id=f"campaign-x/e{i // 80:03d}/i{i % 80:02d}",
                epoch=i // 80,
                title=f"Idea {i}: warmup-stable-decay variant {i}",
                text=IDEA_TEXT,
                origin="explore",
                status="ok" if ok else "failed",
                category=None if ok else "crashed",
                metric=baseline + delta if ok else None,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="tiny_gpt")
    ap.add_argument("--archive", type=int, default=160, help="ideas already run (2 epochs of 80)")
    ap.add_argument("--ideas-per-call", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    env = load_env(args.env)
    past = archive(args.archive, env.spec.direction, 1.0)
    parents = sorted([s for s in past if s.metric is not None], key=lambda s: s.metric)[:4]
    provider = ProviderConfig(kind="anthropic", model="claude-sonnet-4-6", base_url="http://127.0.0.1:1")
    req = IdeateRequest(
        campaign="x",
        env=args.env,
        epoch=2,
        n=80,
        seed=0,
        provider=provider,
        exploit_share=0.5,
        parents=parents,
        archive=past,
        baseline_metric=1.0,
    )
    system = system_prompt(env)  # the ideator's stable prefix, built as the ideator builds it
    sys_tok = len(system) // 4
    ctx_tok = {}
    for mode in ("exploit", "explore"):
        ctx = render_context(req, env, mode, random.Random(1), None)
        ctx_tok[mode] = len(render(f"ideate_{mode}", context=ctx, n=args.ideas_per_call)) // 4
    calls = 80 // args.ideas_per_call
    per_call_in = sys_tok + (ctx_tok["exploit"] + ctx_tok["explore"]) // 2
    hit = max(0.0, 1 - args.concurrency / calls)  # the first wave writes the cache, later calls read it
    idea = Idea(idea_id="x/e002/i00", epoch=2, index=0, title="Warmup-stable-decay", text=IDEA_TEXT)
    impl_req = ImplementRequest(campaign="x", env=args.env, idea=idea, provider=provider)
    impl_sys = len(implement_prompt.system_prompt(env)) // 4  # built as the implementer builds it
    with tempfile.TemporaryDirectory() as tmp:
        user = implement_prompt.user_prompt(impl_req, env, env.baseline, None, LocalStore(Path(tmp)))
    impl_user = len(user) // 4
    impl_hit = max(0.0, 1 - args.concurrency / 80)  # ideas of one env share the block; the first wave writes it
    print(
        f"env {args.env}: system prompt ~{sys_tok} tokens (cached prefix), per-call context "
        f"exploit ~{ctx_tok['exploit']} / explore ~{ctx_tok['explore']} tokens; {calls} calls of "
        f"{args.ideas_per_call} ideas; cache hit share {hit:.0%}; implementer prompt ~{impl_sys} tokens stable "
        f"(cached, hit share {impl_hit:.0%}) + ~{impl_user} per idea"
    )
    print(
        f"assumed: {ANSWER_TOKENS_PER_IDEA} answer tokens per idea; implementer {IMPL_ATTEMPTS} calls per idea "
        f"of {impl_sys + impl_user} input, {IMPL_DIFF_TOKENS} diff + {IMPL_THINKING} thinking tokens"
    )
    for model, (kw, think) in MODELS.items():
        p = ProviderConfig(model=model, **kw)
        out = args.ideas_per_call * ANSWER_TOKENS_PER_IDEA + think
        cached = int(sys_tok * hit)
        write = sys_tok - cached if p.kind == "anthropic" else 0
        ideate = cost_usd(p, per_call_in, out, cached, write) / args.ideas_per_call
        impl_cached = int(impl_sys * impl_hit)
        impl_write = impl_sys - impl_cached if p.kind == "anthropic" else 0
        impl = IMPL_ATTEMPTS * cost_usd(
            p, impl_sys + impl_user, IMPL_DIFF_TOKENS + IMPL_THINKING, impl_cached, impl_write
        )
        price = price_for(p)
        print(
            f"{model:18s} prices in/out/cached ${price.input}/${price.output}/${price.cached_input} per Mtok: "
            f"ideation ${ideate:.4f}/idea, implementation ${impl:.4f}/idea, total ${ideate + impl:.4f}/idea, "
            f"80-idea epoch ${80 * (ideate + impl):.2f}"
        )


if __name__ == "__main__":
    main()
