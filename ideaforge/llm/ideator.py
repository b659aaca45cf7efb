"""Ideas from an LLM: exploit the best executed ideas, explore new directions, JSON output validated and retried."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ideaforge.llm.client import LLMClient
from ideaforge.llm.dedup import drop_duplicates
from ideaforge.llm.prompts import render, render_files
from ideaforge.models import Idea, IdeaSummary, IdeateRequest, IdeateResult, ProviderConfig, Usage
from ideaforge.names import idea_id
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

MAX_FILE_CHARS = 40_000
MAX_ARCHIVE_TITLES = 200


class IdeaDraft(BaseModel):
    """One idea as the model writes it."""

    model_config = ConfigDict(extra="ignore")
    title: str = Field(min_length=3, max_length=200)
    description: str = Field(min_length=10, max_length=4000)
    parent_ids: list[str] = Field(default_factory=list)


class IdeaBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ideas: list[IdeaDraft]


def parse_ideas(text: str) -> IdeaBatch:
    """Validate a reply as ``{"ideas": [...]}`` (a JSON object, possibly fenced or wrapped in prose)."""
    t = text.strip()
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", t, re.S)
    if fenced:
        t = fenced.group(1).strip()
    starts = [k for k in (t.find("{"), t.find("[")) if k >= 0]
    if not starts:
        raise ValueError("no JSON object in the reply")
    data, _ = json.JSONDecoder().raw_decode(t[min(starts) :])
    if isinstance(data, list):
        data = {"ideas": data}
    return IdeaBatch.model_validate(data)


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


class LLMIdeator:
    """``propose`` asks for ``req.n`` ideas in one JSON reply; invalid or duplicate ones are asked for again
    (at most ``provider.max_retries`` follow-ups, with the problems fed back); then what is valid is returned
    with ``errors``. Provider failures (auth, outage after retries) raise :class:`activities.llm.LLMError`."""

    def __init__(
        self, provider: ProviderConfig, store: ObjectStore | None = None, dedup_threshold: float = 0.8
    ):
        self.provider = provider
        self.store = store
        self.dedup_threshold = dedup_threshold
        self.client = LLMClient(provider)

    def __repr__(self) -> str:
        return f"LLMIdeator({self.client!r})"

    async def propose(self, req: IdeateRequest, env: ResearchEnv) -> IdeateResult:
        n = req.n
        if n <= 0:
            return IdeateResult(ideas=[])
        exploit_ok = req.strategy == "evolution" and bool(req.parents)
        n_exploit = min(n, round(req.exploit_share * n)) if exploit_ok else 0
        known_ids = (
            ({s.idea_id for s in req.archive} | {s.idea_id for s in req.parents}) if n_exploit else set()
        )
        system = render("ideate_system")
        user = render(
            "ideate_user",
            env_name=env.spec.name,
            description=env.spec.description.strip(),
            metric=env.spec.metric,
            direction_text=direction_text(env),
            baseline_metric=_fmt(req.baseline_metric),
            editable=", ".join(env.spec.editable_files),
            protected=", ".join(env.spec.protected_files) or "none",
            files=render_files(read_editable(env)),
            history=self._history(req, n_exploit > 0),
            n=n,
            n_exploit=n_exploit,
            n_explore=n - n_exploit,
        )
        messages: list[dict] = [{"role": "user", "content": user}]
        usage, errors, exchanges = Usage(), [], []
        kept: list[tuple[IdeaDraft, str]] = []  # (draft, origin)
        rejected = 0
        for attempt in range(self.provider.max_retries + 1):
            comp = await self.client.complete(system, messages, json_mode=True)
            usage += comp.usage
            exchanges.append(
                {"messages": list(messages), "response": comp.text, "usage": comp.usage.model_dump()}
            )
            problems: list[str] = []
            try:
                batch = parse_ideas(comp.text)
            except (json.JSONDecodeError, ValidationError, ValueError) as e:
                problems.append(f"reply is not valid JSON of the required shape: {_short(e)}")
                batch = IdeaBatch(ideas=[])
            fresh = self._accept(batch.ideas, known_ids, problems if n_exploit else [])
            new_kept, dup = self._dedup(fresh, kept, req.archive, req)
            rejected += dup
            if dup:
                problems.append(
                    f"{dup} idea(s) repeated an idea already tried or proposed; propose different ones"
                )
            kept.extend(new_kept[: max(0, n - len(kept))])
            errors.extend(f"attempt {attempt + 1}: {p}" for p in problems)
            missing = n - len(kept)
            if missing <= 0:
                break
            if attempt < self.provider.max_retries:
                need_exploit = max(0, n_exploit - sum(o == "exploit" for _, o in kept))
                feedback = (problems and "Problems: " + "; ".join(problems) + "\n") or ""
                messages = [
                    *messages,
                    {"role": "assistant", "content": comp.text or "(empty)"},
                    {
                        "role": "user",
                        "content": f"{feedback}Return exactly {missing} ideas: {min(need_exploit, missing)} that "
                        f"improve the parents and {missing - min(need_exploit, missing)} new directions, as the "
                        'JSON object {"ideas": [...]}.',
                    },
                ]
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
        transcript = self._store_transcript(req, system, exchanges)
        return IdeateResult(
            ideas=ideas, usage=usage, rejected_duplicates=rejected, errors=errors, transcript=transcript
        )

    # -- helpers ------------------------------------------------------------------------------------------

    def _history(self, req: IdeateRequest, show_parents: bool) -> str:
        parts = []
        if show_parents:
            parts.append("## Parents: the best executed ideas so far")
            for p in req.parents:
                parts.append(
                    f"- [id: {p.idea_id}] {p.title} ({_outcome(p, req.baseline_metric)})\n  {p.text.strip()}"
                )
        if req.archive:
            parts.append("## Already tried (do not repeat)")
            for s in req.archive[-MAX_ARCHIVE_TITLES:]:
                parts.append(f"- {s.title} ({_outcome(s, req.baseline_metric)})")
        if req.human_ideas:
            parts.append("## Already queued by a human (do not repeat)")
            parts.extend(f"- {h.strip()[:200]}" for h in req.human_ideas)
        return "\n".join(parts) or "No ideas have been tried yet."

    @staticmethod
    def _accept(drafts: list[IdeaDraft], known: set[str], problems: list[str]) -> list[tuple[IdeaDraft, str]]:
        out = []
        for d in drafts:
            bad = [p for p in d.parent_ids if p not in known]
            if bad:
                problems.append(f"unknown parent_ids {bad} dropped (use ids written as [id: ...])")
                d.parent_ids = [p for p in d.parent_ids if p in known]
            out.append((d, "exploit" if d.parent_ids else "explore"))
        return out

    def _dedup(self, fresh, kept, archive: list[IdeaSummary], req: IdeateRequest):
        def as_idea(d: IdeaDraft, k: int) -> Idea:
            return Idea(idea_id=f"draft-{k}", epoch=req.epoch, index=k, title=d.title, text=d.description)

        previous = [as_idea(d, k) for k, (d, _) in enumerate(kept)]
        candidates = [as_idea(d, len(previous) + k) for k, (d, _) in enumerate(fresh)]
        pseudo_archive = [*archive, *(_summary(i) for i in previous)]
        survivors, dup = drop_duplicates(candidates, pseudo_archive, self.dedup_threshold)
        ids = {i.idea_id for i in survivors}
        return [f for f, c in zip(fresh, candidates, strict=True) if c.idea_id in ids], dup

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


def _summary(idea: Idea) -> IdeaSummary:
    return IdeaSummary(
        idea_id=idea.idea_id,
        epoch=idea.epoch,
        title=idea.title,
        text=idea.text,
        origin="explore",
        status="ok",
    )


def _outcome(s: IdeaSummary, baseline: float | None) -> str:
    if s.status != "ok" or s.metric is None:
        return f"failed: {s.category or 'unknown'}"
    delta = f", baseline {_fmt(baseline)}" if baseline is not None else ""
    return f"metric {_fmt(s.metric)}{delta}"


def _fmt(x: float | None) -> str:
    return "not measured yet" if x is None else f"{x:.4g}"


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
