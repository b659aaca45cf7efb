"""Discover research environments by name and load their specs.

An env is a folder holding ``env.toml`` (an :class:`~ideaforge.models.EnvSpec`), ``baseline/`` (the
codebase, evaluator included) and ``protected.lock``: the sha256 of every protected file, committed with the env
(``sha256sum`` format). The runner checks the evaluation tree against the lock, never against a digest
recomputed from files on disk. Regenerate it after a deliberate change of a protected file with
``python -m ideaforge.research_envs.registry lock <env-or-folder>...``. Built-in envs live beside this module; users add folders through
``IDEAFORGE_ENV_PATH`` (``os.pathsep``-separated list of directories that contain env folders).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ideaforge.models import EnvSpec

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent
LOCK_FILE = "protected.lock"
LOCK_COMMAND = "python -m ideaforge.research_envs.registry lock"


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
        """sha256 over the pristine protected files (path + content)."""
        return files_digest(self.baseline, self.spec.protected_files)

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def pinned(self) -> dict[str, str]:
        """protected file -> sha256 from ``protected.lock``; raises EnvError when missing or incomplete."""
        if not self.lock_path.is_file():
            raise EnvError(
                f"env {self.spec.name!r} has no {LOCK_FILE}: the evaluator's digests must be pinned; "
                f"create it with `{LOCK_COMMAND} {self.root}` and commit it"
            )
        pins: dict[str, str] = {}
        for line in self.lock_path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                sha, _, rel = line.partition("  ")
                pins[rel.strip()] = sha.strip()
        if sorted(pins) != sorted(self.spec.protected_files):
            raise EnvError(
                f"{self.lock_path} pins {sorted(pins)} but protected_files are {sorted(self.spec.protected_files)}: "
                f"regenerate it with `{LOCK_COMMAND} {self.root}`"
            )
        return pins

    def unpinned(self, tree: Path) -> list[str]:
        """Protected files under ``tree`` whose content differs from the lock (missing or symlinked too)."""
        bad = []
        for rel, sha in self.pinned().items():
            p = tree / rel
            if p.is_symlink() or not p.is_file() or file_sha256(p) != sha:
                bad.append(rel)
        return bad

    def check_baseline(self) -> None:
        """Raise EnvError when the pristine baseline's protected files no longer match the lock."""
        bad = self.unpinned(self.baseline)
        if bad:
            raise EnvError(
                f"protected files of env {self.spec.name!r} differ from {self.lock_path}: {bad}. Someone changed "
                f"the evaluator; if on purpose, review it and run `{LOCK_COMMAND} {self.root}`"
            )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def lock_text(env: ResearchEnv) -> str:
    """The ``protected.lock`` content for the env's current baseline."""
    head = f"# sha256 of the protected files of {env.spec.name}; regenerate: {LOCK_COMMAND} {env.spec.name}\n"
    return head + "".join(
        f"{file_sha256(env.baseline / rel)}  {rel}\n" for rel in sorted(env.spec.protected_files)
    )


def files_digest(base: Path, files: list[str]) -> str:
    """sha256 of the named files under ``base`` (sorted; a missing file counts as missing)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        p = base / rel
        h.update(rel.encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


PYTHON_PLACEHOLDER = "{python}"


def expand_command(command: list[str], python: str) -> list[str]:
    """An env command with ``{python}`` replaced by the interpreter that runs it (PROTOCOL.md step 2)."""
    return [a.replace(PYTHON_PLACEHOLDER, python) for a in command]


def evaluator_editable_imports(env: ResearchEnv) -> list[str]:
    """Editable modules the evaluator imports, directly or through the protected modules it imports (a static
    scan). Non-empty means generated code runs inside the process that writes the metric, where it could forge
    it; such code belongs in the model server (``serve_command``, PROTOCOL.md step 6)."""
    editable = {Path(f).with_suffix("").as_posix().replace("/", "."): f for f in env.spec.editable_files if f.endswith(".py")}
    protected = {Path(f).with_suffix("").as_posix().replace("/", "."): f for f in env.spec.protected_files if f.endswith(".py")}
    command = env.spec.eval_command
    start = protected.get(command[2]) if command[1:2] == ["-m"] and len(command) > 2 else command[1] if len(command) > 1 else None
    found: set[str] = set()
    seen: set[str] = set()
    todo = [start] if start in env.spec.protected_files else []
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        try:
            tree = ast.parse((env.baseline / rel).read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                for candidate in (name, name.split(".")[0]):
                    if candidate in editable:
                        found.add(candidate)
                    elif candidate in protected:
                        todo.append(protected[candidate])
    return sorted(found)


_WARNED: set[Path] = set()


def _warn_in_process_model(env: ResearchEnv) -> None:
    if env.root in _WARNED:
        return
    _WARNED.add(env.root)
    editable = evaluator_editable_imports(env)
    if editable:
        log.warning(
            "env %s: its evaluator imports editable code (%s) in the process that writes the metric, where "
            "generated code could forge it; move that code behind a serve_command (PROTOCOL.md step 6)",
            env.spec.name, ", ".join(editable),
        )


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
    if env.lock_path.is_file():
        env.check_baseline()
    _warn_in_process_model(env)
    return env


def main(argv: list[str] | None = None) -> None:
    """``lock <env-or-folder>...``: write each env's protected.lock from its current baseline."""
    p = argparse.ArgumentParser(prog="python -m ideaforge.research_envs.registry")
    sub = p.add_subparsers(dest="cmd", required=True)
    lock = sub.add_parser("lock", help="pin the digests of an env's protected files in protected.lock")
    lock.add_argument("envs", nargs="+", help="env names or env folders")
    args = p.parse_args(argv)
    for name in args.envs:
        folder = Path(name)
        if (folder / "env.toml").is_file():
            lock_path = folder / LOCK_FILE
            lock_path.unlink(missing_ok=True)
            env = load_env_folder(folder)
        else:
            env = load_env(name)
            env.lock_path.unlink(missing_ok=True)
            env = load_env_folder(env.root)
        env.lock_path.write_text(lock_text(env))
        print(f"wrote {env.lock_path}")


if __name__ == "__main__":
    main()
