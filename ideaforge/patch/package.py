"""Deterministic zips of codebases: same tree -> same bytes -> same sha256 (content addressing)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from ideaforge.patch.apply import patched_tree

__all__ = ["pack_patched", "pack_tree", "patched_tree", "unpack_zip"]

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache"}


def pack_tree(root: Path) -> bytes:
    """Zip every regular file under ``root`` in sorted order with fixed timestamps and modes."""
    root = Path(root)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not _SKIP_DIRS & set(p.parts)):
            rel = path.relative_to(root).as_posix()
            info = zipfile.ZipInfo(rel, date_time=_FIXED_DATE)
            info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def unpack_zip(data: bytes, dest: Path) -> Path:
    """Extract a zip made by :func:`pack_tree` into ``dest``, refusing paths that escape it."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if dest not in target.parents:
                raise ValueError(f"zip entry escapes destination: {info.filename!r}")
            zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)
    return dest


def pack_patched(baseline: Path, diff: str | None) -> bytes:
    """Deterministic zip of ``baseline`` with ``diff`` applied."""
    with tempfile.TemporaryDirectory(prefix="ideaforge-pack-") as tmp:
        return pack_tree(patched_tree(baseline, diff, Path(tmp) / "tree"))
