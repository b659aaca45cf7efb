"""Small process and port helpers for the local stack: daemons, pid records, free ports, log tails.

POSIX only (Linux reads ``/proc``; elsewhere ``ps`` is asked). No third-party dependencies.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

log = logging.getLogger(__name__)

# Popen handles of daemons started by this process, kept so they are reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class PidRecord(BaseModel):
    """What a pid file holds: enough to recognise our own process later (pid reuse is detected by argv)."""

    name: str
    pid: int
    argv: list[str]
    ports: list[int] = []
    log: Path
    started_at: datetime


# --------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_accepting(host: str, port: int, timeout_s: float = 0.3) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def port_taken(host: str, port: int) -> bool:
    """True when a server listens on ``host:port`` or the port cannot be bound (held by another socket)."""
    if port_accepting(host, port):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


# --------------------------------------------------------------------------- processes


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (a process in the middle of exec is alive)."""
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    return proc_cmdline(pid) is not None


def proc_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None when there is no such process (zombies count as gone).

    A live process can briefly show an empty cmdline while it execs: that is ``[]``, not None.
    """
    _reap(pid)
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return None
            raw = (proc / "cmdline").read_bytes()
        except OSError:
            return None
        return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
    if sys.platform.startswith("linux"):
        return None
    out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1].split() if " " in line else None


def is_ours(rec: PidRecord) -> bool:
    """True when ``rec.pid`` is alive and still runs the argv we started (so pid reuse is never signalled)."""
    argv = proc_cmdline(rec.pid)
    if argv is None:
        return False
    if sys.platform.startswith("linux"):
        return argv == rec.argv or argv[1:] == rec.argv  # [1:]: a '#!' script runs under its interpreter
    return " ".join(argv) == " ".join(rec.argv)  # ps splits on spaces; compare loosely off Linux


def spawn_daemon(argv: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> int:
    """Start ``argv`` in its own session (outlives the caller), stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        logf.write(f"\n=== {stamp} starting: {' '.join(argv)}\n".encode())
        logf.flush()
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[child.pid] = child
    log.info("started pid %d: %s", child.pid, " ".join(argv))
    return child.pid


def _wait_gone(rec: PidRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(rec.pid):
            return True
        time.sleep(0.05)
    return not alive(rec.pid)


def stop_process(rec: PidRecord, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group of an owned daemon, SIGKILL after ``timeout_s``. False if it was not ours."""
    if not is_ours(rec):
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(rec.pid, sig)  # started with start_new_session: pgid == pid
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(rec.pid, sig)
        if _wait_gone(rec, wait):
            break
        log.warning("%s (pid %d) ignored %s", rec.name, rec.pid, sig.name)
    child = _CHILDREN.pop(rec.pid, None)
    if child is not None:
        child.wait(timeout=5)
    return True


# --------------------------------------------------------------------------- files


def read_pid(path: Path) -> PidRecord | None:
    """The record in ``path``, or None when it is missing or unreadable."""
    try:
        return PidRecord.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def write_pid(path: Path, rec: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(rec.model_dump_json(indent=1))
    os.replace(tmp, path)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- stale work folders


def paths_in_use(root: Path) -> set[Path]:
    """The entries directly under ``root`` that a live process uses (its cwd, or a file it holds open).
    Linux only (``/proc``); elsewhere every entry counts as in use, so nothing is ever removed."""
    root = root.resolve()
    entries = {p.resolve() for p in root.iterdir()} if root.is_dir() else set()
    if not sys.platform.startswith("linux"):
        return entries
    used: set[Path] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        links = [proc / "cwd", proc / "root"]
        try:
            links += list((proc / "fd").iterdir())
        except OSError:
            pass
        for link in links:
            try:
                target = Path(os.readlink(link))
            except OSError:
                continue
            if target.is_relative_to(root) and target != root:
                used.add(root / target.relative_to(root).parts[0])
    return used


def newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything under it."""
    latest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                latest = max(latest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return latest


def remove_stale_dirs(root: Path, quiet_for_s: float = 120.0) -> list[Path]:
    """Remove the folders under ``root`` (attempt work dirs) that no live process uses and nothing has
    written for ``quiet_for_s`` seconds: what killed attempts left behind. Returns the removed folders."""
    import shutil

    if not root.is_dir():
        return []
    used = paths_in_use(root)
    removed: list[Path] = []
    now = time.time()
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink() or entry.resolve() in used:
            continue
        try:
            if now - newest_mtime(entry) < quiet_for_s:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
