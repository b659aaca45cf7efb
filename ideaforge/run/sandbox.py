"""Run one untrusted command in a bubblewrap sandbox, with limits on its whole process tree.

What the command gets (see README "Safety of generated code"):

- its own unprivileged uid (``identity.acquire_uid``), no capabilities, ``no_new_privs``;
- a read-only system (``/usr``, ``/etc``, the Python interpreter and its site-packages) and nothing else of the
  host: no IDEAFORGE_HOME, no project checkout, no other attempt; only the directories the caller names are
  bound, read-only or writable;
- private ``/tmp`` (size-capped tmpfs), ``/run``, ``/dev/shm``, ``/proc`` (new PID namespace), IPC and UTS
  namespaces; no network unless asked (a new network namespace with only its own loopback, which is up);
- only the device nodes it is given (the GPUs assigned to it);
- a cgroup of its own (memory and process count for the whole tree, CPU time accounted for the whole tree);
  RLIMIT_NPROC on its uid, RLIMIT_FSIZE, RLIMIT_CPU per process, no core dumps;
- death with the worker (``--die-with-parent``, parent-death signal); every process of the group is killed
  when the command ends, daemons included.

Where this cannot be set up, :func:`check_sandbox` raises :class:`SandboxUnavailable` naming cause and fix; the
only way around it is the operator's explicit ``IDEAFORGE_UNSAFE_NO_SANDBOX=1``, and then every result is
tagged ``unsafe``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ideaforge.run.cgroups import Cgroup, CgroupUnavailable, create_cgroup
from ideaforge.run.identity import SandboxUser, acquire_uid, chown_tree

log = logging.getLogger(__name__)

UNSAFE_VAR = "IDEAFORGE_UNSAFE_NO_SANDBOX"

_ALLOWED = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TERM",
    "TZ",
    "LANG",
    "LANGUAGE",
    "TMPDIR",
    "TMP",
    "TEMP",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_PATH",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "XDG_CACHE_HOME",
    "TORCH_HOME",
    "TRITON_CACHE_DIR",
    "PYTHONHASHSEED",
}
_ALLOWED_PREFIXES = ("LC_",)
# whole words of a variable name (HF_TOKEN, OPENAI_API_KEY, AWS_SESSION_TOKEN), not substrings: a profile's
# IDEAFORGE_TRAIN_TOKENS is a budget, not a credential
_SECRET_RE = re.compile(
    r"(?:^|_)(?:KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|PASS|CREDENTIALS?|AUTH|SESSION|COOKIE)(?:_|$)", re.I
)
_DENIED_PREFIXES = (
    "AWS_",
    "MLFLOW_",
    "ANTHROPIC_",
    "OPENAI_",
    "TEMPORAL_",
    "MINIO_",
    "IDEAFORGE_",
    "GOOGLE_",
)
# the protocol's own variables (research_envs/PROTOCOL.md) are the only IDEAFORGE_* a command may inherit
PROTOCOL_VARS = {
    "IDEAFORGE_SEED",
    "IDEAFORGE_OUT",
    "IDEAFORGE_DATA",
    "IDEAFORGE_EVAL_DATA",
    "IDEAFORGE_METRIC_FILE",
    "IDEAFORGE_RESUME",
    "IDEAFORGE_THREADS",
    "IDEAFORGE_DEVICE",
}


def is_secret_name(name: str) -> bool:
    """True for variable names that look like credentials (never passed to a command)."""
    return bool(_SECRET_RE.search(name))


def scrubbed_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A whitelist of the worker's environment plus ``extra``; secrets and service settings are dropped.

    ``base`` defaults to ``os.environ``. Names in ``extra`` that look like secrets are dropped too (with a
    warning); any other ``extra`` name (profile variables such as ``IDEAFORGE_STEPS``) is kept.
    """
    src = os.environ if base is None else base
    env: dict[str, str] = {}
    for k, v in src.items():
        allowed = k in _ALLOWED or k.startswith(_ALLOWED_PREFIXES) or k in PROTOCOL_VARS
        if allowed and not is_secret_name(k) and (k in PROTOCOL_VARS or not k.startswith(_DENIED_PREFIXES)):
            env[k] = v
    for k, v in (extra or {}).items():
        if is_secret_name(k) or k.startswith(tuple(p for p in _DENIED_PREFIXES if p != "IDEAFORGE_")):
            log.warning(
                "not passing variable %s to the command: it looks like a secret or a service setting", k
            )
            continue
        env[k] = str(v)
    return env


class Cancellable(Protocol):
    def is_set(self) -> bool: ...


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up on this machine; the message names the cause and the fix."""


@dataclass
class Box:
    """What one command may see: its cwd, directories bound read-only or writable, device nodes, network."""

    cwd: Path
    writable: list[Path] = field(default_factory=list)
    readonly: list[Path] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    network: bool = False
    tmp_bytes: int = 512 * 1024**2


@dataclass
class Limits:
    """Limits of one command's whole process tree. ``None`` means unlimited (except the defaults below)."""

    wall_s: float
    cpu_s: float | None = None
    memory_bytes: int | None = None
    max_pids: int = 512
    output_bytes: int = 20 * 1024**2
    file_bytes: int | None = 16 * 1024**3
    write_bytes: int | None = None  # bytes under the writable dirs, checked every WATCH_EVERY_S


@dataclass
class SandboxResult:
    """How a sandboxed command ended. ``returncode`` is negative for a signal (as in subprocess)."""

    returncode: int | None
    timed_out: bool = False
    output_limited: bool = False
    cancelled: bool = False
    cpu_limited: bool = False
    memory_limited: bool = False
    write_limited: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_memory_bytes: int = 0
    isolation: str = "bwrap"
    output_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (
            self.timed_out
            or self.output_limited
            or self.cancelled
            or self.cpu_limited
            or self.memory_limited
            or self.write_limited
        )

    @property
    def unsafe(self) -> bool:
        return self.isolation == "unsafe"


MAX_LINE_BYTES = 1024 * 1024  # longer lines reach the log but not on_line
WATCH_EVERY_S = 0.25
_GPU_SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")


def unsafe_opted_out() -> bool:
    """True when the operator explicitly turned the sandbox off (``IDEAFORGE_UNSAFE_NO_SANDBOX=1``)."""
    return os.environ.get(UNSAFE_VAR) == "1"


SANDBOX_HOSTNAME = "sandbox"
_HOSTS = f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback {SANDBOX_HOSTNAME}\n"


@functools.cache
def hosts_file() -> str:
    """An /etc/hosts for the sandbox that resolves its own hostname to its loopback (torchrun's rendezvous and
    anything else that looks itself up would otherwise wait on name resolution), written once per process."""
    import atexit
    import tempfile

    fd, path = tempfile.mkstemp(prefix="ideaforge-hosts-")
    with os.fdopen(fd, "w") as f:
        f.write(_HOSTS)
    os.chmod(path, 0o644)

    def remove() -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    atexit.register(remove)
    return path


@functools.cache
def python_roots(python: str) -> tuple[str, ...]:
    """Directories the interpreter ``python`` needs (prefixes, stdlib, site-packages), found by asking it."""
    code = "import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]))"
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=60, cwd="/", env={"PATH": "/usr/bin"}
        )
        paths = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"cannot ask interpreter {python!r} for its paths: {e}") from e
    roots: list[str] = [os.path.dirname(os.path.realpath(python)), os.path.dirname(os.path.abspath(python))]
    for p in paths:
        if p and os.path.isabs(p) and os.path.isdir(p):
            roots.append(os.path.realpath(p))
            roots.append(os.path.abspath(p))
    # a venv's pyvenv.cfg sits in its prefix: bind the prefixes whole
    return tuple(sorted({r for r in roots if not r.startswith(("/usr/", "/proc", "/sys", "/dev"))} - {"/"}))


def _bind_args(binds: list[tuple[str, str]]) -> list[str]:
    """bwrap arguments binding ``(flag, path)`` at the same path, with world-readable parent directories
    (bwrap would create missing parents 0700, unreadable to the unprivileged uid)."""
    args: list[str] = []
    made: set[str] = {"/", "/tmp", "/run", "/dev", "/dev/shm", "/proc", "/usr", "/etc"}
    bound: list[str] = []
    for flag, path in sorted(set(binds), key=lambda b: (b[1].count("/"), b[1], b[0] == "--bind")):
        if flag == "--ro-bind" and path in bound:
            continue  # the same directory twice (a writable bind of it comes after and wins)
        parents = list(reversed(Path(path).parents))[1:]
        for parent in map(str, parents):
            if parent in made or any(parent == b or parent.startswith(b + "/") for b in bound):
                continue
            args += ["--perms", "0755", "--dir", parent]
            made.add(parent)
        args += [flag, path, path]
        bound.append(path)
        made.add(path)
    return args


def bwrap_argv(box: Box, user: SandboxUser, python: str = sys.executable) -> list[str]:
    """The bubblewrap + setpriv prefix that runs a command as ``user`` inside ``box``."""
    args = [
        "bwrap",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        SANDBOX_HOSTNAME,
    ]
    if not box.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/" + top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    args += ["--ro-bind", "/etc", "/etc", "--ro-bind", hosts_file(), "/etc/hosts", "--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(box.tmp_bytes), "--tmpfs", "/tmp", "--tmpfs", "/run"]
    args += ["--perms", "1777", "--size", str(box.tmp_bytes), "--tmpfs", "/dev/shm"]
    binds: list[tuple[str, str]] = [("--ro-bind", r) for r in python_roots(python)]
    binds += [("--ro-bind", str(Path(p).resolve())) for p in box.readonly]
    binds += [("--bind", str(Path(p).resolve())) for p in box.writable]
    args += _bind_args(binds)
    for dev in box.devices:
        if Path(dev).exists():
            args += ["--dev-bind", dev, dev]
    args += ["--chdir", str(Path(box.cwd).resolve())]
    args += [
        "--",
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]
    return args


def gpu_device_nodes(device_ids: list[int]) -> list[str]:
    """Device nodes for the assigned GPUs plus the driver's shared control nodes (those that exist)."""
    nodes = [f"/dev/nvidia{i}" for i in device_ids]
    nodes += [f"/dev/{n}" for n in _GPU_SHARED_NODES]
    return [n for n in nodes if Path(n).exists()]


@functools.cache
def check_sandbox() -> str:
    """``"bwrap"`` when sandboxed commands work here, ``"unsafe"`` when the operator opted out.

    Raises :class:`SandboxUnavailable` naming the cause and the fix. Cached for the process.
    """
    if unsafe_opted_out():
        log.warning("%s=1: generated code runs WITHOUT a sandbox; every result is tagged unsafe", UNSAFE_VAR)
        return "unsafe"
    fix = f"(or, knowing that generated code can then forge scores and read secrets, set {UNSAFE_VAR}=1)"
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "the training worker must run as root: it runs each attempt as its own unprivileged uid and "
            f"gives it a cgroup; start the worker as root (in docker: user root, see docker-compose.yml) {fix}"
        )
    for tool, pkg in (("bwrap", "bubblewrap"), ("setpriv", "util-linux")):
        if not shutil.which(tool):
            raise SandboxUnavailable(f"{tool} is not installed: apt-get install -y {pkg} {fix}")
    try:
        cg = create_cgroup("probe", memory_bytes=256 * 1024**2, max_pids=16)
        cg.remove()
    except (CgroupUnavailable, OSError) as e:
        raise SandboxUnavailable(f"no per-attempt cgroup: {e} {fix}") from e
    user = acquire_uid()
    try:
        argv = [*bwrap_argv(Box(cwd=Path("/")), user), "/bin/true"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise SandboxUnavailable(f"bubblewrap failed to start: {e} {fix}") from e
    finally:
        user.release()
    if r.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create namespaces here ({r.stderr.strip()[:300]}): under docker give the training "
            "worker the security options of docker-compose.yml (seccomp/apparmor unconfined, CAP_SYS_ADMIN) "
            + fix
        )
    return "bwrap"


_JOIN_THEN_EXEC = 'p=$$; while [ "$1" != "--" ]; do echo "$p" > "$1" || exit 125; shift; done; shift; exec "$@"'


def _launcher(cgroup: Cgroup | None, limits: Limits) -> list[str]:
    """The argv prefix that puts a command in its cgroup, ties it to the worker and sets its rlimits, all by
    exec before the command runs. (Not a ``preexec_fn``: Python code between fork and exec can deadlock in a
    worker with threads, leaving a training slot stuck forever.)"""
    prefix: list[str] = []
    if cgroup is not None:  # the shell moves itself (same pid as everything it execs) into the group
        prefix += ["/bin/sh", "-c", _JOIN_THEN_EXEC, "ideaforge-join", *map(str, cgroup.procs_files), "--"]
    prefix += ["setpriv", "--pdeathsig", "KILL"]  # die with the worker: no training left after a kill -9
    rl = ["prlimit", "--core=0:0"]
    if limits.cpu_s:
        soft = max(1, int(limits.cpu_s))
        rl.append(f"--cpu={soft}:{soft + 5}")
    if limits.file_bytes:
        rl.append(f"--fsize={limits.file_bytes}:{limits.file_bytes}")
    if cgroup is not None and limits.max_pids:  # per uid: the sandbox's uid is its own
        rl.append(f"--nproc={limits.max_pids}:{limits.max_pids}")
    return prefix + rl + ["--"]


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def disk_usage(paths: list[Path]) -> int:
    """Bytes allocated on disk under ``paths`` (sparse holes cost nothing; symlinks not followed, hard links
    counted once)."""
    total, seen = 0, set()
    for base in paths:
        for root, dirs, files in os.walk(base):
            for name in [*dirs, *files]:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def run_sandboxed(
    argv: list[str],
    box: Box,
    env: dict[str, str],
    limits: Limits,
    *,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    cancel_event: Cancellable | None = None,
    grace_s: float = 2.0,
    python: str = sys.executable,
    pass_fds: tuple[int, ...] = (),
) -> SandboxResult:
    """Run ``argv`` (no shell) in ``box`` under ``limits`` and wait; blocking, so call it from a thread.

    ``pass_fds`` are handed over: the command inherits them at the same numbers, and they are closed here once
    it has started (or failed to start), so the command alone holds them.

    stdout+stderr go to ``log_path`` (at most ``limits.output_bytes``; more kills the command) and, line by
    line, to ``on_line``. A limit, a wall timeout or ``cancel_event`` stops the whole tree (SIGTERM to the
    group, SIGKILL to every process of the cgroup after ``grace_s``). Raises :class:`SandboxUnavailable`.
    """
    handed = tuple(pass_fds)
    try:
        if not argv:
            raise ValueError("run_sandboxed: empty argv")
        mode = check_sandbox()
    except BaseException:
        _close_all(handed)
        raise
    res = SandboxResult(returncode=None, isolation=mode)
    user: SandboxUser | None = None
    cgroup: Cgroup | None = None
    log_file = open(log_path, "ab") if log_path else None  # closed in finally
    start = time.monotonic()
    try:
        if mode == "bwrap":
            user = acquire_uid()
            for d in box.writable:
                chown_tree(Path(d), user.uid, user.gid)
            try:
                cgroup = create_cgroup("cmd", memory_bytes=limits.memory_bytes, max_pids=limits.max_pids)
            except CgroupUnavailable as e:
                raise SandboxUnavailable(str(e)) from e
            full = [*_launcher(cgroup, limits), *bwrap_argv(box, user, python), *argv]
        else:
            full = [*_launcher(None, limits), *argv]
        try:
            proc = subprocess.Popen(
                full,
                cwd=str(box.cwd),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except OSError as e:
            handed = _close_all(handed)
            if log_file:
                log_file.write(f"[sandbox] cannot start {argv[0]!r}: {e}\n".encode())
            res.returncode = 127
            return res
        handed = _close_all(handed)

        def watch() -> str | None:
            if cgroup is not None and limits.cpu_s and cgroup.cpu_seconds() > limits.cpu_s:
                res.cpu_limited = True
                return f"CPU time of the process tree over {limits.cpu_s:.0f}s"
            if limits.write_bytes and box.writable and disk_usage(box.writable) > limits.write_bytes:
                res.write_limited = True
                return f"more than {limits.write_bytes} bytes written"
            return None

        try:
            def terminate(sig: int) -> None:
                if cgroup is None or user is None:
                    _killpg(proc.pid, sig)
                elif sig == signal.SIGKILL:
                    _killpg(proc.pid, sig)
                    cgroup.kill_all(timeout_s=0.5)
                else:  # bubblewrap dies of SIGTERM and takes everything along: signal the command itself
                    cgroup.signal_uid(sig, user.uid)

            _pump(proc, res, start, limits, on_line, log_file, cancel_event, grace_s, watch, terminate)
        finally:
            _killpg(proc.pid, signal.SIGKILL)  # nothing of the command outlives it
            if cgroup is not None:
                cgroup.kill_all()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        res.returncode = proc.returncode
        if mode == "bwrap" and res.returncode is not None and 128 < res.returncode <= 128 + 64:
            res.returncode = 128 - res.returncode  # bwrap's "child died of signal N" -> -N, as subprocess says
        if cgroup is not None:
            res.cpu_s = cgroup.cpu_seconds()
            res.peak_memory_bytes = cgroup.memory_peak()
            res.memory_limited = bool(limits.memory_bytes) and cgroup.oom_killed()
            if res.memory_limited and log_file:
                log_file.write(
                    f"\n[sandbox] memory limit of {limits.memory_bytes} bytes reached (process tree)\n".encode()
                )
        res.wall_s = time.monotonic() - start
        return res
    finally:
        _close_all(handed)
        if cgroup is not None:
            cgroup.remove()
        if user is not None:
            user.release()
        if log_file:
            log_file.close()


def _close_all(fds: tuple[int, ...]) -> tuple[int, ...]:
    """Close ``fds`` (errors ignored); returns the empty tuple, so that no fd is closed twice."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    return ()


def _pump(
    proc: subprocess.Popen[bytes],
    res: SandboxResult,
    start: float,
    limits: Limits,
    on_line: Callable[[str], None] | None,
    log_file,
    cancel_event: Cancellable | None,
    grace_s: float,
    watch: Callable[[], str | None],
    terminate: Callable[[int], None],
) -> None:
    """Read output until the process exits, enforcing timeout, cancellation, output and tree limits."""
    assert proc.stdout is not None
    timeout_s, max_output_bytes = limits.wall_s, limits.output_bytes
    next_watch = start + WATCH_EVERY_S
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    pending = b""
    skip = False  # inside an over-long line that is not passed to on_line
    eof = False
    kill_at: float | None = None  # when SIGKILL follows the SIGTERM already sent
    exited_at: float | None = None

    def stop(reason: str) -> None:
        nonlocal kill_at
        if kill_at is None:
            log.info("sandbox: stopping pid %d (%s)", proc.pid, reason)
            terminate(signal.SIGTERM)
            kill_at = time.monotonic() + grace_s

    try:
        while True:
            now = time.monotonic()
            if not eof and sel.select(timeout=0.05):
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:  # spurious wake-up: nothing to read yet
                    continue
                eof = chunk == b""  # a non-blocking read returns b"" only at end of file
                allowed = max(0, max_output_bytes - res.output_bytes)
                res.output_bytes += len(chunk)
                if log_file and allowed:
                    log_file.write(chunk[:allowed])
                    log_file.flush()  # on disk before on_line sees it: a checkpoint line stores the log so far
                if len(chunk) > allowed and not res.output_limited:
                    res.output_limited = True
                    if log_file:
                        log_file.write(
                            f"\n[sandbox] output limit of {max_output_bytes} bytes reached\n".encode()
                        )
                    stop("output limit")
                if on_line and not res.output_limited:
                    pending, skip = _emit_lines(pending + chunk, skip, on_line)
            elif eof:
                time.sleep(0.05)
            rc = proc.poll()
            if rc is not None:
                # the main process is gone: kill stragglers, then drain what is left (briefly)
                _killpg(proc.pid, signal.SIGKILL)
                exited_at = exited_at or now
                if eof or now - exited_at > 2.0:
                    break
                continue
            if cancel_event is not None and cancel_event.is_set() and not res.cancelled:
                res.cancelled = True
                stop("cancelled")
            if now - start > timeout_s and not res.timed_out:
                res.timed_out = True
                stop(f"wall timeout {timeout_s:.0f}s")
            if now >= next_watch and kill_at is None:
                next_watch = now + WATCH_EVERY_S
                reason = watch()
                if reason:
                    if log_file:
                        log_file.write(f"\n[sandbox] {reason}\n".encode())
                    stop(reason)
            if kill_at is not None and now >= kill_at:
                terminate(signal.SIGKILL)
                proc.kill()
        if on_line and pending and not skip and not res.output_limited:
            on_line(pending.decode("utf-8", "replace").rstrip("\r"))
    finally:
        sel.close()


def _emit_lines(buf: bytes, skip: bool, on_line: Callable[[str], None]) -> tuple[bytes, bool]:
    """Pass complete lines of ``buf`` to ``on_line``; returns the unfinished rest and the skip state.

    Lines longer than MAX_LINE_BYTES are dropped (they still go to the log), so a flood without newlines
    costs linear time and bounded memory.
    """
    if b"\n" not in buf:
        if len(buf) > MAX_LINE_BYTES:
            return b"", True
        return buf, skip
    *lines, rest = buf.split(b"\n")
    for line in lines:
        if skip:
            skip = False
            continue
        on_line(line.decode("utf-8", "replace").rstrip("\r"))
    if len(rest) > MAX_LINE_BYTES:
        return b"", True
    return rest, False
