"""The embedded default ideator and implementer: no API key, no network, real code changes.

The ideator draws from the env's ``[offline]`` catalogue (hyperparameter knobs and code variants) and evolves
*recipes*: exploration proposes one new change to the baseline, exploitation stacks one more change onto a
parent's recipe. The implementer turns a recipe into exact edits of the baseline files and then into a real
unified diff that is checked with ``git apply``.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from ideaforge.models import (
    Idea,
    IdeaSummary,
    IdeateRequest,
    IdeateResult,
    Implementation,
    ImplementRequest,
    Knob,
    Mutation,
    OfflineCatalogue,
    Variant,
)
from ideaforge.names import idea_id
from ideaforge.patch.apply import PatchError, apply_search_replace, check_applies, make_diff
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore

log = logging.getLogger(__name__)

Recipe = tuple[tuple[str, object], ...]


def canonical(recipe: list[Mutation] | None) -> Recipe:
    """Order-free form of a recipe: a later knob value overrides an earlier one."""
    knobs: dict[str, object] = {}
    variants: set[str] = set()
    for m in recipe or []:
        if m.op.startswith("knob:"):
            knobs[m.op] = m.value
        else:
            variants.add(m.op)
    return tuple(sorted(knobs.items())) + tuple((v, None) for v in sorted(variants))


def to_mutations(recipe: Recipe) -> list[Mutation]:
    return [Mutation(op=op, value=value) for op, value in recipe]  # type: ignore[arg-type]


def format_value(value: object) -> str:
    return repr(value) if not isinstance(value, str) else value


def knob_current(knob: Knob, baseline: Path) -> str | None:
    m = re.search(knob.pattern, (baseline / knob.file).read_text(), re.M)
    return m.group(1).strip() if m else None


class OfflineIdeator:
    """Evolves recipes over the env's offline catalogue; deterministic for a given seed and epoch."""

    async def propose(self, req: IdeateRequest, env: ResearchEnv) -> IdeateResult:
        cat = env.spec.offline
        if not cat.knobs and not cat.variants:
            return IdeateResult(ideas=[], errors=[f"env {env.spec.name!r} has no [offline] catalogue"])
        rng = random.Random(f"{req.seed}:{req.campaign}:{req.epoch}")
        seen = {canonical(s.recipe) for s in req.archive if s.recipe is not None}
        seen.add(())
        start = len(req.human_ideas)
        n_exploit = round(req.exploit_share * req.n) if req.strategy == "evolution" and req.parents else 0
        ideas: list[Idea] = []
        for k in range(req.n):
            index = start + k
            parent = self._pick_parent(req.parents, rng) if k < n_exploit else None
            recipe = self._new_recipe(
                cat, env.baseline, rng, seen, parent, random_combo=req.strategy == "random"
            )
            if recipe is None:
                continue
            seen.add(recipe)
            ideas.append(self._idea(req, index, recipe, parent, cat))
        return IdeateResult(ideas=ideas)

    @staticmethod
    def _pick_parent(parents: list[IdeaSummary], rng: random.Random) -> IdeaSummary:
        weights = [1.0 / (rank + 1) for rank in range(len(parents))]  # parents arrive best first
        return rng.choices(parents, weights=weights, k=1)[0]

    def _new_recipe(
        self,
        cat: OfflineCatalogue,
        baseline: Path,
        rng: random.Random,
        seen: set[Recipe],
        parent: IdeaSummary | None,
        random_combo: bool,
    ) -> Recipe | None:
        base = list(parent.recipe or []) if parent else []
        for _ in range(200):
            steps = rng.randint(1, 3) if random_combo else 1
            recipe = list(base)
            for _ in range(steps):
                m = self._mutation(cat, baseline, rng, canonical(recipe))
                if m is not None:
                    recipe.append(m)
            c = canonical(recipe)
            if c not in seen and c != canonical(base):
                return c
        return None

    @staticmethod
    def _mutation(
        cat: OfflineCatalogue, baseline: Path, rng: random.Random, current: Recipe
    ) -> Mutation | None:
        present = {op for op, _ in current}
        variant_names = {op.removeprefix("variant:") for op in present if op.startswith("variant:")}
        options: list[Mutation] = []
        for knob in cat.knobs:
            now = dict(current).get(f"knob:{knob.name}")
            base_value = knob_current(knob, baseline)
            for v in knob.values:
                if v != now and format_value(v) != base_value:
                    options.append(Mutation(op=f"knob:{knob.name}", value=v))
        for var in cat.variants:
            blocked = (
                var.name in variant_names
                or any(c in variant_names for c in var.conflicts)
                or any(var.name in other.conflicts for other in cat.variants if other.name in variant_names)
            )
            if not blocked:
                # weight variants like a whole knob so code changes are proposed as often as hyperparameters
                options.extend([Mutation(op=f"variant:{var.name}")] * 3)
        return rng.choice(options) if options else None

    @staticmethod
    def _idea(
        req: IdeateRequest, index: int, recipe: Recipe, parent: IdeaSummary | None, cat: OfflineCatalogue
    ) -> Idea:
        descriptions = [describe(op, value, cat) for op, value in recipe]
        if parent:
            new = [
                d
                for (op, value), d in zip(recipe, descriptions, strict=True)
                if (op, value) not in canonical(parent.recipe)
            ]
            title = f"{parent.title[:60]} + {new[0][0] if new else 'variant'}"
            text = f"Build on {parent.idea_id} ({parent.title}). " + " ".join(d[1] for d in new)
        else:
            title = " + ".join(d[0] for d in descriptions)
            text = " ".join(d[1] for d in descriptions)
        return Idea(
            idea_id=idea_id(req.campaign, req.epoch, index),
            epoch=req.epoch,
            index=index,
            title=title[:120],
            text=text,
            origin="exploit" if parent else "explore",
            parent_ids=[parent.idea_id] if parent else [],
            recipe=to_mutations(recipe),
            seed=req.seed,
        )


def describe(op: str, value: object, cat: OfflineCatalogue) -> tuple[str, str]:
    """(short title, sentence) for one mutation."""
    kind, name = op.split(":", 1)
    if kind == "knob":
        knob = next(k for k in cat.knobs if k.name == name)
        return f"{name}={format_value(value)}", knob.text.format(name=name, value=format_value(value))
    var = next(v for v in cat.variants if v.name == name)
    return var.title, var.text


def recipe_files(recipe: list[Mutation], cat: OfflineCatalogue, baseline: Path) -> dict[str, str]:
    """New content of every file the recipe changes (variants first, then knobs). Raises PatchError."""
    variants = {v.name: v for v in cat.variants}
    knobs = {k.name: k for k in cat.knobs}
    c = canonical(recipe)
    files: dict[str, str] = {}
    for op, _ in c:
        if op.startswith("variant:"):
            var: Variant | None = variants.get(op.removeprefix("variant:"))
            if var is None:
                raise PatchError(f"unknown variant {op!r} for this env")
            files = apply_search_replace(baseline, var.edits, files)
    for op, value in c:
        if op.startswith("knob:"):
            knob = knobs.get(op.removeprefix("knob:"))
            if knob is None:
                raise PatchError(f"unknown knob {op!r} for this env")
            text = files.get(knob.file) or (baseline / knob.file).read_text()
            matches = list(re.finditer(knob.pattern, text, re.M))
            if len(matches) != 1:
                raise PatchError(f"knob {knob.name}: pattern matches {len(matches)} times in {knob.file}")
            m = matches[0]
            files[knob.file] = text[: m.start(1)] + format_value(value) + text[m.end(1) :]
    return files


def recipe_from_text(text: str, cat: OfflineCatalogue) -> list[Mutation]:
    """Best-effort reading of a human idea: variant names/titles and ``KNOB = value`` mentions."""
    low = text.lower()
    out: list[Mutation] = []
    for var in cat.variants:
        if var.name.lower() in low or var.title.lower() in low:
            out.append(Mutation(op=f"variant:{var.name}"))
    for knob in cat.knobs:
        m = re.search(rf"{re.escape(knob.name.lower())}\W+(?:to\W+)?(-?[0-9][0-9.e+-]*)", low)
        if m:
            raw = m.group(1).rstrip(".")
            try:
                value: float | int = int(raw) if re.fullmatch(r"-?\d+", raw) else float(raw)
            except ValueError:
                continue
            out.append(Mutation(op=f"knob:{knob.name}", value=value))
    return out


class OfflineImplementer:
    """Realises an offline recipe as a unified diff against the pristine baseline."""

    async def implement(self, req: ImplementRequest, env: ResearchEnv, store: ObjectStore) -> Implementation:
        recipe = req.idea.recipe
        if recipe is None:
            recipe = recipe_from_text(f"{req.idea.title}\n{req.idea.text}", env.spec.offline)
            if not recipe:
                return Implementation(
                    applies=False,
                    category="patch_failed",
                    error="the offline implementer only realises catalogue changes; this idea names none "
                    "(use an LLM implementer for free-form ideas)",
                )
        try:
            files = recipe_files(recipe, env.spec.offline, env.baseline)
            diff = make_diff(env.baseline, files)
            if not diff:
                raise PatchError("the change leaves the code unchanged")
            info = check_applies(diff, env.baseline, env.spec.protected_files)
        except PatchError as e:
            return Implementation(applies=False, category=e.category, error=str(e))  # type: ignore[arg-type]
        return Implementation(diff=store.put_text(diff, kind="diff"), applies=True, touched_files=info.files)
