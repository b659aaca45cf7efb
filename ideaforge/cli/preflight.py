"""Checks before a campaign starts, so nothing starts that cannot run: API keys, env and profile, a live worker
on every queue the campaign needs (with enough devices per run), and a working sandbox for a local worker.

Each failed check is a :class:`Finding` with the command or setting that fixes it; `ideaforge start` prints
them and exits 2.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from pydantic import BaseModel
from temporalio.client import Client

from ideaforge import names
from ideaforge.config import Settings
from ideaforge.models import CampaignConfig, EnvSpec, ProviderConfig

SLOTS_RE = re.compile(r"\bslots=(\d+)\b")  # training workers advertise their slots in their identity
POLLER_WAIT_S = 15.0  # a worker started just now needs a moment to poll


class Finding(BaseModel):
    check: str
    problem: str
    fix: str


def key_env(provider: ProviderConfig) -> str | None:
    """The environment variable that must hold this provider's key, or None when it needs none."""
    if provider.api_key_env:
        return provider.api_key_env
    if provider.kind == "offline":
        return None
    from ideaforge.llm.client import DEFAULT_KEY_ENV  # the client's own table (imported only when needed)

    return DEFAULT_KEY_ENV.get(provider.kind)


def _proc_env_names(pid: int) -> set[str] | None:
    """Names (never values) of the variables in a local process's environment; None if unreadable."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return {kv.split(b"=", 1)[0].decode(errors="replace") for kv in raw.split(b"\0") if kv}


def check_keys(cfg: CampaignConfig, local_worker_pid: int | None = None) -> list[Finding]:
    """Every key the ideator and implementer need is set here, and in the local worker's environment."""
    out: list[Finding] = []
    worker_env = _proc_env_names(local_worker_pid) if local_worker_pid else None
    for role, provider in (("ideator", cfg.ideator), ("implementer", cfg.implementer_provider)):
        var = key_env(provider)
        if var is None:
            continue
        if not os.environ.get(var):
            out.append(
                Finding(
                    check="api key",
                    problem=f"the {role} ({provider.kind}) needs {var}, which is not set",
                    fix=f"export {var}=... (or choose another --ideator, e.g. offline)",
                )
            )
        elif worker_env is not None and var not in worker_env:
            out.append(
                Finding(
                    check="api key",
                    problem=f"{var} is set here but the local worker (pid {local_worker_pid}) started without it",
                    fix="ideaforge down && ideaforge up   (the worker takes the environment of `up`)",
                )
            )
    return list({f.problem: f for f in out}.values())  # one finding per variable


def check_env(cfg: CampaignConfig, settings: Settings) -> tuple[EnvSpec | None, list[Finding]]:
    from ideaforge.research_envs.registry import EnvError, available_envs, load_env

    try:
        spec = load_env(cfg.env, settings.env_paths).spec
    except (EnvError, ValueError) as e:
        known = ", ".join(available_envs(settings.env_paths)) or "none"
        return None, [Finding(check="env", problem=str(e).splitlines()[0], fix=f"--env one of: {known}")]
    if cfg.profile not in spec.profiles:
        return spec, [
            Finding(
                check="profile",
                problem=f"env {cfg.env!r} has no profile {cfg.profile!r}",
                fix=f"--profile one of: {', '.join(sorted(spec.profiles))}",
            )
        ]
    if cfg.budget_gpu_hours is not None and spec.resources_for(cfg.profile).device != "gpu":
        return spec, [
            Finding(
                check="budget",
                problem=f"budget_gpu_hours is set, but env {cfg.env!r} (profile {cfg.profile!r}) trains on CPU: "
                "it uses no GPU-hours, so the budget could never stop it",
                fix="remove budget_gpu_hours (CPU time is shown as CPU-slot-hours), or choose a GPU env",
            )
        ]
    return spec, []


async def check_workers(
    client: Client, spec: EnvSpec, profile: str, wait_s: float = POLLER_WAIT_S, checks: bool = True
) -> list[Finding]:
    """A worker polls the orchestrator, cpu, training (and, with ``checks``, preflight) queues, and one
    training worker has enough slots."""
    from ideaforge.cli.campaigns import workers_polling

    res = spec.resources_for(profile)
    train_q = res.task_queue
    queues = [names.ORCHESTRATOR_QUEUE, names.CPU_QUEUE, train_q]
    if checks:
        queues.append(names.PREFLIGHT_QUEUE)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        polling = {q: await workers_polling(client, q) for q in queues}
        missing = [q for q in queues if not polling[q]]
        if not missing or loop.time() >= deadline:
            break
        await asyncio.sleep(0.5)
    out: list[Finding] = []
    for q in missing:
        if q == train_q and res.device == "gpu":
            fix = f"on a machine with {res.count}x {res.gpu_type or 'GPU'}: ideaforge worker --queues {q}"
        elif q == train_q:
            fix = f"ideaforge up (local), or ideaforge worker --queues {q}"
        elif q == names.PREFLIGHT_QUEUE:
            fix = (f"ideaforge up (local), or ideaforge worker --queues {train_q},{q} on a training host "
                   "(or preflight = false in the campaign config)")
        else:
            fix = "ideaforge up (local), or ideaforge worker on a machine that reaches this Temporal"
        out.append(Finding(check="workers", problem=f"no worker polls the task queue {q!r}", fix=fix))
    slots = [int(m.group(1)) for ident in polling.get(train_q, []) if (m := SLOTS_RE.search(ident))]
    if slots and max(slots) < res.count:
        out.append(
            Finding(
                check="devices",
                problem=f"each run of {spec.name}/{profile} needs {res.count} devices; the workers on "
                f"{train_q!r} have at most {max(slots)}",
                fix=f"start a worker with --slots {res.count} or more (and that many GPUs), or use a smaller --profile",
            )
        )
    return out


def check_sandbox(local_worker_serves_training: bool) -> list[Finding]:
    """A local training worker can sandbox runs (bubblewrap, own uid, cgroups), or the operator opted out."""
    if not local_worker_serves_training:
        return []
    from ideaforge.run.sandbox import SandboxUnavailable
    from ideaforge.run.sandbox import check_sandbox as sandbox_works

    try:
        sandbox_works()
    except SandboxUnavailable as e:
        return [
            Finding(
                check="sandbox",
                problem=f"the local worker cannot sandbox runs here: {e}",
                fix="run ./ops/install.sh as root (it installs bubblewrap) and start the stack as root",
            )
        ]
    return []
