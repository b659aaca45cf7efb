"""The code trees of one attempt: unpacking a package, restoring protected files, hiding eval-only files, and
refusing files that would shadow a module the evaluator imports."""

from __future__ import annotations

import functools
import importlib.metadata
import io
import shutil
import sys
import zipfile
from pathlib import Path

from ideaforge.patch.package import unpack_zip

MAX_UNZIPPED_BYTES = 1024**3
# names Python imports on its own at start-up: a file with one of these names is never harmless
_STARTUP_MODULES = {"sitecustomize", "usercustomize"}


def unpack_code(data: bytes, dest: Path) -> None:
    """Extract a code zip, refusing oversized archives (and, via unpack_zip, escaping paths)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        total = sum(i.file_size for i in zf.infolist())
    if total > MAX_UNZIPPED_BYTES:
        raise ValueError(f"code package unpacks to {total} bytes (limit {MAX_UNZIPPED_BYTES})")
    unpack_zip(data, dest)


def restore_protected(workdir: Path, baseline: Path, files: list[str]) -> list[str]:
    """Copy the pristine protected files over ``workdir``; returns those that differed. Symlinks are replaced."""
    changed: list[str] = []
    for rel in files:
        src, dst = baseline / rel, workdir / rel
        parent = workdir
        for part in Path(rel).parent.parts:  # a parent replaced by a symlink or a file is removed
            parent = parent / part
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                parent.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.is_file():
            if dst.is_symlink() or dst.read_bytes() != src.read_bytes():
                changed.append(rel)
            dst.unlink()
        elif dst.exists():
            shutil.rmtree(dst)
            changed.append(rel)
        else:
            changed.append(rel)
        shutil.copy2(src, dst)
    return changed


def remove_files(tree: Path, files: list[str]) -> None:
    """Delete ``files`` (eval-only files) from ``tree``."""
    for rel in files:
        p = tree / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


@functools.cache
def importable_names() -> frozenset[str]:
    """Top-level module names an evaluator may import: the stdlib and every installed distribution."""
    names = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | _STARTUP_MODULES
    try:
        names |= set(importlib.metadata.packages_distributions())
    except Exception:  # noqa: BLE001 - broken metadata must not disable the check of the stdlib
        pass
    return frozenset(names)


def module_name(rel: Path) -> str | None:
    """The top-level module a path of the code tree would provide (``json.py`` -> ``json``)."""
    first = rel.parts[0]
    if len(rel.parts) > 1:
        return first  # a directory is a (namespace) package
    for suffix in (".py", ".pyc", ".pth", ".so", ".pyd"):
        if first.endswith(suffix):
            return first[: -len(suffix)].split(".")[0]
    return None


def shadowing_files(tree: Path, baseline: Path) -> list[str]:
    """Files the package adds (absent from the baseline) that would shadow a stdlib or installed module."""
    known = importable_names()
    bad = []
    for p in sorted(tree.rglob("*")):
        rel = p.relative_to(tree)
        if (baseline / rel).exists() or p.is_dir():
            continue
        name = module_name(rel)
        if name is not None and (name in known or rel.suffix == ".pth"):
            bad.append(rel.as_posix())
    return bad
