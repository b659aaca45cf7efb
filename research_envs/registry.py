"""Discover research environments by name and load their specs.

An env is a folder holding ``env.toml`` (an :class:`~ideaforge.models.EnvSpec`) and ``baseline/`` (the
codebase, evaluator included). Built-in envs live beside this module; users add folders through
``IDEAFORGE_ENV_PATH`` (``os.pathsep``-separated list of directories that contain env folders).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ideaforge.models import EnvSpec

BUILTIN_DIR = Path(__file__).resolve().parent


class EnvError(ValueError):
    """An env that cannot be found or whose spec is wrong; the message says which and why."""


@dataclass(frozen=True)
class ResearchEnv:
    """A loaded env: its validated spec and where its files are."""

    spec: EnvSpec
    root: Path

    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    def protected_digest(self) -> str:
        """sha256 over the pristine protected files (path + content), the evaluator's lock."""
        return files_digest(self.baseline, self.spec.protected_files)


def files_digest(base: Path, files: list[str]) -> str:
    """sha256 of the named files under ``base`` (sorted; a missing file counts as missing)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        p = base / rel
        h.update(rel.encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def search_dirs(extra: list[Path] | None = None) -> list[Path]:
    return [*(Path(p) for p in (extra or [])), BUILTIN_DIR]


def available_envs(extra: list[Path] | None = None) -> list[str]:
    """Names of all discoverable envs (first folder wins on a name clash)."""
    names: list[str] = []
    for d in search_dirs(extra):
        if d.is_dir():
            for child in sorted(d.iterdir()):
                if (child / "env.toml").is_file() and child.name not in names:
                    names.append(child.name)
    return names


def load_env(name: str, extra: list[Path] | None = None) -> ResearchEnv:
    """Find env ``name`` and validate its spec; raises :class:`EnvError` with a clear message."""
    for d in search_dirs(extra):
        folder = d / name
        if (folder / "env.toml").is_file():
            return load_env_folder(folder)
    known = ", ".join(available_envs(extra)) or "none"
    raise EnvError(f"unknown research env {name!r}; available: {known}")


def load_env_folder(folder: Path) -> ResearchEnv:
    spec_path = folder / "env.toml"
    try:
        raw = tomllib.loads(spec_path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise EnvError(f"{spec_path}: not valid TOML: {e}") from e
    try:
        spec = EnvSpec.model_validate(raw)
    except ValidationError as e:
        raise EnvError(f"{spec_path}: invalid env spec:\n{e}") from e
    if spec.name != folder.name:
        raise EnvError(f"{spec_path}: name {spec.name!r} must equal the folder name {folder.name!r}")
    env = ResearchEnv(spec=spec, root=folder.resolve())
    missing = [f for f in [*spec.editable_files, *spec.protected_files] if not (env.baseline / f).is_file()]
    if missing:
        raise EnvError(f"{spec_path}: files listed in the spec are missing from baseline/: {missing}")
    return env
