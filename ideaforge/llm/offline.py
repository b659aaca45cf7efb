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
    """Evolves recipes over the env's offline catalogue; deterministic for a given seed and position.

    With a plan from the search policy (``req.plan``), each idea follows it: no parent = explore from the
    baseline with 1..``max_changes`` changes (fewer more likely), one parent = stack one change onto it, two
    parents = combine their recipes (crossover). Ideas that cannot be made (the catalogue is exhausted around
    a parent) are reported in ``errors``, never dropped silently.
    """

    async def propose(self, req: IdeateRequest, env: ResearchEnv) -> IdeateResult:
        cat = env.spec.offline
        if not cat.knobs and not cat.variants:
            return IdeateResult(ideas=[], errors=[f"env {env.spec.name!r} has no [offline] catalogue"])
        # seeded by the position in the campaign, not its name: paired campaigns draw the same ideas
        where = req.n_planned if req.n_planned is not None else f"{req.campaign}:{req.epoch}"
        rng = random.Random(f"{req.seed}:{where}")
        seen = {canonical(s.recipe) for s in req.archive if s.recipe is not None}
        seen |= {canonical(i.recipe) for i in req.in_flight if i.recipe is not None}
        seen.add(())
        start = len(req.human_ideas)
        by_id = {p.idea_id: p for p in [*req.parents, *req.archive]}
        plans = self._plans(req, by_id, rng)
        ideas: list[Idea] = []
        errors: list[str] = []
        for k, parents in enumerate(plans):
            recipe = None
            if len(parents) == 2:
                recipe = self._crossover(cat, parents, seen)
                if recipe is None:  # nothing new from the pair: improve the better one instead
                    parents = parents[:1]
            if recipe is None:
                recipe = self._new_recipe(
                    cat, env.baseline, rng, seen, parents[0] if parents else None, self._changes(req, rng)
                )
            if recipe is None:
                around = f"parent {parents[0].idea_id}" if parents else "the baseline"
                errors.append(f"offline catalogue exhausted around {around}: idea {k + 1} of {len(plans)} not made")
                continue
            seen.add(recipe)
            ideas.append(self._idea(req, start + len(ideas), recipe, parents, cat))
        if errors:
            log.warning("%s: %d of %d offline ideas could not be made", req.campaign, len(errors), len(plans))
        return IdeateResult(ideas=ideas, errors=errors)

    def _plans(self, req: IdeateRequest, by_id: dict[str, IdeaSummary], rng: random.Random) -> list[list[IdeaSummary]]:
        """Parents of each idea: from the policy's plan, else the legacy exploit share over ``req.parents``."""
        if req.plan:
            return [[by_id[p] for p in plan.parent_ids if p in by_id] for plan in req.plan[: req.n]]
        n_exploit = round(req.exploit_share * req.n) if req.strategy == "evolution" and req.parents else 0
        return [[self._pick_parent(req.parents, rng)] if k < n_exploit else [] for k in range(req.n)]

    def _changes(self, req: IdeateRequest, rng: random.Random) -> int:
        """How many changes an explore idea stacks: 1..3 uniformly (random search), else 1..max_changes with
        weights 1/k (evolution and best-of-N: mostly single changes, some combinations; best-of-N is
        evolution without feedback, so both draw explore ideas alike)."""
        if req.strategy == "random":
            return rng.randint(1, 3)
        ks = list(range(1, req.max_changes + 1))
        return rng.choices(ks, weights=[1.0 / k for k in ks], k=1)[0]

    @staticmethod
    def _pick_parent(parents: list[IdeaSummary], rng: random.Random) -> IdeaSummary:
        weights = [1.0 / (rank + 1) for rank in range(len(parents))]  # parents arrive best first
        return rng.choices(parents, weights=weights, k=1)[0]

    @staticmethod
    def _crossover(cat: OfflineCatalogue, parents: list[IdeaSummary], seen: set[Recipe]) -> Recipe | None:
        """The union of two parents' recipes (the first parent's knob values win; conflicting variants of the
        second are left out), when that is new."""
        a, b = canonical(parents[0].recipe), canonical(parents[1].recipe)
        merged = dict(a)
        variants = {op.removeprefix("variant:") for op in merged if op.startswith("variant:")}
        conflicts = {c for v in cat.variants if v.name in variants for c in v.conflicts}
        for op, value in b:
            name = op.removeprefix("variant:")
            if op in merged or (op.startswith("variant:") and (name in conflicts or any(
                name in v.conflicts and v.name in variants for v in cat.variants
            ))):
                continue
            merged[op] = value
        c = canonical(to_mutations(tuple(merged.items())))
        return None if c in seen or c in (a, b) else c

    def _new_recipe(
        self,
        cat: OfflineCatalogue,
        baseline: Path,
        rng: random.Random,
        seen: set[Recipe],
        parent: IdeaSummary | None,
        changes: int,
    ) -> Recipe | None:
        base = list(parent.recipe or []) if parent else []
        for attempt in range(200):
            steps = 1 if parent else max(1, changes - attempt // 50)  # fewer changes when combos run out
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
        req: IdeateRequest, index: int, recipe: Recipe, parents: list[IdeaSummary], cat: OfflineCatalogue
    ) -> Idea:
        descriptions = [describe(op, value, cat) for op, value in recipe]
        parent = parents[0] if parents else None
        if len(parents) == 2:
            title = f"{parents[0].title[:55]} x {parents[1].title[:55]}"
            text = (
                f"Combine {parents[0].idea_id} ({parents[0].title}) with {parents[1].idea_id} "
                f"({parents[1].title}): " + " ".join(d[1] for d in descriptions)
            )
        elif parent:
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
            parent_ids=[p.idea_id for p in parents],
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
