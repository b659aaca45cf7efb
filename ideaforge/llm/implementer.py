"""Turn an idea into a diff with an LLM: unified diff or SEARCH/REPLACE, repaired, checked, k samples in parallel.

The model sees the editable files as they are after the parent's diff (when the idea builds on a parent);
its change is applied on top of that in a scratch copy, and the stored diff is always relative to the
pristine baseline (``activities.patching.make_diff``), so a child's diff contains its parent's changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ideaforge.llm.client import LLMClient, LLMError
from ideaforge.llm.ideator import direction_text, read_editable
from ideaforge.llm.prompts import render, render_files
from ideaforge.models import Implementation, ImplementRequest, ProviderConfig, Usage
from ideaforge.patch.answer import apply_answer
from ideaforge.patch.apply import PatchError, check_applies, make_diff, patched_tree
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 3000
CUT_OFF_REASONS = {"max_tokens", "length", "model_context_window_exceeded"}  # Anthropic / OpenAI stop reasons


@dataclass
class _Sample:
    """Outcome of one completion: the final baseline-relative diff, or why it failed."""

    raw: str
    diff: str | None = None
    touched: list[str] | None = None
    error: str | None = None
    category: str = "patch_failed"


class LLMImplementer:
    """``implement`` samples ``req.parallel_samples`` completions concurrently and keeps the first (in
    completion order) whose change applies. Bad model output never raises: it yields ``applies=False``
    with the error (fed back by the workflow on the next revision). Provider failures raise LLMError."""

    def __init__(self, provider: ProviderConfig, store: ObjectStore | None = None) -> None:
        self.provider = provider
        self.store = store
        self.client = LLMClient(provider)

    def __repr__(self) -> str:
        return f"LLMImplementer({self.client!r})"

    async def implement(
        self, req: ImplementRequest, env: ResearchEnv, store: ObjectStore | None = None
    ) -> Implementation:
        store = store or self.store
        if store is None:
            raise ValueError("LLMImplementer.implement needs an ObjectStore (argument or constructor)")
        with tempfile.TemporaryDirectory(prefix="ideaforge-impl-") as tmp:
            current = Path(tmp) / "current"
            parent = store.get_text(req.parent_diff) if req.parent_diff is not None else None
            try:
                patched_tree(env.baseline, parent, current)
            except PatchError as e:
                return Implementation(
                    applies=False,
                    category="patch_failed",
                    error=f"the parent's diff no longer applies to the baseline: {e}",
                )
            system = render("implement_system")
            user = self._prompt(req, env, current, store)
            messages = [{"role": "user", "content": user}]
            k = max(1, req.parallel_samples)
            usage = Usage()
            samples: list[_Sample] = []
            winner: _Sample | None = None
            llm_errors: list[LLMError] = []
            tasks = [asyncio.create_task(self.client.complete(system, messages)) for _ in range(k)]
            try:
                for fut in asyncio.as_completed(tasks):
                    try:
                        comp = await fut
                    except LLMError as e:  # one failed sample does not sink the others
                        llm_errors.append(e)
                        continue
                    usage += comp.usage
                    cut_off = comp.finish_reason in CUT_OFF_REASONS
                    sample = await asyncio.to_thread(self._evaluate, comp.text, env, current, Path(tmp), cut_off)
                    samples.append(sample)
                    if sample.diff is not None:
                        winner = sample
                        break
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        if not samples and llm_errors:
            raise llm_errors[0]
        transcript = self._transcript(req, system, user, samples, usage, store)
        if winner is not None:
            ref = store.put_text(winner.diff, kind="diff")
            return Implementation(
                diff=ref, applies=True, touched_files=winner.touched or [], usage=usage, transcript=transcript
            )
        cats = {s.category for s in samples}
        category = "protected_file_touched" if cats == {"protected_file_touched"} else "patch_failed"
        error = self._combined_error(samples)
        raw = samples[0].raw if samples else ""
        ref = store.put_text(raw, kind="diff") if raw.strip() else None
        return Implementation(
            diff=ref, applies=False, error=error, category=category, usage=usage, transcript=transcript
        )

    # -- prompt -------------------------------------------------------------------------------------------

    def _prompt(self, req: ImplementRequest, env: ResearchEnv, current: Path, store: ObjectStore) -> str:
        revision = ""
        if req.previous_error:
            previous = store.get_text(req.previous_diff) if req.previous_diff else "(not available)"
            template = "implement_preflight" if req.previous_category == "preflight_failed" else "implement_revision"
            revision = render(template, previous=previous[:20_000], error=req.previous_error[:MAX_ERROR_CHARS])
        return render(
            "implement_user",
            title=req.idea.title,
            text=req.idea.text,
            env_name=env.spec.name,
            metric=env.spec.metric,
            direction_text=direction_text(env),
            editable=", ".join(env.spec.editable_files),
            protected=", ".join(env.spec.protected_files) or "none",
            files=render_files(read_editable(env, current)),
            revision=revision,
        )

    # -- one sample ---------------------------------------------------------------------------------------

    def _evaluate(self, text: str, env: ResearchEnv, current: Path, tmp: Path, cut_off: bool = False) -> _Sample:
        """Apply one reply on a fresh copy of ``current``; return the baseline-relative diff or the error."""
        sample = _Sample(raw=text)
        protected = env.spec.protected_files
        work = Path(tempfile.mkdtemp(prefix="sample-", dir=tmp))
        tree = work / "tree"
        shutil.copytree(current, tree)
        try:
            applied = apply_answer(text, tree, protected, env.spec.editable_files, cut_off=cut_off)
            gone = sorted(rel for rel, content in applied.files.items() if content is None)
            if gone:
                raise PatchError(f"the change deletes {gone}: deleting files is not supported; edit them instead")
            parent_changed = _changed_files(env.baseline, current)
            files = {
                rel: (tree / rel).read_text()
                for rel in sorted(set(applied.files) | parent_changed)
                if (tree / rel).is_file()
            }
            diff = make_diff(env.baseline, files)
            if not diff:
                raise PatchError("the change leaves the code identical to the baseline: nothing to run")
            info = check_applies(diff, env.baseline, protected)
            sample.diff, sample.touched = diff, info.files
        except PatchError as e:
            sample.error, sample.category = str(e), e.category
        except (ValueError, OSError, UnicodeDecodeError) as e:  # bad paths, unreadable content
            sample.error = f"{type(e).__name__}: {e}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return sample

    @staticmethod
    def _combined_error(samples: list[_Sample]) -> str:
        if not samples:
            return "no completion was received"
        if len(samples) == 1:
            return (samples[0].error or "unknown error")[:MAX_ERROR_CHARS]
        parts = [f"sample {i + 1}: {s.error}" for i, s in enumerate(samples)]
        return "\n".join(parts)[:MAX_ERROR_CHARS]

    def _transcript(self, req, system, user, samples, usage, store: ObjectStore):
        doc = {
            "role": "implementer",
            "provider": {
                "kind": self.provider.kind,
                "model": self.client.model,
                "base_url": self.provider.base_url,
            },
            "idea_id": req.idea.idea_id,
            "revision": req.revision,
            "system": system,
            "user": user,
            "samples": [
                {"response": s.raw, "applies": s.diff is not None, "error": s.error} for s in samples
            ],
            "usage": usage.model_dump(),
        }
        return store.put_text(self.client.scrub(json.dumps(doc, indent=1)), kind="transcript")


def _changed_files(baseline: Path, current: Path) -> set[str]:
    """Files that differ between the baseline and ``current`` (the parent's changes)."""
    out = set()
    for p in current.rglob("*"):
        if p.is_file():
            rel = p.relative_to(current).as_posix()
            b = baseline / rel
            if not b.is_file() or b.read_bytes() != p.read_bytes():
                out.add(rel)
    return out
