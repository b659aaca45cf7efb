"""Prepared data of an env, per machine and profile: ``train`` (IDEAFORGE_DATA, read-only for training) and
``eval`` (IDEAFORGE_EVAL_DATA, bound into the evaluation sandbox only), built once by the env's pristine
prepare_command, plus a tamper check of what prepare wrote."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.run.identity import chown_tree
from ideaforge.run.protocol import error_tail
from ideaforge.run.sandbox import Box, Cancellable, Limits, SandboxResult

log = logging.getLogger(__name__)

PREPARE_TIMEOUT_S = 3600.0
MARKER = ".prepared"


class PrepareError(RuntimeError):
    """The env's prepare_command failed on this machine (an infrastructure problem: retried)."""


def manifest(data: Path) -> dict[str, list[int]]:
    """(size, ctime_ns) of every regular file under ``data``; ctime cannot be set back by a process."""
    out: dict[str, list[int]] = {}
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data).as_posix()
        if rel in (MARKER, "prepare.log") or rel.endswith(".lock") or p.is_symlink() or not p.is_file():
            continue
        st = p.stat()
        out[rel] = [st.st_size, st.st_ctime_ns]
    return out


def readable_tree(path: Path) -> None:
    """Make everything under ``path`` readable (directories also searchable) by all; symlinks are left alone."""
    import os
    import stat

    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        extra = (stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) | (
            (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) if p.is_dir() else 0
        )
        if mode & extra != extra:
            os.chmod(p, mode | extra)


class DataCache:
    """The prepared-data directories under ``<home>/data/<env>/<profile>/`` and how they are built."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def root(self, env: ResearchEnv, profile: str) -> Path:
        return self.home / "data" / env.spec.name / profile

    def train_dir(self, env: ResearchEnv, profile: str) -> Path:
        return self.root(env, profile) / "train"

    def eval_dir(self, env: ResearchEnv, profile: str) -> Path:
        return self.root(env, profile) / "eval"

    def prepare(
        self,
        env: ResearchEnv,
        profile: str,
        run: Callable[..., SandboxResult],
        env_vars: dict[str, str],
        stop: Cancellable | None = None,
    ) -> bool:
        """Run prepare_command once per machine and profile (file lock + marker); True when the data is ready.

        ``run(argv, box, limits, log_path)`` runs the command sandboxed (with network: prepare may download).
        """
        root, train, evald = self.root(env, profile), self.train_dir(env, profile), self.eval_dir(env, profile)
        for d in (train, evald):
            d.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not env.spec.prepare_command or marker.is_file():
            return True
        with open(root / ".lock", "w") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if stop is not None and stop.is_set():
                        return False
                    time.sleep(0.2)
            if marker.is_file():  # prepared by someone else while we waited
                return True
            with tempfile.TemporaryDirectory(prefix=f"prepare-{env.spec.name}-") as tmp:
                cwd = Path(tmp) / "code"
                shutil.copytree(env.baseline, cwd)  # the pristine baseline: an idea never writes the cache
                (Path(tmp) / "out").mkdir()
                Path(tmp).chmod(0o755)
                res = run(
                    env.spec.prepare_command,
                    Box(cwd=cwd, writable=[cwd, Path(tmp) / "out", train, evald], network=True),
                    {
                        **env_vars,
                        "IDEAFORGE_OUT": str(Path(tmp) / "out"),
                        "IDEAFORGE_DATA": str(train),
                        "IDEAFORGE_EVAL_DATA": str(evald),
                    },
                    Limits(wall_s=PREPARE_TIMEOUT_S),
                    root / "prepare.log",
                )
            for d in (train, evald):  # owned by root again: no later sandbox uid owns the shared cache
                chown_tree(d, 0, 0)
                readable_tree(d)  # ... and readable by every sandbox uid (a writer may have made a file 0600)
            if res.cancelled:
                return False
            if not res.ok:
                why = "timed out" if res.timed_out else f"exit status {res.returncode}"
                raise PrepareError(
                    f"prepare_command of env {env.spec.name!r} failed ({why}):\n{error_tail(root / 'prepare.log')}"
                )
            marker.write_text(json.dumps({"command": env.spec.prepare_command, "at": time.time(),
                                          "files": manifest(train)}))
            log.info("prepared env %s profile %s in %s", env.spec.name, profile, root)
        return True

    def tampered(self, env: ResearchEnv, profile: str) -> list[str]:
        """Prepared training files changed or deleted since prepare (new files are fine).

        Training sees the cache read-only, so this is a second line of defence; when it fires, the cache is
        wiped so that the next run prepares it afresh.
        """
        root, train = self.root(env, profile), self.train_dir(env, profile)
        try:
            prepared = json.loads((root / MARKER).read_text()).get("files") or {}
        except (OSError, ValueError, AttributeError):
            return []
        now = manifest(train)
        changed = sorted(rel for rel, meta in prepared.items() if now.get(rel) != meta)
        if changed:
            log.error("env %s: prepared data changed: %s; wiping %s", env.spec.name, changed[:10], root)
            with open(root / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                (root / MARKER).unlink(missing_ok=True)
                for child in root.iterdir():
                    if child.name == ".lock":
                        continue
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        return changed
