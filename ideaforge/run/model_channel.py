"""The channel that joins an env's evaluator to its model server (PROTOCOL.md, step 6).

An env whose evaluator needs editable code (the model's classes) declares a ``serve_command``: that code then
runs only in the model server, a process of its own that answers the evaluator over two pipes and can neither
write the metric nor see the held-out data. Each side finds its ends in ``IDEAFORGE_MODEL_CHANNEL`` as
``"<read fd>,<write fd>"``; the env's own protected code speaks the frames.
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

CHANNEL_VAR = "IDEAFORGE_MODEL_CHANNEL"
SERVER_HIDDEN = ("IDEAFORGE_METRIC_FILE", "IDEAFORGE_EVAL_DATA")  # the evaluator's alone


@dataclass(frozen=True)
class ChannelEnds:
    """Two pipes: ``serve`` and ``evaluator`` each hold (read fd, write fd) of their side."""

    serve: tuple[int, int]
    evaluator: tuple[int, int]

    @staticmethod
    def open() -> ChannelEnds:
        to_serve_r, to_serve_w = os.pipe()
        to_eval_r, to_eval_w = os.pipe()
        return ChannelEnds(serve=(to_serve_r, to_eval_w), evaluator=(to_eval_r, to_serve_w))

    @staticmethod
    def var(fds: tuple[int, int]) -> dict[str, str]:
        """The environment variable that tells one side its fds."""
        return {CHANNEL_VAR: f"{fds[0]},{fds[1]}"}


def run_local_evaluation(
    eval_argv: list[str],
    serve_argv: list[str] | None,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run an evaluation WITHOUT a sandbox (benchmarks and env tests on trusted code), with its model server
    when the env has one (``env`` without the metric file and the held-out data). The result is the
    evaluator's; the server's stderr is appended to its stderr."""
    if serve_argv is None:
        return subprocess.run(eval_argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    ends = ChannelEnds.open()
    serve_env = {k: v for k, v in env.items() if k not in SERVER_HIDDEN}
    try:
        server = subprocess.Popen(
            serve_argv, cwd=cwd, env=serve_env | ChannelEnds.var(ends.serve), pass_fds=ends.serve,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        _close(ends.serve)
    served: dict[str, str] = {}
    reader = threading.Thread(target=_drain, args=(server, served), daemon=True)
    reader.start()
    try:
        result = subprocess.run(
            eval_argv, cwd=cwd, env=env | ChannelEnds.var(ends.evaluator), pass_fds=ends.evaluator,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    finally:
        _close(ends.evaluator)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        reader.join(timeout=10)
    if served.get("stderr"):
        result.stderr = (result.stderr or "") + "\n[model server]\n" + served["stderr"]
    return result


def _drain(proc: subprocess.Popen[str], into: dict[str, str]) -> None:
    out, err = proc.communicate()
    into["stdout"], into["stderr"] = out or "", err or ""


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

