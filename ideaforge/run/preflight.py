"""The preflight: a cheap check of a patched package on the CPU before it is queued for training.

1. compile every changed Python file (in the sandbox: the code is untrusted even to the parser);
2. when the env declares ``[preflight]`` (:class:`~ideaforge.models.PreflightSpec`), run its command (default:
   the env's ``run_command``) in the same sandbox as training, on the CPU, with the variables and prepared data
   of the preflight profile and small limits, until it exits or reports ``stop_at_step``.

A diff that crashes at import or on its first training step fails here (``failed``, with the traceback, host
paths removed, bounded) and goes back to the implementer instead of taking a training slot. Running out of
time, memory or output on the CPU proves nothing about the GPU run: that is ``inconclusive`` and the code
trains. Only infrastructure problems raise (storage, prepare, a sandbox that cannot be set up).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ideaforge.models import PreflightCost, PreflightRequest, PreflightResult, PreflightSpec, Resources
from ideaforge.research_envs.registry import ResearchEnv
from ideaforge.run.codetree import remove_files, restore_protected, shadowing_files, unpack_code
from ideaforge.run.protocol import error_tail, is_protocol_line, parse_line
from ideaforge.run.runner import MB, ExperimentRunner, RunCancelled, StopFlag, safe_name
from ideaforge.run.sandbox import Box, Cancellable, Limits, SandboxResult
from ideaforge.store.artifacts import StorageError

log = logging.getLogger(__name__)

COMPILE_TIMEOUT_S = 60.0
BASELINE_RECHECK_S = 600.0  # a worker whose preflight failed on the baseline tries the baseline again after this
MAX_ERROR_CHARS = 3000  # what goes back to the implementer (the revision prompt quotes it)
# compiles the files named on the command line; never imports or runs them
_COMPILE = (
    "import sys, traceback\n"
    "bad = 0\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        compile(open(name, 'rb').read(), name, 'exec', dont_inherit=True)\n"
    "    except (SyntaxError, ValueError) as e:\n"
    "        bad += 1\n"
    "        sys.stdout.write(''.join(traceback.format_exception_only(type(e), e)))\n"
    "sys.exit(1 if bad else 0)\n"
)


@dataclass(frozen=True)
class _Dirs:
    root: Path

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def compile_log(self) -> Path:
        return self.root / "compile.log"

    @property
    def run_log(self) -> Path:
        return self.root / "preflight.log"


def _limit_hit(res: SandboxResult) -> str | None:
    """The limit that stopped a command (time, memory, output), or None."""
    if res.timed_out or res.cpu_limited:
        return "time"
    if res.memory_limited:
        return "memory"
    if res.output_limited or res.write_limited:
        return "output"
    return None


def changed_python_files(code: Path, env: ResearchEnv) -> list[str]:
    """Python files of the unpacked package that are new or differ from the env's baseline (sorted)."""
    out = []
    for p in sorted(code.rglob("*.py")):
        if p.is_symlink() or not p.is_file():
            continue
        rel = p.relative_to(code).as_posix()
        base = env.baseline / rel
        if not base.is_file() or base.read_bytes() != p.read_bytes():
            out.append(rel)
    return out


def saved_by_a_catch(res: Resources) -> PreflightCost:
    """The slot time one caught crash kept free: the expected training time, else the time limit."""
    train_s = res.expected_train_s or res.time_limit_s
    return PreflightCost(
        saved_train_s=train_s,
        saved_device_s=train_s * res.count,
        saved_basis="expected_train_s" if res.expected_train_s else "time_limit_s",
    )


class Preflight:
    """Runs preflights for one worker with the runner's sandbox, data cache and settings."""

    def __init__(self, runner: ExperimentRunner, *, threads: int = 1, grace_s: float = 1.0) -> None:
        self.runner = runner
        self.threads = threads
        self.grace_s = grace_s
        self._baseline_lock = threading.Lock()
        self._baseline_checked: dict[str, tuple[str | None, float]] = {}  # env -> (why it fails, when checked)

    def check(self, req: PreflightRequest, cancel: Cancellable | None = None) -> PreflightResult:
        """Compile, then run the env's preflight; blocking (call it from a thread). See the module docstring."""
        env = self.runner.load(req.env)
        try:
            zip_bytes = self.runner.store.get_bytes(req.code)
        except StorageError as e:
            raise StorageError(f"preflight cannot fetch code package {req.code.uri}: {e}") from e
        dirs = _Dirs(self.runner.settings.home / "work" / f"preflight-{safe_name(req.idea_id)}-{uuid.uuid4().hex[:8]}")
        try:
            return self._check(env, req, zip_bytes, dirs, cancel)
        finally:
            shutil.rmtree(dirs.root, ignore_errors=True)

    def _check(
        self, env: ResearchEnv, req: PreflightRequest, zip_bytes: bytes, dirs: _Dirs, cancel: Cancellable | None
    ) -> PreflightResult:
        spec = env.spec
        dirs.out.mkdir(parents=True)
        try:
            unpack_code(zip_bytes, dirs.code)
        except (ValueError, zipfile.BadZipFile, OSError) as e:  # our own package: not the change's fault
            why = f"the code package cannot be unpacked: {e}"
            log.error("%s: %s", req.idea_id, why)
            return PreflightResult(status="inconclusive", stage="compile", error=why,
                                   cost=PreflightCost(runs=1, inconclusive=1))
        shadows = shadowing_files(dirs.code, env.baseline)
        if shadows:
            msg = f"the change adds {shadows}, which would shadow modules the evaluator imports"
            return self._failed(req, env, "compile", msg, PreflightCost())
        restore_protected(dirs.code, env.baseline, spec.protected_files)
        remove_files(dirs.code, spec.eval_only_files)
        files = changed_python_files(dirs.code, env)
        cost = PreflightCost(runs=1)

        stop = StopFlag(cancel)
        if files:
            res = self.runner.run_command(
                ["{python}", "-I", "-c", _COMPILE, *files],
                Box(cwd=dirs.code, writable=[dirs.code, dirs.out]),
                {"HOME": "/tmp", "TMPDIR": "/tmp"},
                Limits(wall_s=COMPILE_TIMEOUT_S, cpu_s=COMPILE_TIMEOUT_S, memory_bytes=1024 * MB, max_pids=16,
                       output_bytes=MB, file_bytes=MB, write_bytes=None),
                dirs.compile_log,
                stop,
                grace_s=self.grace_s,
            )
            cost = self._add(cost, res)
            if stop.cancelled:
                raise RunCancelled(f"{req.idea_id}: preflight cancelled")
            if res.returncode != 0 and not (res.timed_out or res.memory_limited or res.cpu_limited):
                text = self._scrub(dirs.compile_log.read_text(errors="replace")[-MAX_ERROR_CHARS:], dirs)
                return self._failed(req, env, "compile", f"the changed code does not compile:\n{text}", cost, files)
        pf = spec.preflight
        if pf is None:
            return PreflightResult(status="passed", stage="compile", checked_files=files, cost=cost)

        if not self.runner.prepare(env, pf.profile, stop):
            raise RunCancelled(f"{req.idea_id}: preflight cancelled while preparing the env")
        res = self._run_stage(env, pf, dirs, stop)
        cost = self._add(cost, res)
        if stop.cancelled:
            raise RunCancelled(f"{req.idea_id}: preflight cancelled")
        if stop.internal.is_set() or res.ok:
            return PreflightResult(status="passed", stage="run", checked_files=files, cost=cost)
        limit = _limit_hit(res)
        if limit:
            cost.inconclusive = 1
            why = f"the preflight ran out of {limit} on the CPU ({res.wall_s:.0f}s): inconclusive, the code trains"
            log.info("%s: %s", req.idea_id, why)
            return PreflightResult(status="inconclusive", stage="run", error=why, checked_files=files, cost=cost)
        tail = self._scrub(error_tail(dirs.run_log), dirs)
        broken = self._baseline_failure(env, pf, cancel)
        if broken is not None:  # the env's preflight is broken on this worker: not the change's fault
            cost.inconclusive = 1
            why = f"the env's preflight also fails on the unchanged baseline on this worker: {broken}"
            log.error("%s: %s; the code trains unchecked", req.idea_id, why)
            return PreflightResult(status="inconclusive", stage="run", error=why, checked_files=files, cost=cost)
        msg = f"the patched code exited with {res.returncode} in the first training steps on the CPU:\n{tail}"
        return self._failed(req, env, "run", msg, cost, files)

    def _run_stage(self, env: ResearchEnv, pf: PreflightSpec, dirs: _Dirs, stop: StopFlag) -> SandboxResult:
        """The env's preflight command on the unpacked code in ``dirs``, in the training sandbox, on the CPU."""

        def on_line(line: str) -> None:  # sandbox thread: stop once training reports the step we wait for
            if pf.stop_at_step is None or not is_protocol_line(line):
                return
            parsed = parse_line(line)
            if parsed and parsed[0] == "progress":
                step = parsed[1].get("step")
                if isinstance(step, int | float) and step >= pf.stop_at_step:
                    stop.internal.set()

        return self.runner.run_command(
            pf.command or env.spec.run_command,
            Box(
                cwd=dirs.code,
                writable=[dirs.code, dirs.out],
                readonly=[self.runner.data.train_dir(env, pf.profile), *self.runner._host_path_dirs(env)],
            ),
            self._env_vars(env, pf, dirs),
            Limits(
                wall_s=pf.time_limit_s,
                cpu_s=pf.time_limit_s * max(1, self.threads) * 2,
                memory_bytes=pf.memory_limit_mb * MB,
                max_pids=env.spec.resources_for(pf.profile).max_processes,
                output_bytes=4 * MB,
                file_bytes=1024 * MB,
                write_bytes=1024 * MB,
            ),
            dirs.run_log,
            stop,
            on_line=on_line,
            grace_s=self.grace_s,
        )

    def _baseline_failure(self, env: ResearchEnv, pf: PreflightSpec, cancel: Cancellable | None) -> str | None:
        """Why the env's preflight fails on the unchanged baseline on this worker, or None when it does not.

        Asked only after a change failed, so a worker whose preflight is broken (a missing package, unreadable
        data) never blames the change. A pass is remembered for the process; a failure for BASELINE_RECHECK_S."""
        with self._baseline_lock:
            known = self._baseline_checked.get(env.spec.name)
            if known is not None and (known[0] is None or time.monotonic() - known[1] < BASELINE_RECHECK_S):
                return known[0]
            dirs = _Dirs(self.runner.settings.home / "work" / f"preflight-baseline-{uuid.uuid4().hex[:8]}")
            try:
                dirs.out.mkdir(parents=True)
                shutil.copytree(env.baseline, dirs.code, ignore=shutil.ignore_patterns("__pycache__"))
                remove_files(dirs.code, env.spec.eval_only_files)
                stop = StopFlag(cancel)
                res = self._run_stage(env, pf, dirs, stop)
                if stop.cancelled:
                    raise RunCancelled("preflight cancelled while checking the baseline")
                failed = not (stop.internal.is_set() or res.ok or _limit_hit(res))
                why = self._scrub(error_tail(dirs.run_log), dirs)[-1000:] if failed else None
            finally:
                shutil.rmtree(dirs.root, ignore_errors=True)
            self._baseline_checked[env.spec.name] = (why, time.monotonic())
            return why

    # ------------------------------------------------------------------ helpers

    def _env_vars(self, env: ResearchEnv, pf: PreflightSpec, dirs: _Dirs) -> dict[str, str]:
        n = str(self.threads)
        return {
            **env.spec.profiles[pf.profile],
            **pf.env,
            **self.runner._host_paths(env),
            "IDEAFORGE_THREADS": n,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n,
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "IDEAFORGE_SEED": "0",
            "IDEAFORGE_OUT": str(dirs.out),
            "IDEAFORGE_DATA": str(self.runner.data.train_dir(env, pf.profile)),
            "IDEAFORGE_DEVICE": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
        }


    @staticmethod
    def _add(cost: PreflightCost, res: SandboxResult) -> PreflightCost:
        return cost.model_copy(update={"wall_s": cost.wall_s + res.wall_s, "cpu_s": cost.cpu_s + res.cpu_s})

    def _scrub(self, text: str, dirs: _Dirs) -> str:
        """The output without host paths: the attempt's dirs, the worker's home, the interpreter's prefix."""
        pairs = [
            (f"{dirs.code}/", ""),
            (str(dirs.code), "."),
            (str(dirs.out), "$IDEAFORGE_OUT"),
            (str(dirs.root), "<preflight>"),
            (str(self.runner.settings.home), "<home>"),
        ]
        roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(self.runner.python).parent.parent)}
        roots |= {p for p in sys.path if p.startswith("/")}
        for prefix in sorted(roots, key=len, reverse=True):
            if len(prefix) > 4:
                pairs.append((prefix, "<python>"))
        for old, new in pairs:
            text = text.replace(old, new)
        return text.strip()[-MAX_ERROR_CHARS:]

    def _failed(
        self,
        req: PreflightRequest,
        env: ResearchEnv,
        stage: str,
        error: str,
        cost: PreflightCost,
        files: list[str] | None = None,
    ) -> PreflightResult:
        cost = cost.model_copy(update={"failures": 1, "runs": max(1, cost.runs)})
        cost = cost + saved_by_a_catch(env.spec.resources_for(req.profile))
        log.info("%s: preflight failed at %s", req.idea_id, stage)
        return PreflightResult(status="failed", stage=stage, error=error, checked_files=files or [], cost=cost)  # type: ignore[arg-type]
