"""Train one patched codebase and score it with the env's locked evaluator (research_envs/PROTOCOL.md).

Idea failures (crash, timeout, NaN, bad metric, output flood) come back as a failed :class:`RunResult` with a
category. Only infrastructure problems raise: storage errors, a failing prepare_command, a broken env spec,
cancellation (:class:`RunCancelled` or ``asyncio.CancelledError``).
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ideaforge.config import Settings
from ideaforge.models import (
    ArtifactRef,
    CurvePoint,
    FailureCategory,
    Progress,
    Resources,
    RunRequest,
    RunResult,
)
from ideaforge.patch.package import unpack_zip
from ideaforge.research_envs.registry import ResearchEnv, files_digest, load_env
from ideaforge.run.sandbox import Cancellable, SandboxResult, run_sandboxed, scrubbed_env
from ideaforge.store.artifacts import ObjectStore, StorageError

log = logging.getLogger(__name__)

PROGRESS_PREFIX = "IDEAFORGE_PROGRESS "
CHECKPOINT_PREFIX = "IDEAFORGE_CHECKPOINT "
PREPARE_TIMEOUT_S = 3600.0
MAX_CURVE_POINTS = 500
MAX_UNZIPPED_BYTES = 1024**3
ERROR_TAIL_LINES = 40
ERROR_TAIL_CHARS = 4000


class RunnerError(RuntimeError):
    """An infrastructure problem (not the idea's fault): Temporal should retry the attempt."""


class PrepareError(RunnerError):
    """The env's prepare_command failed on this machine."""


class RunCancelled(Exception):  # noqa: N818 - reads better at the raise site
    """The caller's ``cancel_event`` stopped the run; the process group is already dead."""


class _Stop:
    """Stop flag the sandbox polls: set by the runner (NaN) or by the caller's cancel event."""

    def __init__(self, external: Cancellable | None) -> None:
        self.internal = threading.Event()
        self.external = external

    @property
    def cancelled(self) -> bool:
        return self.external is not None and self.external.is_set()

    def is_set(self) -> bool:
        return self.internal.is_set() or self.cancelled


@dataclass
class _Train:
    """What the training's protocol lines told us."""

    progress: Progress
    curve: list[CurvePoint] = field(default_factory=list)
    nan_step: int | None = None
    last_beat: float = 0.0


def safe_name(text: str) -> str:
    """A file-name-safe version of an idea id (``campaign-x/e001/i02`` -> ``campaign-x_e001_i02``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "idea"


def downsample(points: list[CurvePoint], cap: int = MAX_CURVE_POINTS) -> list[CurvePoint]:
    """At most ``cap`` points per key, evenly spaced, always keeping each key's first and last point."""
    by_key: dict[str, list[CurvePoint]] = {}
    for p in points:
        by_key.setdefault(p.key, []).append(p)
    per_key = max(2, cap // max(1, len(by_key)))
    out: list[CurvePoint] = []
    for pts in by_key.values():
        if len(pts) <= per_key:
            out.extend(pts)
        else:
            idx = sorted({round(i * (len(pts) - 1) / (per_key - 1)) for i in range(per_key)})
            out.extend(pts[i] for i in idx)
    return out


def cap_text(data: bytes, cap: int) -> bytes:
    """Head and tail of ``data`` when it is longer than ``cap`` bytes."""
    if len(data) <= cap:
        return data
    head, tail = cap // 5, cap - cap // 5
    return data[:head] + f"\n[... {len(data) - cap} bytes omitted ...]\n".encode() + data[-tail:]


def error_tail(log_path: Path) -> str:
    """Last lines of a log without protocol lines: the traceback of a crash."""
    if not log_path.is_file():
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, log_path.stat().st_size - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    lines = [ln for ln in text.splitlines() if not ln.startswith((PROGRESS_PREFIX, CHECKPOINT_PREFIX))]
    return "\n".join(lines[-ERROR_TAIL_LINES:])[-ERROR_TAIL_CHARS:]


def restore_protected(workdir: Path, baseline: Path, files: list[str]) -> list[str]:
    """Copy the pristine protected files over ``workdir``; returns those that differed. Symlinks are replaced."""
    changed: list[str] = []
    for rel in files:
        src, dst = baseline / rel, workdir / rel
        parent = workdir
        for part in Path(rel).parent.parts:  # a parent replaced by a symlink or a file is removed
            parent = parent / part
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                parent.unlink()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.is_file():
            if dst.is_symlink() or dst.read_bytes() != src.read_bytes():
                changed.append(rel)
            dst.unlink()
        elif dst.exists():
            shutil.rmtree(dst)
            changed.append(rel)
        else:
            changed.append(rel)
        shutil.copy2(src, dst)
    return changed


def data_manifest(data: Path) -> dict[str, list[int]]:
    """(size, ctime_ns) of every regular file under ``data``; ctime cannot be set back by a process."""
    out: dict[str, list[int]] = {}
    for p in sorted(data.rglob("*")):
        rel = p.relative_to(data).as_posix()
        if rel in (".prepared", "prepare.log") or rel.endswith(".lock") or p.is_symlink() or not p.is_file():
            continue
        st = p.stat()
        out[rel] = [st.st_size, st.st_ctime_ns]
    return out


def unpack_code(data: bytes, dest: Path) -> None:
    """Extract a code zip, refusing oversized archives (and, via unpack_zip, escaping paths)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        total = sum(i.file_size for i in zf.infolist())
    if total > MAX_UNZIPPED_BYTES:
        raise ValueError(f"code package unpacks to {total} bytes (limit {MAX_UNZIPPED_BYTES})")
    unpack_zip(data, dest)


class ExperimentRunner:
    """Runs experiments for one worker: prepare (once per env), train, restore, evaluate, report."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        *,
        python: str = sys.executable,
        threads: int | None = None,
        eval_timeout_s: float | None = None,
        heartbeat_every_s: float = 1.0,
        log_cap_bytes: int = 1024 * 1024,
        grace_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.python = python
        self.threads = threads or max(1, (os.cpu_count() or 1) // max(1, settings.train_slots))
        self.eval_timeout_s = eval_timeout_s
        self.heartbeat_every_s = heartbeat_every_s
        self.log_cap_bytes = log_cap_bytes
        self.grace_s = grace_s
        self.worker = settings.worker_identity or f"{socket.gethostname()}:{os.getpid()}"

    # ------------------------------------------------------------------ public

    def load(self, name: str) -> ResearchEnv:
        """The env named ``name`` (raises registry.EnvError with a clear message)."""
        return load_env(name, self.settings.env_paths)

    async def run(
        self,
        req: RunRequest,
        *,
        heartbeat: Callable[[Progress], None] | None = None,
        resume: Progress | None = None,
        cancel_event: Cancellable | None = None,
        device_ids: list[int] | None = None,
    ) -> RunResult:
        """Prepare, train, evaluate ``req``; see the module docstring for what raises."""
        t0 = time.monotonic()
        env = self.load(req.env)
        spec = env.spec
        if req.profile not in spec.profiles:
            raise ValueError(
                f"env {spec.name!r} has no profile {req.profile!r}; profiles: {sorted(spec.profiles)}"
            )
        stop = _Stop(cancel_event)
        await self._guarded(asyncio.to_thread(self.prepare, env, req.profile, stop), stop)
        if stop.cancelled:
            raise RunCancelled("cancelled while preparing the env")
        attempt = self.settings.home / "work" / f"{safe_name(req.idea_id)}-{uuid.uuid4().hex[:8]}"
        failed = True
        try:
            result = await self._run_in(attempt, env, req, heartbeat, resume, stop, device_ids or [])
            failed = result.status != "ok"
            result.wall_s = time.monotonic() - t0
            return result
        finally:
            if failed and os.environ.get("IDEAFORGE_KEEP_WORKDIRS") == "1":
                log.info("keeping work dir %s", attempt)
            else:
                shutil.rmtree(attempt, ignore_errors=True)

    def prepare(self, env: ResearchEnv, profile: str = "default", stop: Cancellable | None = None) -> Path:
        """Run the env's prepare_command once per machine and profile (file lock + ``.prepared`` marker), with
        the profile's variables (a smoke profile prepares small local data); returns the data dir."""
        data = self.data_dir(env, profile)
        data.mkdir(parents=True, exist_ok=True)
        marker = data / ".prepared"
        if not env.spec.prepare_command or marker.is_file():
            return data
        with open(data / ".lock", "w") as lock:
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if stop is not None and stop.is_set():
                        return data
                    time.sleep(0.2)
            if marker.is_file():  # prepared by someone else while we waited
                return data
            with tempfile.TemporaryDirectory(prefix=f"prepare-{env.spec.name}-") as tmp:
                cwd = Path(tmp) / "code"
                shutil.copytree(env.baseline, cwd)  # the pristine baseline: an idea never writes the cache
                (Path(tmp) / "out").mkdir()
                argv = self._argv(env.spec.prepare_command)
                extra = {
                    **env.spec.profiles.get(profile, {}),
                    "IDEAFORGE_SEED": "0",
                    "IDEAFORGE_OUT": str(Path(tmp) / "out"),
                    "IDEAFORGE_DATA": str(data),
                    "IDEAFORGE_DEVICE": "cuda" if env.spec.resources_for(profile).device == "gpu" else "cpu",
                    **self._thread_vars(),
                }
                res = run_sandboxed(
                    argv,
                    cwd,
                    scrubbed_env(extra),
                    PREPARE_TIMEOUT_S,
                    log_path=data / "prepare.log",
                    cancel_event=stop,
                    network=True,
                    grace_s=self.grace_s,
                )
            if res.cancelled:
                return data
            if not res.ok:
                why = "timed out" if res.timed_out else f"exit status {res.returncode}"
                raise PrepareError(
                    f"prepare_command of env {env.spec.name!r} failed ({why}):\n{error_tail(data / 'prepare.log')}"
                )
            marker.write_text(
                json.dumps(
                    {"command": env.spec.prepare_command, "at": time.time(), "files": data_manifest(data)}
                )
            )
            log.info("prepared env %s in %s", env.spec.name, data)
        return data

    def data_dir(self, env: ResearchEnv, profile: str = "default") -> Path:
        return self.settings.home / "data" / env.spec.name / profile

    def data_tampered(self, env: ResearchEnv, profile: str = "default") -> list[str]:
        """Prepared files of IDEAFORGE_DATA that were changed or deleted since prepare (new files are fine).

        When there are any, the cache is wiped so that the next run prepares it afresh.
        """
        data = self.data_dir(env, profile)
        try:
            prepared = json.loads((data / ".prepared").read_text()).get("files") or {}
        except (OSError, ValueError, AttributeError):
            return []
        now = data_manifest(data)
        changed = sorted(rel for rel, meta in prepared.items() if now.get(rel) != meta)
        if changed:
            log.error(
                "env %s: shared data changed after prepare: %s; wiping %s", env.spec.name, changed[:10], data
            )
            with open(data / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                (data / ".prepared").unlink(missing_ok=True)
                for child in data.iterdir():
                    if child.name == ".lock":
                        continue
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        return changed

    # ------------------------------------------------------------------ one attempt

    async def _run_in(
        self,
        attempt: Path,
        env: ResearchEnv,
        req: RunRequest,
        heartbeat: Callable[[Progress], None] | None,
        resume: Progress | None,
        stop: _Stop,
        device_ids: list[int],
    ) -> RunResult:
        spec, res_spec = env.spec, env.spec.resources_for(req.profile)
        code, out, tmp = attempt / "code", attempt / "out", attempt / "tmp"
        for d in (out, tmp):
            d.mkdir(parents=True, exist_ok=True)
        device = "cpu" if res_spec.device == "cpu" else "cuda:" + ",".join(map(str, device_ids))
        base = RunResult(status="failed", worker=self.worker, device=device)

        try:
            zip_bytes = await asyncio.to_thread(self.store.get_bytes, req.code)
        except StorageError as e:
            raise RunnerError(f"cannot fetch code package {req.code.uri}: {e}") from e
        try:
            unpack_code(zip_bytes, code)
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            return self._fail(base, "crashed", f"invalid code package {req.code.uri}: {e}")
        missing = [f for f in spec.editable_files if not (code / f).is_file()]
        if missing:
            return self._fail(
                base, "crashed", f"code package does not match env {spec.name!r}: missing {missing}"
            )
        tampered = restore_protected(code, env.baseline, spec.protected_files)
        if tampered:
            log.warning(
                "%s: code package had altered protected files %s; restored them", req.idea_id, tampered
            )

        env_vars = self._env_vars(env, req, out, tmp, device_ids)
        progress = Progress()
        if resume is not None and resume.checkpoint is not None and spec.checkpointing:
            path = out / f"resume-{resume.checkpoint_step or 0}.ckpt"
            try:
                await asyncio.to_thread(self.store.get_file, resume.checkpoint, path)
                env_vars["IDEAFORGE_RESUME"] = str(path)
                base.resumed_from_step = resume.checkpoint_step
                progress = Progress(
                    step=resume.checkpoint_step or 0,
                    checkpoint=resume.checkpoint,
                    checkpoint_step=resume.checkpoint_step,
                )
            except StorageError as e:
                log.warning(
                    "%s: checkpoint %s unavailable (%s); starting from scratch",
                    req.idea_id,
                    resume.checkpoint.uri,
                    e,
                )

        # ---- train
        train_log = attempt / "train.log"
        state = _Train(progress=progress)
        t_train = time.monotonic()
        tres = await self._train(
            env, res_spec, code, out, env_vars, train_log, state, stop, heartbeat, t_train
        )
        base.train_s = time.monotonic() - t_train
        base.curve = downsample(state.curve)
        if stop.cancelled:
            raise RunCancelled(f"{req.idea_id}: training cancelled")
        category, error = self._train_failure(tres, state, res_spec.time_limit_s, train_log)
        if category:
            return await self._finish(base, attempt, category, error)

        tampered_data = await asyncio.to_thread(self.data_tampered, env, req.profile)
        if tampered_data:
            return await self._finish(
                base,
                attempt,
                "eval_failed",
                f"training modified the shared data cache IDEAFORGE_DATA: {tampered_data[:10]}",
            )

        # ---- evaluate, in a fresh copy of the package with the pristine protected files
        t_eval = time.monotonic()
        evald = attempt / "eval"
        unpack_code(zip_bytes, evald)
        restore_protected(evald, env.baseline, spec.protected_files)
        if files_digest(evald, spec.protected_files) != env.protected_digest():
            raise RunnerError(
                f"protected files of env {spec.name!r} do not match after restore (baseline changed?)"
            )
        metric_file = attempt / f"metric-{uuid.uuid4().hex}.json"
        eval_vars = {k: v for k, v in env_vars.items() if k != "IDEAFORGE_RESUME"}
        eval_vars["IDEAFORGE_METRIC_FILE"] = str(metric_file)
        eval_log = attempt / "eval.log"
        eval_timeout = self.eval_timeout_s or max(60.0, res_spec.time_limit_s / 2)
        eres = await self._guarded(
            asyncio.to_thread(
                run_sandboxed,
                self._argv(spec.eval_command),
                evald,
                scrubbed_env(eval_vars),
                eval_timeout,
                res_spec.cpu_time_limit_s,
                res_spec.memory_limit_mb,
                int(res_spec.max_output_mb * 1024 * 1024),
                None,
                eval_log,
                stop,
                grace_s=self.grace_s,
            ),
            stop,
        )
        base.eval_s = time.monotonic() - t_eval
        if stop.cancelled:
            raise RunCancelled(f"{req.idea_id}: evaluation cancelled")
        if eres.output_limited:
            return await self._finish(base, attempt, "output_limit", "evaluation exceeded the output limit")
        if eres.timed_out:
            return await self._finish(
                base, attempt, "eval_failed", f"evaluation timed out after {eval_timeout:.0f}s"
            )
        if eres.returncode != 0:
            return await self._finish(
                base,
                attempt,
                "eval_failed",
                f"evaluator exited with {eres.returncode}:\n{error_tail(eval_log)}",
            )
        return await self._finish_metric(base, attempt, env, metric_file)

    async def _train(
        self,
        env: ResearchEnv,
        res_spec: Resources,
        code: Path,
        out: Path,
        env_vars: dict[str, str],
        log_path: Path,
        state: _Train,
        stop: _Stop,
        heartbeat: Callable[[Progress], None] | None,
        t0: float,
    ) -> SandboxResult:
        """Run the training command; protocol lines go to an asyncio queue handled on the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        def on_line(line: str) -> None:  # sandbox thread
            if line.startswith((PROGRESS_PREFIX, CHECKPOINT_PREFIX)):
                loop.call_soon_threadsafe(queue.put_nowait, line)

        async def consume() -> None:
            while (line := await queue.get()) is not None:
                try:
                    await self._handle_line(line, env, code, out, state, stop, heartbeat, t0)
                except Exception:  # noqa: BLE001 - a bad protocol line must not kill the run
                    log.warning("ignoring protocol line %r", line[:200], exc_info=True)

        consumer = asyncio.create_task(consume())
        try:
            return await self._guarded(
                asyncio.to_thread(
                    run_sandboxed,
                    self._argv(env.spec.run_command),
                    code,
                    scrubbed_env(env_vars),
                    res_spec.time_limit_s,
                    res_spec.cpu_time_limit_s,
                    res_spec.memory_limit_mb,
                    int(res_spec.max_output_mb * 1024 * 1024),
                    on_line,
                    log_path,
                    stop,
                    grace_s=self.grace_s,
                ),
                stop,
            )
        finally:
            queue.put_nowait(None)
            try:
                await asyncio.shield(consumer)
            except asyncio.CancelledError:
                consumer.cancel()
                raise

    async def _handle_line(
        self,
        line: str,
        env: ResearchEnv,
        code: Path,
        out: Path,
        state: _Train,
        stop: _Stop,
        heartbeat: Callable[[Progress], None] | None,
        t0: float,
    ) -> None:
        prefix = PROGRESS_PREFIX if line.startswith(PROGRESS_PREFIX) else CHECKPOINT_PREFIX
        data = json.loads(line[len(prefix) :])
        if not isinstance(data, dict):
            raise ValueError("protocol payload is not a JSON object")
        p = state.progress
        now = time.monotonic()
        if prefix == PROGRESS_PREFIX:
            step = int(data.get("step", p.step))
            loss = _number(data.get("loss"))
            for k, v in data.items():
                x = _number(v)
                # non-finite values stay out of the curve: they do not survive JSON payloads
                if (
                    k not in ("step", "elapsed_s")
                    and x is not None
                    and math.isfinite(x)
                    and len(state.curve) < 100_000
                ):
                    key = "train_loss" if k == "loss" else str(k)[:64]
                    state.curve.append(CurvePoint(step=step, value=x, key=key))
            if loss is not None and not math.isfinite(loss) and state.nan_step is None:
                state.nan_step = step
                stop.internal.set()
            state.progress = p.model_copy(
                update={
                    "step": step,
                    "loss": loss if loss is not None and math.isfinite(loss) else None,
                    "elapsed_s": round(now - t0, 3),
                }
            )
            if heartbeat and now - state.last_beat >= self.heartbeat_every_s:
                state.last_beat = now
                heartbeat(state.progress)
            return
        if not env.spec.checkpointing:
            return
        path = Path(str(data["path"]))
        path = (path if path.is_absolute() else code / path).resolve()
        if out.resolve() not in path.parents or not path.is_file():
            raise ValueError(f"checkpoint {path} is not a file under IDEAFORGE_OUT")
        step = int(data.get("step", p.step))
        try:
            ref: ArtifactRef = await asyncio.to_thread(self.store.put_file, path, "checkpoint")
        except StorageError as e:
            log.warning("could not upload checkpoint %s: %s", path, e)
            return
        state.progress = state.progress.model_copy(
            update={"checkpoint": ref, "checkpoint_step": step, "elapsed_s": round(now - t0, 3)}
        )
        if heartbeat:
            state.last_beat = now
            heartbeat(state.progress)

    # ------------------------------------------------------------------ results

    def _train_failure(
        self, res: SandboxResult, state: _Train, time_limit_s: float, log_path: Path
    ) -> tuple[FailureCategory | None, str | None]:
        if state.nan_step is not None:
            return "nan", f"training loss became non-finite at step {state.nan_step}"
        if res.output_limited:
            return "output_limit", f"training printed more than the output limit ({res.output_bytes}+ bytes)"
        if res.timed_out:
            return "timeout", f"training exceeded the time limit of {time_limit_s:.0f}s"
        if res.returncode == -24:  # SIGXCPU: the CPU-time limit
            return "timeout", "training exceeded the CPU-time limit"
        if res.returncode != 0:
            return "crashed", f"training exited with {res.returncode}:\n{error_tail(log_path)}"
        return None, None

    async def _finish_metric(
        self, base: RunResult, attempt: Path, env: ResearchEnv, metric_file: Path
    ) -> RunResult:
        spec = env.spec
        try:
            data = json.loads(metric_file.read_text())
        except FileNotFoundError:
            return await self._finish(base, attempt, "eval_failed", "the evaluator wrote no metric file")
        except (ValueError, OSError) as e:
            return await self._finish(base, attempt, "eval_failed", f"metric file is not valid JSON: {e}")
        if not isinstance(data, dict) or spec.metric not in data:
            return await self._finish(
                base, attempt, "eval_failed", f"metric file lacks {spec.metric!r}: {data!r}"[:500]
            )
        value = _number(data[spec.metric])
        base.metrics = {
            str(k): x for k, v in data.items() if (x := _number(v)) is not None and math.isfinite(x)
        }
        if value is None:
            return await self._finish(base, attempt, "eval_failed", f"metric {spec.metric!r} is not a number")
        if not math.isfinite(value):
            return await self._finish(base, attempt, "nan", f"metric {spec.metric!r} is {value}")
        lo, hi = spec.plausible_range
        if not lo <= value <= hi:
            return await self._finish(
                base,
                attempt,
                "implausible_metric",
                f"{spec.metric} = {value:g} is outside the plausible range [{lo}, {hi}]",
            )
        base.status, base.metric = "ok", value
        return await self._finish(base, attempt, None, None)

    async def _finish(
        self, base: RunResult, attempt: Path, category: FailureCategory | None, error: str | None
    ) -> RunResult:
        """Store the combined (capped) log and fill in the failure fields."""
        if category is not None:
            base.status, base.category, base.error, base.metric = "failed", category, error, None
        parts = []
        for name in ("train", "eval"):
            p = attempt / f"{name}.log"
            if p.is_file():
                parts.append(f"===== {name} =====\n".encode() + cap_text(p.read_bytes(), self.log_cap_bytes))
        if error and not parts:
            parts.append(error.encode())
        if parts:
            data = cap_text(b"\n".join(parts), self.log_cap_bytes)
            try:
                base.log = await asyncio.to_thread(self.store.put_bytes, data, "log")
            except StorageError as e:
                raise RunnerError(f"cannot store the run log: {e}") from e
        return base

    def _fail(self, base: RunResult, category: FailureCategory, error: str) -> RunResult:
        base.status, base.category, base.error = "failed", category, error
        return base

    # ------------------------------------------------------------------ helpers

    async def _guarded(self, fut: Any, stop: _Stop) -> Any:
        """Await a thread's work; on asyncio cancellation stop the command, wait for it, re-raise."""
        task = asyncio.ensure_future(fut)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            stop.internal.set()
            try:
                await task
            except Exception:  # noqa: BLE001 - we are cancelling anyway
                log.debug("error while stopping a cancelled command", exc_info=True)
            raise

    def _argv(self, command: list[str]) -> list[str]:
        return [a.replace("{python}", self.python) for a in command]

    def _thread_vars(self) -> dict[str, str]:
        n = str(self.threads)
        return {"IDEAFORGE_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}

    def _env_vars(
        self, env: ResearchEnv, req: RunRequest, out: Path, tmp: Path, device_ids: list[int]
    ) -> dict[str, str]:
        gpu = env.spec.resources_for(req.profile).device == "gpu"
        return {
            **env.spec.profiles[req.profile],
            **self._thread_vars(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": str(tmp),
            "IDEAFORGE_SEED": str(req.seed),
            "IDEAFORGE_OUT": str(out),
            "IDEAFORGE_DATA": str(self.data_dir(env, req.profile)),
            "IDEAFORGE_DEVICE": "cuda" if gpu else "cpu",
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, device_ids)) if gpu else "",
        }


def _number(v: Any) -> float | None:
    """A JSON number (NaN/inf included) as float; anything else (bool, str, null) -> None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)
