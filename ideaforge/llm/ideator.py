"""Ideas from an LLM at campaign scale: many concurrent calls of a few ideas each, exploit and explore prompted
separately, each call with its own randomly drawn context, ideas validated one by one.

One epoch of ``req.n`` ideas is split into calls of ``provider.ideas_per_call`` ideas (the paper: 10), run
concurrently (bounded by ``provider.concurrency``). The large stable part of the prompt (instructions, env,
code, guidance) is the system prompt, cached across calls; the context and task vary per call. A reply cut at
the token limit keeps its complete ideas and is followed by a call with twice the answer budget, or, at the
ceiling, for fewer ideas. A call that returns too few valid, new ideas asks again for the missing ones, with
the problems fed back, at most ``provider.max_retries`` times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ideaforge.llm.budget import Budget
from ideaforge.llm.client import Completion, LLMClient
from ideaforge.llm.dedup import Deduper
from ideaforge.llm.errors import BudgetExhausted, LLMError
from ideaforge.llm.idea_reply import IdeaDraft, parse_ideas_lenient
from ideaforge.llm.prompts import render, render_files
from ideaforge.models import Idea, IdeaSummary, IdeateRequest, IdeateResult, ProviderConfig
from ideaforge.names import idea_id
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

Mode = Literal["exploit", "explore"]

MAX_FILE_CHARS = 40_000
MAX_ANSWER_TOKENS = 32_000  # ceiling of the answer budget when a truncated reply is retried with more
# context drawn per call (the paper: up to 100 ideas above the baseline, resampled on every call)
MAX_PARENTS_SHOWN = 8
MAX_WINNERS_SHOWN = 40
MAX_TRIED_SHOWN = 60
MAX_FAILURES_SHOWN = 20
MAX_TITLES_SHOWN = 150
MAX_DIFF_CHARS = 3_000
MAX_IDEA_CHARS = 600


def read_editable(env: ResearchEnv, base: Path | None = None) -> dict[str, str]:
    """Editable files of the env (from ``base`` or the pristine baseline), each cut at MAX_FILE_CHARS."""
    root = base or env.baseline
    out = {}
    for rel in env.spec.editable_files:
        text = (root / rel).read_text()
        out[rel] = text if len(text) <= MAX_FILE_CHARS else text[:MAX_FILE_CHARS] + "\n# ... (truncated)\n"
    return out


def direction_text(env: ResearchEnv) -> str:
    return "lower is better" if env.spec.direction == "min" else "higher is better"


def system_prompt(env: ResearchEnv) -> str:
    """The ideator's stable prompt prefix (instructions, env, guidance, code): the same for every call."""
    guidance = env.spec.ideator_guidance.strip()
    return render(
        "ideate_system",
        env_name=env.spec.name,
        description=env.spec.description.strip(),
        metric=env.spec.metric,
        direction_text=direction_text(env),
        editable=", ".join(env.spec.editable_files),
        protected=", ".join(env.spec.protected_files) or "none",
        guidance=f"\n## Guidance for this environment\n{guidance}\n" if guidance else "",
        files=render_files(read_editable(env)),
    )


# --------------------------------------------------------------------------- the per-call context


def render_context(
    req: IdeateRequest, env: ResearchEnv, mode: Mode, rng: random.Random, store: ObjectStore | None
) -> str:
    """What one call sees of the campaign so far, drawn at random with ``rng`` (seeded per call).

    exploit: parents (with their diffs and results) and a sample of other ideas that beat the baseline;
    explore: a sample of all tried ideas with results, and failures with their categories. Both: the baseline,
    the env's seed noise, titles of other tried ideas, and human ideas queued this epoch.
    """
    spec = env.spec
    base = req.baseline_metric
    noise = f" Seed-to-seed noise of the metric: about ±{spec.seed_noise:g}." if spec.seed_noise else ""
    parts = [
        f"## Where the campaign stands\nBaseline {spec.metric}: {_fmt(base)} ({direction_text(env)}).{noise}"
    ]
    shown: set[str] = set()
    ok = [s for s in req.archive if s.status == "ok" and s.metric is not None]
    winners = [s for s in ok if base is None or spec.better(s.metric, base)]  # type: ignore[arg-type]
    if mode == "exploit":
        parents = _sample(rng, list(req.parents), MAX_PARENTS_SHOWN)
        if parents:
            parts.append("## Parents: the best executed ideas so far")
            for p in parents:
                parts.append(_idea_block(p, req, env, store, with_diff=True))
                shown.add(p.idea_id)
        others = _sample(rng, [s for s in winners if s.idea_id not in shown], MAX_WINNERS_SHOWN)
        if others:
            parts.append("## Other ideas that beat the baseline (a random sample)")
            parts.extend(_idea_block(s, req, env, store, with_diff=False) for s in others)
            shown.update(s.idea_id for s in others)
    else:
        tried = _sample(rng, ok, MAX_TRIED_SHOWN)
        if tried:
            parts.append("## Ideas tried so far and their results (a random sample)")
            parts.extend(_idea_block(s, req, env, store, with_diff=False) for s in tried)
            shown.update(s.idea_id for s in tried)
        failed = _sample(rng, [s for s in req.archive if s.status != "ok"], MAX_FAILURES_SHOWN)
        if failed:
            parts.append("## Ideas that failed (category in brackets)")
            parts.extend(f"- [{s.category or 'unknown'}] {s.title}: {_clip(s.text, 200)}" for s in failed)
            shown.update(s.idea_id for s in failed)
    rest = [s for s in req.archive if s.idea_id not in shown][-MAX_TITLES_SHOWN:]
    if rest:
        parts.append("## Also tried already (do not repeat)")
        parts.extend(f"- {s.title} ({_outcome(s, base)})" for s in rest)
    if req.human_ideas:
        parts.append("## Already queued by a human this epoch (do not repeat)")
        parts.extend(f"- {_clip(h, 200)}" for h in req.human_ideas)
    if len(parts) == 1:
        parts.append("No ideas have been tried yet.")
    return "\n".join(parts)


def _idea_block(
    s: IdeaSummary, req: IdeateRequest, env: ResearchEnv, store: ObjectStore | None, with_diff: bool
) -> str:
    out = f"- [id: {s.idea_id}] {s.title} ({_outcome(s, req.baseline_metric)})\n  {_clip(s.text, MAX_IDEA_CHARS)}"
    if with_diff and s.diff is not None and store is not None:
        try:
            diff = store.get_text(s.diff)
        except Exception as e:  # a missing diff must not cost the epoch its ideas
            log.warning("diff of %s unreadable: %s", s.idea_id, e)
        else:
            out += f"\n  Its code change:\n```diff\n{_clip(diff, MAX_DIFF_CHARS)}\n```"
    stats = req.parent_stats.get(s.idea_id) if with_diff else None
    if stats and stats.children:  # how the policy's children of this parent did (steady-state campaigns)
        kids = ", ".join("failed" if d is None else f"{d:+.4g}" for d in stats.child_deltas) or "none finished"
        out += f"\n  Children so far: {stats.children} (improvement over the baseline of the last: {kids})"
    return out


def _sample(rng: random.Random, items: list, k: int) -> list:
    return rng.sample(items, k) if len(items) > k else rng.sample(items, len(items))


# --------------------------------------------------------------------------- the ideator


@dataclass
class CallPlan:
    """One completion of the epoch: ``n`` ideas of one mode, with its own context seed."""

    index: int
    mode: Mode
    n: int


@dataclass
class CallOutcome:
    kept: list[tuple[IdeaDraft, Mode]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exchanges: list[dict] = field(default_factory=list)
    rejected: int = 0
    failure: LLMError | None = None


def plan_calls(n: int, n_exploit: int, per_call: int) -> list[CallPlan]:
    """Exploit calls first, then explore; each mode's ideas split into near-equal calls of <= ``per_call``."""
    plans: list[CallPlan] = []
    for mode, count in (("exploit", n_exploit), ("explore", n - n_exploit)):
        if count <= 0:
            continue
        calls = math.ceil(count / per_call)
        for k in range(calls):
            size = count // calls + (1 if k < count % calls else 0)
            plans.append(CallPlan(len(plans), mode, size))  # type: ignore[arg-type]
    return plans


class LLMIdeator:
    """``propose`` returns up to ``req.n`` valid, new ideas with ``errors`` saying what went wrong. Provider
    failures raise :class:`LLMError` only when no idea at all came back."""

    def __init__(
        self, provider: ProviderConfig, store: ObjectStore | None = None, deduper: Deduper | None = None
    ) -> None:
        self.provider = provider
        self.store = store
        self.deduper = deduper or Deduper()
        self.client = LLMClient(provider)

    def __repr__(self) -> str:
        return f"LLMIdeator({self.client!r})"

    async def propose(self, req: IdeateRequest, env: ResearchEnv) -> IdeateResult:
        n = req.n
        if n <= 0:
            return IdeateResult(ideas=[])
        exploit_ok = req.strategy == "evolution" and bool(req.parents)
        n_exploit = min(n, round(req.exploit_share * n)) if exploit_ok else 0
        system = system_prompt(env)
        budget = Budget(None if req.budget_left_usd is None else max(0.0, req.budget_left_usd))
        # shared by all calls (first come, first kept); embedding the archive runs off the event loop
        seen = await asyncio.to_thread(self.deduper.index, req.archive)
        known = {s.idea_id for s in req.archive} | {s.idea_id for s in req.parents}
        plans = plan_calls(n, n_exploit, self.provider.ideas_per_call)
        outcomes = await asyncio.gather(
            *(self._run_call(p, req, env, system, budget, seen, known) for p in plans)
        )
        kept = [k for o in outcomes for k in o.kept][:n]
        errors = [e for o in outcomes for e in o.errors]
        failures = [o.failure for o in outcomes if o.failure is not None]
        if failures and not kept and not isinstance(failures[0], BudgetExhausted):
            raise failures[0]
        if len(kept) < n:
            errors.append(f"got {len(kept)} valid new ideas of {n} requested")
        start = len(req.human_ideas)
        ideas = [
            Idea(
                idea_id=idea_id(req.campaign, req.epoch, start + i),
                epoch=req.epoch,
                index=start + i,
                title=d.title.strip(),
                text=d.description.strip(),
                origin=origin,
                parent_ids=d.parent_ids,
                seed=req.seed,
            )
            for i, (d, origin) in enumerate(kept)
        ]
        transcript = self._store_transcript(req, system, [x for o in outcomes for x in o.exchanges])
        return IdeateResult(
            ideas=ideas,
            usage=budget.usage,
            rejected_duplicates=sum(o.rejected for o in outcomes),
            errors=errors,
            transcript=transcript,
        )

    async def _run_call(
        self,
        plan: CallPlan,
        req: IdeateRequest,
        env: ResearchEnv,
        system: str,
        budget: Budget,
        seen,
        known: set[str],
    ) -> CallOutcome:
        """One planned call and its follow-ups until it has ``plan.n`` valid, new ideas or runs out of tries."""
        out = CallOutcome()
        rng = random.Random(f"{req.campaign}:{req.epoch}:{req.seed}:{plan.mode}:{plan.index}")
        context = render_context(req, env, plan.mode, rng, self.store)
        answer_tokens = self.provider.max_tokens
        ask = plan.n
        feedback: list[str] = []
        label = f"{plan.mode} call {plan.index + 1}"
        for attempt in range(self.provider.max_retries + 1):
            missing = plan.n - len(out.kept)
            user = render(f"ideate_{plan.mode}", context=context, n=min(ask, missing))
            if attempt:
                user += _follow_up(feedback, [d.title for d, _ in out.kept])
            messages = [{"role": "user", "content": user}]
            try:
                comp = await self.client.complete(
                    system, messages, json_mode=True, max_tokens=answer_tokens, budget=budget
                )
            except LLMError as e:
                out.failure = e
                out.errors.append(f"{label}, attempt {attempt + 1}: {e}")
                break
            out.exchanges.append(
                {
                    "call": plan.index,
                    "mode": plan.mode,
                    "messages": messages,
                    "response": comp.text,
                    "finish_reason": comp.finish_reason,
                    "usage": comp.usage.model_dump(),
                }
            )
            drafts, problems = parse_ideas_lenient(comp.text)
            problems += self._limit_problem(comp, answer_tokens, bool(drafts))
            if comp.truncated or not comp.text.strip():
                if answer_tokens < MAX_ANSWER_TOKENS:
                    answer_tokens = min(MAX_ANSWER_TOKENS, answer_tokens * 2)
                else:
                    ask = max(1, min(ask, missing) // 2)
            dup = 0
            for draft, origin in self._check_parents(drafts, plan.mode, known, problems):
                if len(out.kept) >= plan.n:
                    break  # extra ideas are not taken (nor remembered as seen)
                (keep,), _ = self.deduper.admit([(draft.title, draft.description, draft.parent_ids)], seen)
                if keep:
                    out.kept.append((draft, origin))
                else:
                    dup += 1
            out.rejected += dup
            if dup:
                problems.append(
                    f"{dup} idea(s) repeated an idea already tried or proposed; propose different ones"
                )
            out.errors.extend(f"{label}, attempt {attempt + 1}: {p}" for p in problems)
            feedback = problems
            if len(out.kept) >= plan.n:
                break
        return out

    @staticmethod
    def _limit_problem(comp: Completion, answer_tokens: int, salvaged: bool) -> list[str]:
        if comp.truncated:
            kept = "its complete ideas were kept" if salvaged else "nothing usable came back"
            return [f"reply cut at the token limit ({answer_tokens} answer tokens; {kept})"]
        if not comp.text.strip():
            return [f"empty reply (finish_reason {comp.finish_reason!r})"]
        return []

    @staticmethod
    def _check_parents(
        drafts: list[IdeaDraft], mode: Mode, known: set[str], problems: list[str]
    ) -> list[tuple[IdeaDraft, Mode]]:
        out: list[tuple[IdeaDraft, Mode]] = []
        for d in drafts:
            if mode == "explore":
                d.parent_ids = []  # a new direction has no parents, whatever the reply says
            else:
                bad = [p for p in d.parent_ids if p not in known]
                if bad:
                    problems.append(f"unknown parent_ids {bad} dropped (use ids written as [id: ...])")
                    d.parent_ids = [p for p in d.parent_ids if p in known]
            out.append((d, "exploit" if d.parent_ids else "explore"))
        return out

    def _store_transcript(self, req: IdeateRequest, system: str, exchanges: list[dict]):
        if self.store is None:
            return None
        doc = {
            "role": "ideator",
            "provider": {
                "kind": self.provider.kind,
                "model": self.client.model,
                "base_url": self.provider.base_url,
            },
            "campaign": req.campaign,
            "epoch": req.epoch,
            "system": system,
            "exchanges": exchanges,
        }
        return self.store.put_text(self.client.scrub(json.dumps(doc, indent=1)), kind="transcript")


def _follow_up(problems: list[str], titles: list[str]) -> str:
    out = "\n\n## About your previous reply\n"
    if problems:
        out += "Problems: " + "; ".join(problems) + "\n"
    if titles:
        out += "Already accepted from you (do not repeat): " + "; ".join(titles) + "\n"
    return out


def _outcome(s: IdeaSummary, baseline: float | None) -> str:
    if s.status != "ok" or s.metric is None:
        return f"failed: {s.category or 'unknown'}"
    if baseline is None:
        return f"metric {_fmt(s.metric)}"
    return f"metric {_fmt(s.metric)}, baseline {_fmt(baseline)}, delta {s.metric - baseline:+.4g}"


def _clip(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + " ..."


def _fmt(x: float | None) -> str:
    return "not measured yet" if x is None else f"{x:.4g}"


