"""Supervisor of the local stack: owns the Temporal dev server, the MLflow server and the worker, and restarts
whichever dies, with exponential backoff, logging every start, death and restart.

    python -m ideaforge.cli.supervisor [--services temporal,mlflow,worker]

`ideaforge up` starts it detached (pid record ``<home>/run/supervisor.pid``, log ``<home>/logs/supervisor.log``);
`ideaforge down` sends it SIGTERM, and it stops its children (worker first) before it exits. A child already
running from an earlier `up` (its pid record matches a live process) is adopted, not started twice.
Settings come from the ``IDEAFORGE_*`` environment, exactly as for the CLI.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from dataclasses import dataclass

from ideaforge.cli import procs, stack
from ideaforge.config import Settings

log = logging.getLogger("ideaforge.supervisor")

POLL_S = 0.25  # how often children are checked
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0  # a child alive this long resets its backoff


@dataclass
class Child:
    """One supervised service: its restart bookkeeping. The wait before a restart doubles on each quick
    death (up to ``BACKOFF_MAX_S``) and resets once the child has run ``STABLE_AFTER_S``."""

    name: str
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    next_start: float = 0.0  # monotonic time before which it is not (re)started
    started_at: float | None = None
    last_exit: str = ""
    seen: bool = False


class Supervisor:
    """Start each service in order, watch the pid records, restart the dead with backoff."""

    def __init__(self, settings: Settings, services: list[str]) -> None:
        unknown = [s for s in services if s not in stack.SERVICES]
        if unknown:
            raise SystemExit(f"unknown services {unknown}; known: {', '.join(stack.SERVICES)}")
        self.settings = settings
        self.children = [Child(n) for n in stack.SERVICES if n in services and self._managed(n)]
        self.stopping = False

    def _managed(self, name: str) -> bool:
        if name == stack.TEMPORAL:
            return stack.temporal_managed(self.settings)
        if name == stack.MLFLOW:
            return stack.mlflow_managed(self.settings)
        return True

    def _start(self, child: Child) -> None:
        if child.name == stack.WORKER:
            self._clean_work_dirs()
        try:
            stack.launch(self.settings, child.name)
        except stack.StackError as e:
            child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
            child.next_start = time.monotonic() + child.backoff_s
            log.error("cannot start %s: %s; next try in %.0f s", child.name, e, child.backoff_s)
            return
        child.started_at = time.monotonic()
        if child.seen:
            child.restarts += 1
            log.warning("%s restarted (restart #%d)", child.name, child.restarts)
        else:
            log.info("%s started", child.name)
        child.seen = True
        if child.name == stack.TEMPORAL:
            self._after_temporal_start()

    def _clean_work_dirs(self) -> None:
        """Attempt folders of runs killed with their worker (no live process uses them) are removed."""
        try:
            removed = procs.remove_stale_dirs(self.settings.home / "work")
        except OSError as e:
            log.warning("cannot clean stale attempt folders: %s", e)
            return
        for path in removed:
            log.info("removed stale attempt folder %s", path)

    def _after_temporal_start(self) -> None:
        try:
            stack.wait_healthy(self.settings, (stack.TEMPORAL,), timeout_s=60)
            stack.set_retention(self.settings)
        except stack.StackError as e:
            log.error("temporal did not become healthy: %s", e)

    def step(self) -> None:
        """One pass: (re)start what is not running and is due."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping:
                return
            if stack.owned(self.settings, child.name) is not None:
                if not child.seen:  # adopted from an earlier `up`
                    child.seen, child.started_at = True, now
                    log.info("%s already running: adopted", child.name)
                continue
            if child.started_at is not None:  # it was running: it died
                ran = now - child.started_at
                if ran >= STABLE_AFTER_S:
                    child.backoff_s = BACKOFF_START_S
                child.next_start = now + child.backoff_s
                child.backoff_s = min(BACKOFF_MAX_S, child.backoff_s * 2)
                child.started_at = None
                stack.pid_path(self.settings, child.name).unlink(missing_ok=True)
                log.error(
                    "%s died after %.1f s; restarting in %.1f s (log: %s)",
                    child.name,
                    ran,
                    child.next_start - now,
                    stack.log_path(self.settings, child.name),
                )
            if now >= child.next_start:
                self._start(child)

    def stop(self) -> None:
        """Stop the children, worker first, and forget their pid records."""
        self.stopping = True
        for child in reversed(self.children):
            rec = procs.read_pid(stack.pid_path(self.settings, child.name))
            if rec is not None and procs.stop_process(rec, stack.STOP_TIMEOUT_S[child.name]):
                log.info("%s stopped", child.name)
            stack.pid_path(self.settings, child.name).unlink(missing_ok=True)

    def run(self) -> None:
        def on_signal(signum, _frame) -> None:
            log.info("supervisor got %s: stopping", signal.Signals(signum).name)
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("supervisor up: %s", ", ".join(c.name for c in self.children))
        while not self.stopping:
            self.step()
            time.sleep(POLL_S)
        self.stop()
        log.info("supervisor exiting")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ideaforge.cli.supervisor", description=__doc__.splitlines()[0])
    p.add_argument("--services", default=",".join(stack.SERVICES))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    Supervisor(Settings.from_env(), services).run()


if __name__ == "__main__":
    main()
