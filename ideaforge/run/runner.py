"""Train one patched codebase in a sandbox and score it with the env's locked evaluator in a fresh one.

One attempt, in order (research_envs/PROTOCOL.md):

1. resolve the env and its resources once (:meth:`ExperimentRunner.resolve`);
2. prepare the env's data once per machine (:mod:`ideaforge.run.datacache`);
3. unpack the package; refuse files that would shadow a module the evaluator imports; restore protected files;
   remove eval-only files; train in the sandbox (:mod:`ideaforge.run.sandbox`) with the training data
   read-only and only the attempt's ``code`` and ``out`` writable; stream checkpoints to the store;
4. evaluate in a fresh sandbox (another uid): a fresh unpack with the protected files restored and checked
   against the env's ``protected.lock``, an isolated interpreter (``python -I``), training outputs and data
   read-only, held-out data visible only here, the metric file in a directory only this step can write;
5. check the metric (:mod:`ideaforge.run.metrics`) and store the log.

Idea failures come back as a failed :class:`RunResult` with a category. Only infrastructure problems raise:
storage errors, a failing prepare_command, a broken env, a sandbox that cannot be set up
(:class:`~ideaforge.run.sandbox.SandboxUnavailable`), cancellation (:class:`RunCancelled`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ideaforge.config import Settings
from ideaforge.models import (
    ArtifactRef,
    AttemptHistory,
    FailureCategory,
    Progress,
    Resources,
    RunRequest,
    RunResult,
)
from ideaforge.research_envs.registry import EnvError, ResearchEnv, expand_command, load_env
from ideaforge.run.codetree import remove_files, restore_protected, shadowing_files, unpack_code
from ideaforge.run.datacache import DataCache, PrepareError
from ideaforge.run.metrics import read_metric_file
from ideaforge.run.model_channel import SERVER_HIDDEN, ChannelEnds, channel_var
from ideaforge.run.protocol import (
    TrainState,
    cap_text,
    checkpoint_of,
    downsample,
    error_tail,
    is_protocol_line,
    parse_line,
    read_capped,
)
from ideaforge.run.sandbox import (
    Box,
    Cancellable,
    Limits,
    SandboxResult,
    check_sandbox,
    gpu_device_nodes,
    run_sandboxed,
    scrubbed_env,
)
from ideaforge.store.artifacts import ObjectStore, StorageError

__all__ = ["ExperimentRunner", "PrepareError", "Resolved", "RunCancelled", "RunnerError", "downsample"]

log = logging.getLogger(__name__)

MB = 1024 * 1024
EVAL_WRITE_BYTES = 64 * MB
COMMAND_THREADS = 64  # threads for sandboxed commands (created as needed): waiting, not computing
SERVE_EXIT_GRACE_S = 10.0  # a model server still running this long after its evaluator ended is stopped
# runs the evaluator under `python -I` (no cwd, no PYTHON* variables, no user site on sys.path) with the
# evaluation tree appended at the END of sys.path: the stdlib and installed packages always win
_EVAL_BOOT = (
    "import os, runpy, sys\n"
    "sys.path.append(os.getcwd())\n"
    "kind, target = sys.argv[1], sys.argv[2]\n"
    "sys.argv = [target, *sys.argv[3:]]\n"
    "if kind == 'module':\n"
    "    runpy.run_module(target, run_name='__main__', alter_sys=True)\n"
    "else:\n"
    "    runpy.run_path(target, run_name='__main__')\n"
)


class RunnerError(RuntimeError):
    """An infrastructure problem (not the idea's fault): Temporal should retry the attempt."""


class RunCancelled(Exception):  # noqa: N818 - reads better at the raise site
    """The caller's ``cancel_event`` stopped the run; the process tree is already dead."""


@dataclass(frozen=True)
class Resolved:
    """An attempt's env and resources, looked up once."""

    env: ResearchEnv
    profile: str
    resources: Resources


@dataclass(frozen=True)
class AttemptDirs:
    """Where one attempt's files live (``root`` itself is never bound into a sandbox)."""

    root: Path

    @property
    def code(self) -> Path:
        return self.root / "train" / "code"

    @property
    def out(self) -> Path:
        return self.root / "train" / "out"

    @property
    def eval_code(self) -> Path:
        return self.root / "eval" / "code"

    @property
    def metric_dir(self) -> Path:
        return self.root / "eval" / "metric"

    @property
    def train_log(self) -> Path:
        return self.root / "train.log"

    @property
    def eval_log(self) -> Path:
        return self.root / "eval.log"

    @property
    def earlier_train_log(self) -> Path:
        """The train log of the attempts before a resume, up to their checkpoint."""
        return self.root / "train-earlier.log"

    def serve_log(self, instance: int = 0) -> Path:
        return self.root / ("serve.log" if instance == 0 else f"serve-{instance}.log")


class StopFlag:
    """Stop flag the sandbox polls: ``internal`` is set by its owner (the runner on NaN, the preflight once the
    step it waits for is reported), ``external`` is the caller's cancel event."""

    def __init__(self, external: Cancellable | None) -> None:
        self.internal = threading.Event()
        self.external = external

    @property
    def cancelled(self) -> bool:
        return self.external is not None and self.external.is_set()

    def is_set(self) -> bool:
        return self.internal.is_set() or self.cancelled


def safe_name(text: str) -> str:
    """A file-name-safe version of an idea id (``campaign-x/e001/i02`` -> ``campaign-x_e001_i02``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "idea"


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 1024**3


def tree_limits(res: Resources, *, wall_s: float, write_bytes: int) -> Limits:
    """Limits for one sandboxed step of an attempt; GPU envs get memory, process and CPU limits too."""
    return Limits(
        wall_s=wall_s,
        cpu_s=res.cpu_time_limit_s or res.time_limit_s * (os.cpu_count() or 1),
        memory_bytes=(res.memory_limit_mb * MB) if res.memory_limit_mb else machine_memory_bytes() * 3 // 4,
        max_pids=res.max_processes,
        output_bytes=int(res.max_output_mb * MB),
        file_bytes=write_bytes,
        write_bytes=write_bytes,
    )


def isolated_eval_argv(command: list[str], python: str) -> list[str]:
    """``{python} script.py ...`` / ``{python} -m mod ...`` as an isolated-interpreter command."""
    if len(command) >= 2 and command[0] == "{python}":
        if command[1] == "-m" and len(command) >= 3:
            return [python, "-I", "-c", _EVAL_BOOT, "module", command[2], *command[3:]]
        if not command[1].startswith("-"):
            return [python, "-I", "-c", _EVAL_BOOT, "path", command[1], *command[2:]]
    raise EnvError(f"eval_command must be ['{{python}}', 'script.py', ...] or ['{{python}}', '-m', 'module', ...]: {command}")


class ExperimentRunner:
    """Runs experiments for one worker: prepare (once per env), train, evaluate, report."""

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
        self.data = DataCache(settings.home)
        # every running command waits in a thread of its own, and a served evaluation needs 1 + serve_instances of
        # them at once: never the event loop's small default pool, where they could wait on each other
        self._command_threads = ThreadPoolExecutor(max_workers=COMMAND_THREADS, thread_name_prefix="ideaforge-cmd")

    # ------------------------------------------------------------------ public

    def load(self, name: str) -> ResearchEnv:
        """The env named ``name`` (raises registry.EnvError with a clear message)."""
        return load_env(name, self.settings.env_paths)

    def resolve(self, req: RunRequest) -> Resolved:
        """The env and resources of ``req``; raises EnvError / ValueError for a bad request."""
        env = self.load(req.env)
        if req.profile not in env.spec.profiles:
            raise ValueError(
                f"env {env.spec.name!r} has no profile {req.profile!r}; profiles: {sorted(env.spec.profiles)}"
            )
        env.pinned()  # an env without a lock is refused before anything runs
        return Resolved(env=env, profile=req.profile, resources=env.spec.resources_for(req.profile))

    async def run(
        self,
        req: RunRequest,
        *,
        resolved: Resolved | None = None,
        heartbeat: Callable[[Progress], None] | None = None,
        resume: Progress | None = None,
        cancel_event: Cancellable | None = None,
        device_ids: list[int] | None = None,
    ) -> RunResult:
        """Prepare, train, evaluate ``req``; see the module docstring for what raises."""
        t0 = time.monotonic()
        mode = check_sandbox()
        plan = resolved or self.resolve(req)
        stop = StopFlag(cancel_event)
        ready = await self._guarded(asyncio.to_thread(self.prepare, plan.env, plan.profile, stop), stop)
        if stop.cancelled or not ready:
            raise RunCancelled("cancelled while preparing the env")
        dirs = AttemptDirs(self.settings.home / "work" / f"{safe_name(req.idea_id)}-{uuid.uuid4().hex[:8]}")
        failed = True
        try:
            result = await self._attempt(dirs, plan, req, heartbeat, resume, stop, device_ids or [])
            result.unsafe = mode == "unsafe"
            failed = result.status != "ok"
            result.wall_s = time.monotonic() - t0
            return result
        finally:
            if failed and os.environ.get("IDEAFORGE_KEEP_WORKDIRS") == "1":
                log.info("keeping work dir %s", dirs.root)
            else:
                shutil.rmtree(dirs.root, ignore_errors=True)

    def prepare(self, env: ResearchEnv, profile: str = "default", stop: Cancellable | None = None) -> bool:
        """Prepare the env's data for ``profile`` once per machine; False when cancelled while waiting."""
        gpu = env.spec.resources_for(profile).device == "gpu"
        env_vars = {
            **env.spec.profiles.get(profile, {}),
            **self._host_paths(env),
            **self._thread_vars(),
            "IDEAFORGE_SEED": "0",
            "IDEAFORGE_DEVICE": "cuda" if gpu else "cpu",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
        }

        def run(argv: list[str], box: Box, extra: dict[str, str], limits: Limits, log_path: Path) -> SandboxResult:
            box.readonly.extend(self._host_path_dirs(env))
            return run_sandboxed(
                self._argv(argv),
                box,
                scrubbed_env({**env_vars, **extra}),
                limits,
                log_path=log_path,
                cancel_event=stop,
                grace_s=self.grace_s,
                python=self.python,
            )

        return self.data.prepare(env, profile, run, env_vars, stop)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(
        self,
        dirs: AttemptDirs,
        plan: Resolved,
        req: RunRequest,
        heartbeat: Callable[[Progress], None] | None,
        resume: Progress | None,
        stop: StopFlag,
        device_ids: list[int],
    ) -> RunResult:
        env, spec, res = plan.env, plan.env.spec, plan.resources
        for d in (dirs.code.parent, dirs.out, dirs.eval_code.parent, dirs.metric_dir):
            d.mkdir(parents=True, exist_ok=True)
        gpu = res.device == "gpu"
        device = "cuda:" + ",".join(map(str, device_ids)) if gpu else "cpu"
        base = RunResult(status="failed", worker=self.worker, device=device)

        try:
            zip_bytes = await asyncio.to_thread(self.store.get_bytes, req.code)
        except StorageError as e:
            raise RunnerError(f"cannot fetch code package {req.code.uri}: {e}") from e
        try:
            unpack_code(zip_bytes, dirs.code)
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            return self._fail(base, "crashed", f"invalid code package {req.code.uri}: {e}")
        missing = [f for f in spec.editable_files if not (dirs.code / f).is_file()]
        if missing:
            return self._fail(base, "crashed", f"code package does not match env {spec.name!r}: missing {missing}")
        shadows = shadowing_files(dirs.code, env.baseline)
        if shadows:
            return self._fail(
                base,
                "protected_file_touched",
                f"the package adds {shadows}, which would shadow modules the evaluator imports; refused",
            )
        tampered = restore_protected(dirs.code, env.baseline, spec.protected_files)
        if tampered:
            log.warning("%s: code package had altered protected files %s; restored them", req.idea_id, tampered)
        remove_files(dirs.code, spec.eval_only_files)

        env_vars = self._env_vars(plan, req, dirs, device_ids)
        state = TrainState(progress=Progress())
        if resume is not None and resume.checkpoint is not None and spec.checkpointing:
            path = dirs.out / f"resume-{resume.checkpoint_step or 0}.ckpt"
            try:
                await asyncio.to_thread(self.store.get_file, resume.checkpoint, path)
                env_vars["IDEAFORGE_RESUME"] = str(path)
                base.resumed_from_step = resume.checkpoint_step
                state.progress = Progress(
                    step=resume.checkpoint_step or 0, checkpoint=resume.checkpoint, checkpoint_step=resume.checkpoint_step
                )
            except StorageError as e:
                log.warning("%s: checkpoint %s unusable (%s); starting from scratch", req.idea_id, resume.checkpoint.uri, e)
            else:
                await self._carry_history(resume, state, dirs, req.idea_id)

        # ---- train
        write_cap = int(res.max_write_mb * MB)
        train_box = Box(
            cwd=dirs.code,
            writable=[dirs.code, dirs.out],
            readonly=[self.data.train_dir(env, plan.profile), *self._host_path_dirs(env)],
            devices=gpu_device_nodes(device_ids) if gpu else [],
        )
        t_train = time.monotonic()
        tres = await self._train(plan, dirs, train_box, env_vars, tree_limits(res, wall_s=res.time_limit_s,
                                                                               write_bytes=write_cap),
                                 state, stop, heartbeat)
        base.train_s = time.monotonic() - t_train
        base.curve = downsample(state.curve)
        if stop.cancelled:
            raise RunCancelled(f"{req.idea_id}: training cancelled")
        category, error = self._train_failure(tres, state, res, dirs.train_log)
        if category:
            return await self._finish(base, dirs, category, error)
        tampered_data = await asyncio.to_thread(self.data.tampered, env, plan.profile)
        if tampered_data:
            return await self._finish(
                base, dirs, "eval_failed", f"the shared data cache IDEAFORGE_DATA changed during training: {tampered_data[:10]}"
            )

        # ---- evaluate
        t_eval = time.monotonic()
        eres, sres = await self._evaluate(plan, dirs, zip_bytes, env_vars, device_ids, stop)
        base.eval_s = time.monotonic() - t_eval
        if stop.cancelled:
            raise RunCancelled(f"{req.idea_id}: evaluation cancelled")
        category, error = self._eval_failure(eres, sres, dirs)
        if category:
            return await self._finish(base, dirs, category, error)
        reading = read_metric_file(dirs.metric_dir / "metric.json", spec)
        base.metrics = reading.metrics
        if reading.category:
            return await self._finish(base, dirs, reading.category, reading.error)
        base.status, base.metric = "ok", reading.value
        return await self._finish(base, dirs, None, None)

    async def _train(
        self,
        plan: Resolved,
        dirs: AttemptDirs,
        box: Box,
        env_vars: dict[str, str],
        limits: Limits,
        state: TrainState,
        stop: StopFlag,
        heartbeat: Callable[[Progress], None] | None,
    ) -> SandboxResult:
        """Run the training command; protocol lines go to an asyncio queue handled on the event loop."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        last_beat = [0.0]

        def on_line(line: str) -> None:  # sandbox thread
            if is_protocol_line(line):
                loop.call_soon_threadsafe(queue.put_nowait, line)

        async def consume() -> None:
            while (line := await queue.get()) is not None:
                try:
                    await self._handle_line(line, plan, dirs, state, stop, heartbeat, last_beat)
                except Exception:  # noqa: BLE001 - a bad protocol line must not kill the run
                    log.warning("ignoring protocol line %r", line[:200], exc_info=True)

        consumer = asyncio.create_task(consume())
        try:
            return await self._sandboxed(
                plan.env.spec.run_command, box, env_vars, limits, dirs.train_log, stop, on_line=on_line
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
        plan: Resolved,
        dirs: AttemptDirs,
        state: TrainState,
        stop: StopFlag,
        heartbeat: Callable[[Progress], None] | None,
        last_beat: list[float],
    ) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        kind, data = parsed
        now = time.monotonic()
        if kind == "progress":
            state.on_progress(data)
            if state.nan_step is not None:
                stop.internal.set()
            if heartbeat and now - last_beat[0] >= self.heartbeat_every_s:
                last_beat[0] = now
                heartbeat(state.progress)
            return
        if not plan.env.spec.checkpointing:
            return
        ckpt = checkpoint_of(data, state.progress.step)
        cap = int((plan.resources.max_checkpoint_mb or plan.resources.max_write_mb) * MB)
        try:
            ref = await asyncio.to_thread(self._upload_checkpoint, dirs, ckpt.path, cap)
        except (StorageError, ValueError, OSError) as e:
            log.warning("checkpoint %s not uploaded: %s", ckpt.path, e)
            return
        try:
            history = await asyncio.to_thread(self._store_history, dirs, state, ckpt.step)
        except StorageError as e:  # the checkpoint still resumes; the resumed curve and log start there
            log.warning("history up to checkpoint step %d not stored: %s", ckpt.step, e)
            history = None
        state.progress = state.progress.model_copy(
            update={"checkpoint": ref, "checkpoint_step": ckpt.step, "elapsed_s": state.elapsed(), "history": history}
        )
        if heartbeat:
            last_beat[0] = now
            heartbeat(state.progress)

    def _store_history(self, dirs: AttemptDirs, state: TrainState, step: int) -> ArtifactRef:
        """The curve and train log of every attempt so far up to checkpoint ``step``, as an AttemptHistory."""
        earlier = dirs.earlier_train_log
        text = earlier.read_text(encoding="utf-8") if earlier.is_file() else ""
        if dirs.train_log.is_file():
            text += read_capped(dirs.train_log, self.log_cap_bytes).decode(errors="replace")
        history = AttemptHistory(
            step=step,
            curve=downsample([p for p in state.curve if p.step <= step]),
            log=cap_text(text.encode(), self.log_cap_bytes).decode(errors="replace"),
        )
        return self.store.put_bytes(history.model_dump_json().encode(), "history")

    async def _carry_history(self, resume: Progress, state: TrainState, dirs: AttemptDirs, idea_id: str) -> None:
        """Start a resumed attempt's curve and log with what the attempts before it trained up to the checkpoint
        (nothing when the heartbeat carried no history, or it cannot be read: the curve then starts there)."""
        if resume.history is None:
            return
        try:
            raw = await asyncio.to_thread(self.store.get_bytes, resume.history)
            history = AttemptHistory.model_validate_json(raw)
        except (StorageError, ValueError) as e:
            log.warning("%s: history %s unusable (%s); the curve starts at the checkpoint", idea_id, resume.history.uri, e)
            return
        step = resume.checkpoint_step or 0
        state.curve = [p for p in history.curve if p.step <= step]
        state.progress = state.progress.model_copy(update={"history": resume.history})
        dirs.earlier_train_log.write_text(history.log, encoding="utf-8")  # heads this attempt's log and history

    def _upload_checkpoint(self, dirs: AttemptDirs, path_text: str, cap: int) -> ArtifactRef:
        """Stream a checkpoint under IDEAFORGE_OUT to the store (symlinks and paths outside ``out`` refused)."""
        out = dirs.out.resolve()
        path = Path(path_text)
        path = path if path.is_absolute() else dirs.code / path
        fd = os.open(path.resolve(), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))  # what was opened, whatever was swapped since
            if out not in real.parents or not os.path.isfile(real):
                raise ValueError(f"checkpoint {path_text} is not a file under IDEAFORGE_OUT")
            return self.store.put_stream(f, "checkpoint", max_bytes=cap, name=str(real))

    async def _evaluate(
        self,
        plan: Resolved,
        dirs: AttemptDirs,
        zip_bytes: bytes,
        env_vars: dict[str, str],
        device_ids: list[int],
        stop: StopFlag,
    ) -> tuple[SandboxResult, list[SandboxResult]]:
        """A fresh unpack with the pinned protected files, evaluated in its own sandbox; with the env's model
        servers beside it, each in another, when it has them. Returns how the evaluator and the servers ended."""
        env, spec, res = plan.env, plan.env.spec, plan.resources
        unpack_code(zip_bytes, dirs.eval_code)
        restore_protected(dirs.eval_code, env.baseline, spec.protected_files)
        unpinned = env.unpinned(dirs.eval_code)
        if unpinned:
            raise RunnerError(
                f"protected files of env {spec.name!r} differ from {env.lock_path} after restore: {unpinned}; "
                "the env's baseline was changed on this worker"
            )
        eval_vars = {k: v for k, v in env_vars.items() if k != "IDEAFORGE_RESUME"}
        eval_vars["IDEAFORGE_METRIC_FILE"] = str(dirs.metric_dir / "metric.json")
        eval_vars["IDEAFORGE_EVAL_DATA"] = str(self.data.eval_dir(env, plan.profile))
        gpu = res.device == "gpu"
        devices = gpu_device_nodes(device_ids) if gpu else []
        served = spec.serve_command is not None
        box = Box(
            cwd=dirs.eval_code,
            writable=[dirs.metric_dir],
            readonly=[
                dirs.eval_code,
                dirs.out,
                self.data.train_dir(env, plan.profile),
                self.data.eval_dir(env, plan.profile),
                *self._host_path_dirs(env),
            ],
            devices=[] if served else devices,  # with a model server, the model (and its GPU) is there
        )
        timeout = self.eval_timeout_s or max(60.0, res.time_limit_s / 2)
        limits = tree_limits(res, wall_s=timeout, write_bytes=EVAL_WRITE_BYTES)
        argv = isolated_eval_argv(spec.eval_command, "{python}")
        if not served:
            return await self._sandboxed(argv, box, eval_vars, limits, dirs.eval_log, stop), []
        # the model server: editable code, the trained outputs and the training data, never the held-out data
        # nor the metric directory, under a uid of its own; it learns the held-out inputs only as requests
        serve_box = Box(
            cwd=dirs.eval_code,
            readonly=[dirs.eval_code, dirs.out, self.data.train_dir(env, plan.profile), *self._host_path_dirs(env)],
            devices=devices,
        )
        serve_vars = {k: v for k, v in eval_vars.items() if k not in SERVER_HIDDEN}
        serve_argv = isolated_eval_argv(spec.serve_command, "{python}")
        channels = [ChannelEnds.open() for _ in range(spec.serve_instances)]
        serve_stop = StopFlag(stop)
        servers = [
            asyncio.ensure_future(
                self._sandboxed(serve_argv, serve_box, serve_vars | channel_var([ends.serve]), limits,
                                dirs.serve_log(i), serve_stop, pass_fds=ends.serve)
            )
            for i, ends in enumerate(channels)
        ]  # fmt: skip
        try:
            result = await self._sandboxed(
                argv, box, eval_vars | channel_var([ends.evaluator for ends in channels]), limits, dirs.eval_log,
                stop, pass_fds=tuple(fd for ends in channels for fd in ends.evaluator),
            )  # fmt: skip
        finally:
            try:  # the evaluator's ends are closed: a server that does not exit on its own is stopped
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*servers)), SERVE_EXIT_GRACE_S)
            except TimeoutError:
                serve_stop.internal.set()
                await asyncio.gather(*servers)
        return result, [server.result() for server in servers]

    async def _sandboxed(
        self,
        command: list[str],
        box: Box,
        env_vars: dict[str, str],
        limits: Limits,
        log_path: Path,
        stop: StopFlag,
        on_line: Callable[[str], None] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> SandboxResult:
        call = functools.partial(
            self.run_command, command, box, env_vars, limits, log_path, stop, on_line=on_line, pass_fds=pass_fds
        )
        return await self._guarded(asyncio.get_running_loop().run_in_executor(self._command_threads, call), stop)

    def run_command(
        self,
        command: list[str],
        box: Box,
        env_vars: dict[str, str],
        limits: Limits,
        log_path: Path,
        stop: StopFlag,
        on_line: Callable[[str], None] | None = None,
        pass_fds: tuple[int, ...] = (),
        grace_s: float | None = None,
    ) -> SandboxResult:
        """Run an env command (``{python}`` expanded, environment scrubbed) in ``box``; blocking."""
        return run_sandboxed(
            self._argv(command),
            box,
            scrubbed_env(env_vars),
            limits,
            on_line=on_line,
            log_path=log_path,
            cancel_event=stop,
            grace_s=self.grace_s if grace_s is None else grace_s,
            python=self.python,
            pass_fds=pass_fds,
        )

    # ------------------------------------------------------------------ results

    def _train_failure(
        self, res: SandboxResult, state: TrainState, resources: Resources, log_path: Path
    ) -> tuple[FailureCategory | None, str | None]:
        if state.nan_step is not None:
            return "nan", f"training loss became non-finite at step {state.nan_step}"
        if res.output_limited:
            return "output_limit", f"training printed more than the output limit ({res.output_bytes}+ bytes)"
        if res.write_limited:
            return "output_limit", f"training wrote more than {resources.max_write_mb:g} MB to its directory"
        if res.timed_out:
            return "timeout", f"training exceeded the time limit of {resources.time_limit_s:.0f}s"
        if res.cpu_limited or res.returncode == -24:  # SIGXCPU: the per-process CPU-time limit
            return "timeout", "training exceeded the CPU-time limit"
        if res.memory_limited:
            return "crashed", f"training exceeded the memory limit of its process tree:\n{error_tail(log_path)}"
        if res.returncode != 0:
            return "crashed", f"training exited with {res.returncode}:\n{error_tail(log_path)}"
        return None, None

    def _eval_failure(
        self, res: SandboxResult, servers: list[SandboxResult], dirs: AttemptDirs
    ) -> tuple[FailureCategory | None, str | None]:
        if res.output_limited:
            return "output_limit", "evaluation exceeded the output limit"
        if res.timed_out or res.cpu_limited:
            return "eval_failed", f"evaluation timed out after {res.wall_s:.0f}s"
        if res.memory_limited:
            return "eval_failed", "evaluation exceeded the memory limit"
        if res.returncode != 0:
            error = f"evaluator exited with {res.returncode}:\n{error_tail(dirs.eval_log)}"
            for i, served in enumerate(servers):
                if not served.ok:
                    why = "exceeded the memory limit" if served.memory_limited else f"exited with {served.returncode}"
                    error += f"\nthe model server {why}:\n{error_tail(dirs.serve_log(i))}"
                    break
            return "eval_failed", error
        return None, None

    async def _finish(
        self, base: RunResult, dirs: AttemptDirs, category: FailureCategory | None, error: str | None
    ) -> RunResult:
        """Store the combined (capped) log and fill in the failure fields."""
        if category is not None:
            base.status, base.category, base.error, base.metric = "failed", category, error, None
        parts = []
        servers = []
        while dirs.serve_log(len(servers)).is_file():
            servers.append((f"model server {len(servers)}", dirs.serve_log(len(servers))))
        earlier = ("train, earlier attempts up to the checkpoint", dirs.earlier_train_log)
        for name, p in (earlier, ("train", dirs.train_log), ("eval", dirs.eval_log), *servers):
            if p.is_file():
                parts.append(f"===== {name} =====\n".encode() + read_capped(p, self.log_cap_bytes))
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

    async def _guarded(self, fut: Any, stop: StopFlag) -> Any:
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
        return expand_command(command, self.python)

    def _thread_vars(self) -> dict[str, str]:
        n = str(self.threads)
        return {"IDEAFORGE_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}

    def _host_paths(self, env: ResearchEnv) -> dict[str, str]:
        """The env's ``host_paths`` variables that are set on this host (passed through, bound read-only)."""
        return {k: os.environ[k] for k in env.spec.host_paths if os.environ.get(k)}

    def _host_path_dirs(self, env: ResearchEnv) -> list[Path]:
        return [Path(v) for v in self._host_paths(env).values() if Path(v).is_absolute() and Path(v).exists()]

    def _env_vars(self, plan: Resolved, req: RunRequest, dirs: AttemptDirs, device_ids: list[int]) -> dict[str, str]:
        gpu = plan.resources.device == "gpu"
        return {
            **plan.env.spec.profiles[plan.profile],
            **self._host_paths(plan.env),
            **self._thread_vars(),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "IDEAFORGE_SEED": str(req.seed),
            "IDEAFORGE_OUT": str(dirs.out),
            "IDEAFORGE_DATA": str(self.data.train_dir(plan.env, plan.profile)),
            "IDEAFORGE_DEVICE": "cuda" if gpu else "cpu",
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, device_ids)) if gpu else "",
        }
