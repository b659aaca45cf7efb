"""A shipped cache of REAL training runs of a CPU research env, keyed by (recipe, seed), for search benchmarks.

Each row of the JSONL file is one real run: the env's baseline with an offline-catalogue recipe applied
(``recipe_files``, the offline implementer's own code path), trained by the env's ``run_command`` and scored by
its ``eval_command`` (the protected evaluator, unmodified) under a fixed profile, on one CPU thread:

    {"recipe": [["knob:LEARNING_RATE", 0.003], ["variant:rope", null]], "seed": 0, "steps": 40,
     "val_loss": 2.61, "error": null, "train_s": 15.2, "torch": "2.13.0", "baseline": "<sha256 of the baseline files>"}

A failed run (crash, NaN, rejected by the evaluator) is a row with ``val_loss`` null and ``error`` set: a search
sees it as a failed idea. The first row of a key wins: a process that ran a key another process wrote first
drops its own result and uses the stored one, so concurrent fillers and a later read-only pass see the same
landscape. Rows of another profile, torch version or baseline are ignored (they are other landscapes).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from ideaforge.llm.offline import Recipe, recipe_files, to_mutations
from ideaforge.research_envs.registry import ResearchEnv, expand_command, files_digest
from ideaforge.run.model_channel import run_local_evaluation

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (recipe as canonical JSON, seed)


class CacheMiss(LookupError):
    """A (recipe, seed) the cache does not hold, asked of a read-only cache."""


def recipe_json(recipe: Recipe) -> str:
    return json.dumps([list(m) for m in recipe])


def torch_version() -> str:
    return metadata.version("torch").split("+")[0]


def baseline_digest(env: ResearchEnv) -> str:
    """Digest of every baseline file a run depends on (editable and protected): another baseline, another landscape."""
    return files_digest(env.baseline, [*env.spec.editable_files, *env.spec.protected_files])


class RunCache:
    """Real runs of ``env`` under ``profile``, read from and appended to ``path``; ``fill`` runs misses."""

    def __init__(
        self, env: ResearchEnv, path: Path, profile: str, fill: bool = False, work: Path | None = None
    ):
        if profile not in env.spec.profiles:
            raise ValueError(f"env {env.spec.name} has no profile {profile!r}: {sorted(env.spec.profiles)}")
        self.env, self.path, self.profile, self.fill = env, Path(path), profile, fill
        self.profile_env = dict(env.spec.profiles[profile])
        self.steps = int(self.profile_env.get("IDEAFORGE_STEPS", 0))
        self.stamp = {"steps": self.steps, "torch": torch_version(), "baseline": baseline_digest(env)}
        self.work = Path(work or tempfile.mkdtemp(prefix="run-cache-"))
        self.rows: dict[Key, dict] = {}
        self.ran = 0
        self.reload()

    def reload(self) -> None:
        """Read every row of this landscape (first row of a key wins); a torn last line is skipped."""
        self.rows = {}
        if not self.path.is_file():
            return
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except ValueError:
                log.warning("%s:%d: unreadable row skipped", self.path, n)
                continue
            if all(row.get(k) == v for k, v in self.stamp.items()):
                self.rows.setdefault((recipe_json(tuple(map(tuple, row["recipe"]))), int(row["seed"])), row)

    def metric(self, recipe: Recipe, seed: int) -> float | None:
        """The run's val_loss (None: the run failed); a miss runs it when filling, else raises CacheMiss."""
        key = (recipe_json(recipe), seed)
        if key not in self.rows:
            if not self.fill:
                raise CacheMiss(f"no cached run of {key[0]} at seed {seed} ({self.path}, {self.steps} steps)")
            self._add(key, self._run(recipe, seed))
        return self.rows[key]["val_loss"]

    def _add(self, key: Key, row: dict) -> None:
        """Append ``row`` unless another process stored the key first (then its row is used)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            if key not in self.rows:
                torn = False
                if self.path.is_file() and self.path.stat().st_size:
                    with open(self.path, "rb") as f:  # only the last byte: reload() has just read the rows
                        f.seek(-1, os.SEEK_END)
                        torn = f.read(1) != b"\n"
                with open(self.path, "a") as f:
                    f.write(("\n" if torn else "") + json.dumps(row) + "\n")  # a torn last line stays alone
                self.rows[key] = row

    def _run(self, recipe: Recipe, seed: int) -> dict:
        """Train and evaluate ``recipe`` at ``seed`` for real; the row to store."""
        spec = self.env.spec
        row: dict = {
            "recipe": [list(m) for m in recipe],
            "seed": seed,
            **self.stamp,
            "val_loss": None,
            "error": None,
        }
        tree = self.work / f"tree-{os.getpid()}"
        out, metric_file = self.work / f"out-{os.getpid()}", self.work / f"metric-{os.getpid()}.json"
        for p in (tree, out):
            shutil.rmtree(p, ignore_errors=True)
        metric_file.unlink(missing_ok=True)
        out.mkdir(parents=True)  # the runner's contract: IDEAFORGE_OUT exists
        shutil.copytree(self.env.baseline, tree)
        for rel, text in recipe_files(to_mutations(recipe), spec.offline, self.env.baseline).items():
            (tree / rel).write_text(text)
        data, held_out = self.work / "data", self.work / "eval-data"
        base = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")},
            **self.profile_env,
            "HOME": str(self.work), "TMPDIR": str(self.work), "IDEAFORGE_SEED": str(seed),
            "IDEAFORGE_DATA": str(data), "IDEAFORGE_OUT": str(out),
            "IDEAFORGE_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "IDEAFORGE_DEVICE": "cpu",
        }  # fmt: skip

        def command(argv: list[str]) -> list[str]:
            return expand_command(argv, sys.executable)

        t0 = time.monotonic()
        try:
            if spec.prepare_command and not (data / ".prepared").is_file():
                env = {**base, "IDEAFORGE_EVAL_DATA": str(held_out)}
                subprocess.run(command(spec.prepare_command), cwd=self.env.baseline, env=env, check=True,
                               capture_output=True, timeout=600)  # fmt: skip
                (data / ".prepared").touch()
            train = subprocess.run(command(spec.run_command), cwd=tree, env=base, capture_output=True, text=True,
                                   timeout=spec.resources.time_limit_s)  # fmt: skip
            row["train_s"] = round(time.monotonic() - t0, 1)
            if train.returncode != 0:
                row["error"] = f"training exit {train.returncode}: {train.stderr.strip()[-300:]}"
                return row
            # the recipe only edits editable files: the tree's evaluator and data loading are the pristine ones
            env = {**base, "IDEAFORGE_EVAL_DATA": str(held_out), "IDEAFORGE_METRIC_FILE": str(metric_file)}
            serve = command(spec.serve_command) if spec.serve_command else None
            ev = run_local_evaluation(command(spec.eval_command), serve, tree, env, timeout=600,
                                      instances=spec.serve_instances)  # fmt: skip
            if ev.returncode != 0 or not metric_file.is_file():
                row["error"] = f"evaluation exit {ev.returncode}: {ev.stderr.strip()[-300:]}"
                return row
            value = float(json.loads(metric_file.read_text())[spec.metric])
            lo, hi = spec.plausible_range or (-math.inf, math.inf)
            if not math.isfinite(value) or not lo <= value <= hi:
                row["error"] = f"implausible {spec.metric} {value}"
                return row
            row["val_loss"] = value
            return row
        except subprocess.TimeoutExpired as e:
            row["error"] = f"timed out: {e.cmd}"
            return row
        finally:
            self.ran += 1
            log.info("ran %s seed %d: %s (%.0f s)", recipe_json(recipe), seed, row["val_loss"] or row["error"],
                     time.monotonic() - t0)  # fmt: skip
