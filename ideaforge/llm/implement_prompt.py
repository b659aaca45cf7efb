"""The implementer's prompt: a large stable block per env (cached) and a small part per idea.

The system block holds what every idea of one env shares, byte for byte: the instructions, the env description,
the hidden evaluator's interface (``evaluator_interface`` in env.toml), the protected source files read-only and
line-numbered, and the baseline's editable files. Providers cache it as a prefix (Anthropic ``cache_control``,
OpenAI prefix caching with a ``prompt_cache_key``). The user message holds what varies: the idea, the parent's
diff, the editable files the parent changed (as they are now), and on a revision every failed sample's reply
followed by its own error.

Not shown to the model: the evaluator (the protected files its ``eval_command`` runs), ``eval_only_files``
(held-out data, the script that draws the validation set) and data files (binary, or a data suffix).
"""

from __future__ import annotations

from pathlib import Path

from ideaforge.llm.ideator import direction_text, read_editable
from ideaforge.llm.prompts import render, render_files
from ideaforge.models import ImplementRequest, SampleAttempt
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.store.artifacts import ObjectStore

MAX_PROTECTED_FILE_CHARS = 24_000  # one protected file, numbered; the rest is cut with a marker
MAX_PROTECTED_CHARS = 64_000  # all protected files together (~16k tokens); files past it are named only
MAX_PARENT_DIFF_CHARS = 30_000
MAX_REVISION_CHARS = 24_000  # the previous round's replies together
MIN_REPLY_CHARS = 2_000  # each reply gets at least this much, however many samples failed
MAX_ERROR_CHARS = 3000
DATA_SUFFIXES = {
    ".arrow", ".bin", ".csv", ".gz", ".json", ".jsonl", ".npy", ".npz", ".parquet", ".pkl", ".pt", ".safetensors",
    ".tar", ".tsv", ".txt", ".zip",
}


def system_prompt(env: ResearchEnv) -> str:
    """The stable block: identical for every idea and revision of ``env`` (same baseline, same bytes)."""
    spec = env.spec
    return render(
        "implement_system",
        env_name=spec.name,
        description=spec.description.strip(),
        metric=spec.metric,
        direction_text=direction_text(env),
        editable=", ".join(spec.editable_files),
        protected=", ".join(spec.protected_files) or "none",
        evaluator=evaluator_text(env),
        protected_files=protected_section(env),
        files=render_files(read_editable(env)),
    )


def user_prompt(
    req: ImplementRequest, env: ResearchEnv, current: Path, parent_diff: str | None, store: ObjectStore
) -> str:
    """The per-idea part: the idea, the parent's diff, the changed editable files, the revision."""
    baseline = read_editable(env)
    changed = {rel: text for rel, text in read_editable(env, current).items() if text != baseline.get(rel)}
    if changed:
        current_text = (
            "These editable files differ from the baseline (the parent's change): they replace the baseline "
            "versions shown in the system prompt.\n" + render_files(changed)
        )
        others = [rel for rel in env.spec.editable_files if rel not in changed]
        if others:
            current_text += f"\nThe other editable files ({', '.join(others)}) are as in the baseline."
    else:
        current_text = "The editable files are exactly the baseline versions shown in the system prompt."
    return render(
        "implement_user",
        title=req.idea.title,
        text=req.idea.text,
        parent=parent_section(parent_diff),
        current=current_text,
        revision=revision_section(req, store),
    )


# -- stable part ----------------------------------------------------------------------------------------------


def evaluator_files(env: ResearchEnv) -> list[str]:
    """The protected files the env's ``eval_command`` and ``serve_command`` run: the evaluator and its model
    server, never shown to the implementer."""
    commands = [*env.spec.eval_command, *(env.spec.serve_command or [])]
    return [a for a in commands if a in env.spec.protected_files]


def evaluator_text(env: ResearchEnv) -> str:
    described = env.spec.evaluator_interface.strip()
    names = ", ".join(evaluator_files(env)) or "the eval_command"
    if described:
        return f"{names} runs after training. {described}"
    return (
        f"{names} runs after training; this env does not describe it further. Keep every output training writes "
        "(files, their format and names) exactly as the baseline writes them."
    )


def _is_source(path: Path) -> bool:
    if path.suffix.lower() in DATA_SUFFIXES or not path.is_file():
        return False
    head = path.read_bytes()[:8192]
    if b"\0" in head:
        return False
    try:
        head.decode()
    except UnicodeDecodeError:  # a multi-byte character cut at 8192 still decodes up to there
        return False
    return True


def numbered(text: str, max_chars: int) -> str:
    """``text`` with right-aligned line numbers (``  12| line``), cut with a marker past ``max_chars``."""
    lines = text.splitlines()
    width = len(str(len(lines)))
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines, 1):
        row = f"{i:>{width}}| {line}"
        if size + len(row) + 1 > max_chars:
            out.append(f"... (truncated: lines {i}-{len(lines)} of {len(lines)} not shown)")
            break
        out.append(row)
        size += len(row) + 1
    return "\n".join(out)


def protected_section(env: ResearchEnv) -> str:
    """Protected source files, line-numbered, within MAX_PROTECTED_CHARS; then what is not shown, and why."""
    spec = env.spec
    hidden = set(evaluator_files(env))
    eval_only = set(spec.eval_only_files)
    blocks: list[str] = []
    skipped: list[str] = []
    size = 0
    for rel in spec.protected_files:
        path = env.baseline / rel
        if rel in hidden:
            skipped.append(f"{rel} (the evaluator, described above)")
        elif rel in eval_only:
            skipped.append(f"{rel} (evaluation only: training never sees it)")
        elif not _is_source(path):
            kb = path.stat().st_size / 1024 if path.is_file() else 0
            skipped.append(f"{rel} (data, {kb:.0f} KB)")
        elif size >= MAX_PROTECTED_CHARS:
            skipped.append(f"{rel} (prompt size limit)")
        else:
            text = path.read_text(errors="replace")
            body = numbered(text, min(MAX_PROTECTED_FILE_CHARS, MAX_PROTECTED_CHARS - size))
            size += len(body)
            n = len(text.splitlines())
            blocks.append(f'<protected_file path="{rel}" lines="{n}">\n{body}\n</protected_file>')
    if skipped:
        blocks.append("Protected, not shown: " + "; ".join(skipped) + ".")
    return "\n".join(blocks) if blocks else "none"


# -- per-idea part --------------------------------------------------------------------------------------------


def clip(text: str, limit: int) -> str:
    """``text`` cut at ``limit`` characters with a marker saying how much is missing."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters not shown)"


def parent_section(parent_diff: str | None) -> str:
    if not parent_diff:
        return ""
    return (
        "\n## This idea builds on its parent's change (already applied)\n"
        "The parent's change, as a diff against the baseline files shown in the system prompt:\n"
        f"```diff\n{clip(parent_diff, MAX_PARENT_DIFF_CHARS)}\n```\n"
    )


def revision_section(req: ImplementRequest, store: ObjectStore) -> str:
    """Each failed sample of the previous round: its reply (bounded), then its own error, quoted exactly."""
    samples = list(req.previous_samples)
    if not samples and req.previous_error and req.previous_category == "preflight_failed":
        previous = store.get_text(req.previous_diff) if req.previous_diff is not None else "(not available)"
        return "\n" + render(
            "implement_preflight",
            previous=clip(previous, MAX_REVISION_CHARS),
            error=clip(req.previous_error, MAX_ERROR_CHARS),
        )
    if not samples and req.previous_error:  # a failure found after the change applied
        samples = [SampleAttempt(reply=req.previous_diff, error=req.previous_error)]
    if not samples:
        return ""
    distinct: dict[tuple[str | None, str], SampleAttempt] = {}  # the same reply with the same error: shown once
    for s in samples:
        distinct.setdefault((s.reply.sha256 if s.reply else None, s.error), s)
    samples = list(distinct.values())
    per_reply = max(MIN_REPLY_CHARS, MAX_REVISION_CHARS // len(samples))
    blocks = []
    for i, s in enumerate(samples, 1):
        reply = store.get_text(s.reply) if s.reply is not None else "(empty reply)"
        title = f"### Sample {i}\n" if len(samples) > 1 else ""
        blocks.append(
            f"{title}<previous_reply>\n{clip(reply, per_reply)}\n</previous_reply>\n"
            f"Its error (quoted exactly):\n<error>\n{clip(s.error, MAX_ERROR_CHARS)}\n</error>"
        )
    one = len(samples) == 1
    return "\n" + render(
        "implement_revision",
        heading=(
            "Your previous reply was not applied" if one else f"Your previous {len(samples)} replies were not applied"
        ),
        pairing="" if one else "Each reply is followed by its own error.",
        samples="\n\n".join(blocks),
    )
