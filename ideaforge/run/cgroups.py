"""One control group per sandboxed command: memory, process count and CPU time of its whole process tree.

Supports cgroup v1 (separate ``memory``, ``pids`` and ``cpuacct`` hierarchies, as on this project's CI
machines) and cgroup v2 (one unified hierarchy with the controllers enabled for our subtree). The group is made
under the worker's own cgroup, the command joins it between fork and exec, and ``kill_all`` ends every process
in it, however it was started (daemons, ``setsid``, double forks).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(os.environ.get("IDEAFORGE_CGROUP_ROOT", "/sys/fs/cgroup"))


class CgroupUnavailable(RuntimeError):
    """No writable cgroup hierarchy with the controllers a sandbox needs; the message names cause and fix."""


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _v2_root() -> Path | None:
    for cand in (ROOT, ROOT / "unified"):
        ctrl = cand / "cgroup.controllers"
        if ctrl.is_file() and {"memory", "pids"} <= set(ctrl.read_text().split()):
            return cand
    return None


@dataclass
class Cgroup:
    """The cgroup(s) of one command. ``dirs`` are the created group directories (one per v1 controller)."""

    version: int
    dirs: dict[str, Path] = field(default_factory=dict)

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def join(self, pid: int) -> None:
        """Move ``pid`` into the group (called in the child between fork and exec, with its own pid)."""
        for f in self.procs_files:
            with open(f, "w") as fh:
                fh.write(str(pid))

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process that ever ran in the group."""
        try:
            if self.version == 1:
                return int((self.dirs["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
            for line in (self.dirs[""] / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError, KeyError):
            pass
        return 0.0

    def memory_peak(self) -> int:
        try:
            if self.version == 1:
                return int((self.dirs["memory"] / "memory.max_usage_in_bytes").read_text())
            return int((self.dirs[""] / "memory.peak").read_text())
        except (OSError, ValueError, KeyError):
            return 0

    def oom_killed(self) -> bool:
        """True when the kernel killed a process of the group for exceeding its memory limit."""
        try:
            if self.version == 1:
                text = (self.dirs["memory"] / "memory.oom_control").read_text()
                failcnt = int((self.dirs["memory"] / "memory.failcnt").read_text())
            else:
                text, failcnt = (self.dirs[""] / "memory.events").read_text(), 0
        except (OSError, ValueError, KeyError):
            return False
        for line in text.splitlines():
            k, _, v = line.partition(" ")
            if k == "oom_kill" and int(v or 0) > 0:
                return True
        return failcnt > 0 and self.version == 1 and "oom_kill " not in text

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for f in self.procs_files:
            try:
                seen.update(int(x) for x in f.read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(seen)

    def signal_uid(self, sig: int, uid: int) -> None:
        """Send ``sig`` to the group's processes running as ``uid`` (the command, not bubblewrap itself)."""
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                real_uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
                if real_uid == uid:
                    os.kill(pid, sig)
            except (OSError, StopIteration, ValueError):
                continue

    def kill_all(self, timeout_s: float = 10.0) -> bool:
        """SIGKILL every process in the group and wait until it is empty; False if some survived."""
        kill_file = self.dirs.get("", Path("/nonexistent")) / "cgroup.kill"
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            if kill_file.is_file():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                log.error("cgroup %s: processes %s survived SIGKILL", self.dirs, pids)
                return False
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and delete the group directories."""
        self.kill_all()
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupUnavailable(f"cannot write {value!r} to {path}: {e.strerror or e}") from e


def create_cgroup(
    name: str, *, memory_bytes: int | None, max_pids: int | None, label: str = "ideaforge"
) -> Cgroup:
    """A fresh group for one command with the given limits; raises :class:`CgroupUnavailable`."""
    leaf = f"{label}-{name}-{uuid.uuid4().hex[:8]}"
    own = _own_paths()
    if "memory" in own and (ROOT / "memory").is_dir():  # cgroup v1
        cg = Cgroup(version=1)
        for ctrl in ("memory", "pids", "cpuacct"):
            base = ROOT / ctrl / own.get(ctrl, "/").lstrip("/")
            if not base.is_dir():
                base = ROOT / ctrl
            d = base / leaf
            try:
                d.mkdir()
            except OSError as e:
                cg.remove()
                raise CgroupUnavailable(
                    f"cannot create cgroup {d}: {e.strerror or e}. The training worker must run as root with "
                    "the cgroup filesystem writable (docker: see docker-compose.yml, cgroupns and /sys/fs/cgroup)"
                ) from e
            cg.dirs[ctrl] = d
        if memory_bytes:
            _write(cg.dirs["memory"] / "memory.limit_in_bytes", str(memory_bytes))
            memsw = cg.dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.is_file():
                _write(memsw, str(memory_bytes))
        if max_pids:
            _write(cg.dirs["pids"] / "pids.max", str(max_pids))
        return cg
    root = _v2_root()
    if root is None:
        raise CgroupUnavailable(
            "no cgroup hierarchy with memory and pids controllers under "
            f"{ROOT}: mount cgroup2 (or the v1 memory/pids/cpuacct controllers) writable for the worker"
        )
    base = root / own.get("", "/").lstrip("/")
    parent = base / "ideaforge"
    try:
        parent.mkdir(exist_ok=True)
        _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
        _write(parent / "cgroup.subtree_control", "+memory +pids +cpu")
    except (OSError, CgroupUnavailable) as e:
        raise CgroupUnavailable(
            f"cgroup v2 at {base}: cannot enable memory/pids/cpu for a subtree ({e}); run the worker in its own "
            "delegated cgroup (systemd Delegate=yes, or docker --cgroupns=private)"
        ) from e
    d = parent / leaf
    d.mkdir()
    cg = Cgroup(version=2, dirs={"": d})
    if memory_bytes:
        _write(d / "memory.max", str(memory_bytes))
        if (d / "memory.swap.max").is_file():
            _write(d / "memory.swap.max", "0")
    if max_pids:
        _write(d / "pids.max", str(max_pids))
    return cg
