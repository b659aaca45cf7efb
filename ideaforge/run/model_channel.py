"""The channel that joins an env's evaluator to its model server (PROTOCOL.md, step 6).

An env whose evaluator needs editable code (the model's classes) declares a ``serve_command``: that code then
runs only in the model server, a process of its own that answers the evaluator over two pipes and can neither
write the metric nor see the held-out data. An env may ask for several servers (``serve_instances``), each a
fresh process that sees only what the evaluator sends it. A server finds its ends in ``IDEAFORGE_MODEL_CHANNEL``
as ``"<read fd>,<write fd>"``, the evaluator one such pair per server, separated by ``;``. The env's own protected
code speaks the frames.
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



def channel_var(pairs: list[tuple[int, int]]) -> dict[str, str]:
    """The environment variable that tells a process its (read fd, write fd) pairs."""
    return {CHANNEL_VAR: ";".join(f"{r},{w}" for r, w in pairs)}


def run_local_evaluation(
    eval_argv: list[str],
    serve_argv: list[str] | None,
    cwd: Path,
    env: dict[str, str],
    timeout: float = 600,
    instances: int = 1,
) -> subprocess.CompletedProcess[str]:
    """Run an evaluation WITHOUT a sandbox (benchmarks and env tests on trusted code), with ``instances`` model
    servers when the env has them (``env`` without the metric file and the held-out data). The result is the
    evaluator's; the servers' stderr is appended to its stderr."""
    if serve_argv is None:
        return subprocess.run(eval_argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    serve_env = {k: v for k, v in env.items() if k not in SERVER_HIDDEN}
    channels = [ChannelEnds.open() for _ in range(instances)]
    unclosed = {fd for ends in channels for fd in ends.serve + ends.evaluator}  # each closed exactly once
    servers: list[tuple[subprocess.Popen[str], dict[str, str], threading.Thread]] = []
    try:
        for ends in channels:
            try:
                proc = subprocess.Popen(
                    serve_argv, cwd=cwd, env=serve_env | channel_var([ends.serve]), pass_fds=ends.serve,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
            finally:
                _close(ends.serve, unclosed)
            served: dict[str, str] = {}
            reader = threading.Thread(target=_drain, args=(proc, served), daemon=True)
            reader.start()
            servers.append((proc, served, reader))
        fds = tuple(fd for ends in channels for fd in ends.evaluator)
        try:
            result = subprocess.run(
                eval_argv, cwd=cwd, env=env | channel_var([ends.evaluator for ends in channels]), pass_fds=fds,
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
        finally:
            _close(fds, unclosed)
    finally:
        _close(tuple(unclosed), unclosed)
        for proc, _, reader in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=10)
    for i, (_, served, _) in enumerate(servers):
        if served.get("stderr"):
            result.stderr = (result.stderr or "") + f"\n[model server {i}]\n" + served["stderr"]
    return result


def _drain(proc: subprocess.Popen[str], into: dict[str, str]) -> None:
    out, err = proc.communicate()
    into["stdout"], into["stderr"] = out or "", err or ""


def _close(fds: tuple[int, ...], unclosed: set[int]) -> None:
    """Close those of ``fds`` still in ``unclosed`` (a closed fd's number may already belong to another file)."""
    for fd in fds:
        if fd in unclosed:
            unclosed.discard(fd)
            try:
                os.close(fd)
            except OSError:
                pass

