"""Run one untrusted command: scrubbed environment, resource limits, no network, bounded output, no orphans.

The child runs in its own session (process group). Where Linux allows it, it also runs inside fresh user,
network and PID namespaces (``unshare -r -n -p -f --kill-child``): no network, and every process it starts
dies with it, even one that called ``setsid``. Without namespaces it falls back to killing the process group.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import re
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

# variables a training command may inherit from the worker (names or prefixes ending in "_")
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


@dataclass
class SandboxResult:
    """How a sandboxed command ended. ``returncode`` is negative for a signal (as in subprocess)."""

    returncode: int | None
    timed_out: bool = False
    output_limited: bool = False
    cancelled: bool = False
    wall_s: float = 0.0
    net_isolated: bool = False
    isolation: str = "none"
    output_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not (self.timed_out or self.output_limited or self.cancelled)


MAX_LINE_BYTES = 1024 * 1024  # longer lines reach the log but not on_line

# isolation prefixes, strongest first: user+net+pid namespaces, user+net, net only (root)
_PREFIXES: list[tuple[str, list[str], bool]] = [
    ("userns+netns+pidns", ["unshare", "-r", "-n", "-p", "-f", "--kill-child"], True),
    ("userns+netns", ["unshare", "-r", "-n"], True),
    ("netns", ["unshare", "-n"], True),
]


# PID 1 of a namespace ignores signals it has no handler for (SIGTERM, even the kernel's SIGXCPU), so the
# command never runs as PID 1: this tiny init starts it, reaps orphans and exits with its status (128 + N
# for death by signal N, turned back into -N by run_sandboxed). It forwards nothing: signals go to the whole
# process group anyway, and the init itself (PID 1, no handlers) ignores them until SIGKILL.
_INIT = """
import os, sys
try:  # a new network namespace has only a loopback that is down: bring it up (torchrun, local servers)
    import fcntl, socket, struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
    s.close()
except OSError:
    pass
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    except OSError as e:
        sys.stderr.write(f"[sandbox] cannot start {sys.argv[1]!r}: {e}\\n")
        os._exit(127)
while True:
    try:
        wpid, status = os.wait()
    except ChildProcessError:
        os._exit(1)
    if wpid == pid:
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""


@functools.lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, tuple[str, ...], bool]:
    """The strongest namespace wrapper that works here: (name, argv prefix, network isolated). Cached."""
    if os.environ.get("IDEAFORGE_NO_NAMESPACES") == "1" or not shutil.which("unshare"):
        return ("none", (), False)
    for name, prefix, net in _PREFIXES:
        try:
            r = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            log.info("sandbox isolation: %s", name)
            return (name, tuple(prefix), net)
    log.warning(
        "sandbox: no Linux namespaces available; commands run with network and process-group kill only"
    )
    return ("none", (), False)


def _limits(
    cpu_time_s: float | None, memory_mb: int | None, max_file_bytes: int | None
) -> Callable[[], None]:
    libc = _libc()

    def apply() -> None:  # runs in the child between fork and exec
        if libc is not None:  # die with the worker: a kill -9'd worker must leave no training running
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if cpu_time_s:
            soft = max(1, int(cpu_time_s))
            resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))
        if memory_mb:
            b = int(memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if max_file_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return apply


_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc():  # noqa: ANN202 - ctypes handle, loaded before fork (never inside the child)
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_sandboxed(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout_s: float,
    cpu_time_s: float | None = None,
    memory_mb: int | None = None,
    max_output_bytes: int = 20 * 1024 * 1024,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    cancel_event: Cancellable | None = None,
    *,
    network: bool = False,
    max_file_bytes: int | None = 16 * 1024**3,
    grace_s: float = 2.0,
) -> SandboxResult:
    """Run ``argv`` (no shell) and wait for it; blocking, so call it from a thread in async code.

    stdout+stderr go to ``log_path`` (at most ``max_output_bytes``; more kills the command) and, line by line,
    to ``on_line``. A wall timeout or ``cancel_event`` kills the whole process group (SIGTERM, SIGKILL after
    ``grace_s``). ``network=True`` skips the network namespace (prepare commands may download data).
    """
    if not argv:
        raise ValueError("run_sandboxed: empty argv")
    name, prefix, net = isolation_prefix()
    if network:
        name, prefix, net = ("none", (), False)
    init = (sys.executable, "-I", "-S", "-c", _INIT) if "pidns" in name or "netns" in name else ()
    log_file = open(log_path, "ab") if log_path else None  # closed in finally
    start = time.monotonic()
    res = SandboxResult(returncode=None, net_isolated=net, isolation=name)
    try:
        proc = subprocess.Popen(
            [*prefix, *init, *argv],
            cwd=str(cwd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limits(cpu_time_s, memory_mb, max_file_bytes),
        )
    except OSError as e:
        if log_file:
            log_file.write(f"[sandbox] cannot start {argv[0]!r}: {e}\n".encode())
            log_file.close()
        res.returncode = 127
        return res
    try:
        _pump(proc, res, start, timeout_s, max_output_bytes, on_line, log_file, cancel_event, grace_s)
    finally:
        _killpg(proc.pid, signal.SIGKILL)  # nothing of the command outlives it
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if log_file:
            log_file.close()
    res.returncode = proc.returncode
    if init and proc.returncode is not None and 128 < proc.returncode <= 128 + 64:
        res.returncode = 128 - proc.returncode  # the init's "death by signal N" -> -N, as subprocess says
    res.wall_s = time.monotonic() - start
    return res


def _pump(
    proc: subprocess.Popen[bytes],
    res: SandboxResult,
    start: float,
    timeout_s: float,
    max_output_bytes: int,
    on_line: Callable[[str], None] | None,
    log_file,
    cancel_event: Cancellable | None,
    grace_s: float,
) -> None:
    """Read output until the process exits, enforcing timeout, cancellation and the output limit."""
    assert proc.stdout is not None
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
            _killpg(proc.pid, signal.SIGTERM)
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
            if kill_at is not None and now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
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
