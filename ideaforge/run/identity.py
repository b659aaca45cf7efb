"""Unprivileged uids for sandboxed commands: one per command, from a reserved range, never shared while held.

Each training or evaluation gets its own uid, so RLIMIT_NPROC caps that command's whole tree and two attempts
can neither signal nor read each other. A uid is held by an exclusive ``flock`` on a host-wide lock file, so
several worker processes on one machine never hand out the same uid.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

UID_BASE = int(os.environ.get("IDEAFORGE_SANDBOX_UID_BASE", "790000"))
UID_COUNT = int(os.environ.get("IDEAFORGE_SANDBOX_UID_COUNT", "1000"))
LOCK_DIR = Path(os.environ.get("IDEAFORGE_SANDBOX_LOCK_DIR", "/run/lock/ideaforge-uids"))


class NoFreeUid(RuntimeError):
    """Every uid of the reserved range is held (more concurrent commands than the range allows)."""


@dataclass
class SandboxUser:
    """A held uid (gid = uid); ``release`` gives it back."""

    uid: int
    _fd: int | None = None

    @property
    def gid(self) -> int:
        return self.uid

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def acquire_uid() -> SandboxUser:
    """The lowest free uid of the reserved range, held until ``release``."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for uid in range(UID_BASE, UID_BASE + UID_COUNT):
        fd = os.open(LOCK_DIR / f"{uid}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return SandboxUser(uid=uid, _fd=fd)
    raise NoFreeUid(
        f"all {UID_COUNT} sandbox uids from {UID_BASE} are in use; raise IDEAFORGE_SANDBOX_UID_COUNT"
    )


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything under it to ``uid`` (symlinks themselves, never their targets)."""
    os.chown(path, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
