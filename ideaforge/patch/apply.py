"""Unified diffs: make them, inspect them, check and apply them with ``git apply``.

The one place that decides whether a diff is acceptable: it must be a text unified diff, touch only
files that exist or are new under the baseline, and never touch a protected (evaluation) file.
"""

from __future__ import annotations

import difflib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import git

from ideaforge.models import SearchReplace

_HEADER_RE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)", re.M)
_GIT_HEADER_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.M)


class PatchError(ValueError):
    """A diff that is not acceptable or does not apply; ``category`` says which failure it is."""

    def __init__(self, message: str, category: str = "patch_failed") -> None:
        super().__init__(message)
        self.category = category


@dataclass
class DiffInfo:
    files: list[str] = field(default_factory=list)
    binary: bool = False


def make_diff(base_dir: Path, new_files: dict[str, str]) -> str:
    """A git-style unified diff turning ``base_dir``'s files into ``new_files`` (rel path -> content)."""
    chunks: list[str] = []
    for rel in sorted(new_files):
        old_path = Path(base_dir) / rel
        old = old_path.read_text() if old_path.is_file() else None
        new = new_files[rel]
        if old == new:
            continue
        a = f"a/{rel}" if old is not None else "/dev/null"
        lines = difflib.unified_diff(
            (old or "").splitlines(keepends=True), new.splitlines(keepends=True), a, f"b/{rel}", n=3
        )
        body = "".join(_terminate(line) for line in lines)
        chunks.append(
            f"diff --git a/{rel} b/{rel}\n" + ("new file mode 100644\n" if old is None else "") + body
        )
    return "".join(chunks)


def _terminate(line: str) -> str:
    return line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"


def inspect_diff(diff: str) -> DiffInfo:
    """Files a diff touches and whether it carries binary content. Raises if it is not a diff at all."""
    if "\0" in diff:
        raise PatchError("diff contains NUL bytes: binary content is not accepted")
    info = DiffInfo()
    if re.search(r"^(GIT binary patch|Binary files .* differ)", diff, re.M):
        info.binary = True
    files = {m.group(2) for m in _GIT_HEADER_RE.finditer(diff)}
    files |= {m.group(1) for m in _HEADER_RE.finditer(diff) if m.group(1) != "/dev/null"}
    if not files:
        raise PatchError("not a unified diff: no '--- a/FILE' / '+++ b/FILE' headers found")
    info.files = sorted(files)
    return info


def check_policy(diff: str, protected: list[str]) -> DiffInfo:
    """Refuse binary diffs, diffs touching protected files, and paths escaping the tree."""
    info = inspect_diff(diff)
    if info.binary:
        raise PatchError("binary diffs are not accepted", "patch_failed")
    refuse_protected(info.files, protected)
    return info


def refuse_protected(files: list[str], protected: list[str]) -> None:
    """The one check on the files a change touches: no path escaping the tree, no protected (evaluation) file."""
    for f in files:
        if f.startswith("/") or ".." in Path(f).parts:
            raise PatchError(f"the change's path escapes the codebase: {f}")
    touched = sorted(set(files) & set(protected))
    if touched:
        raise PatchError(
            f"the change touches protected file(s) {touched}: the evaluator is locked; nothing was applied",
            "protected_file_touched",
        )


_SKIP_DIRS = ("__pycache__", ".git", ".pytest_cache")


def patched_tree(baseline: Path, diff: str | None, dest: Path, check_only: bool = False) -> Path:
    """The one way to copy a baseline and apply a diff to the copy (``git apply``; ``check_only``: --check)."""
    shutil.copytree(baseline, dest, ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    if diff:
        apply_diff(diff, dest, check_only=check_only)
    return dest


def apply_diff(diff: str, workdir: Path, check_only: bool = False) -> None:
    """Apply ``diff`` to ``workdir`` with ``git apply`` (works outside a repository). Raises PatchError."""
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as f:
        f.write(diff)
        patch = f.name
    try:
        args = ["git", "apply", "--whitespace=nowarn", "-p1"]
        if check_only:
            args.append("--check")
        git.Git(str(workdir)).execute([*args, patch])
    except git.GitCommandError as e:
        raise PatchError(f"git apply failed: {(e.stderr or '').strip() or e}") from e
    finally:
        Path(patch).unlink(missing_ok=True)


def check_applies(diff: str, base_dir: Path, protected: list[str]) -> DiffInfo:
    """Policy check, then ``git apply --check`` against a scratch copy of ``base_dir``."""
    info = check_policy(diff, protected)
    with tempfile.TemporaryDirectory(prefix="ideaforge-check-") as tmp:
        patched_tree(base_dir, diff, Path(tmp) / "tree", check_only=True)
    return info


def apply_search_replace(
    base_dir: Path, edits: list[SearchReplace], files: dict[str, str] | None = None
) -> dict[str, str]:
    """Apply exact-text edits in order; returns the new content of every edited file.

    ``files`` carries content already edited (so several edits can stack). Each search text must occur
    exactly once in its file, otherwise PatchError names the edit that failed.
    """
    out = dict(files or {})
    for i, e in enumerate(edits):
        if e.file not in out:
            p = Path(base_dir) / e.file
            if not p.is_file():
                raise PatchError(f"edit {i}: file {e.file!r} does not exist")
            out[e.file] = p.read_text()
        text = out[e.file]
        n = text.count(e.search)
        if n != 1:
            raise PatchError(
                f"edit {i}: search text occurs {n} times in {e.file} (need exactly 1): {e.search[:80]!r}"
            )
        out[e.file] = text.replace(e.search, e.replace, 1)
    return out
