"""Time the CPU preflight adds per idea (compile + the env's declared first steps, in the bubblewrap sandbox).

    .venv/bin/python ops/bench_preflight.py [--envs toy_quad,tiny_gpt] [--repeats 5] [--train]

For each env: the first preflight (which also prepares the preflight profile's data, once per machine), then
``--repeats`` preflights of a one-line change (passing) and of a change that crashes at import (caught),
interleaved so machine load hits both alike. Prints median / min / max of the wall time the activity takes
(``wall``) and of the sandboxed commands' wall and CPU time (what is recorded per idea). With ``--train``, one
training run of the same change on the env's default profile, for scale. Needs root (the sandbox's own
requirement).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ideaforge.config import Settings
from ideaforge.models import PreflightRequest, PreflightResult, RunRequest
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import ResearchEnv, load_env
from ideaforge.run.preflight import Preflight
from ideaforge.run.runner import ExperimentRunner
from ideaforge.store.artifacts import LocalStore

ROOT = Path(__file__).resolve().parent.parent
ENV_PATHS = [ROOT / "tests" / "fixtures" / "envs"]


def variant(env: ResearchEnv, tmp: Path, crash: bool) -> Path:
    """The baseline with its first offline knob changed (a one-line change); ``crash`` also imports a module
    that is not installed (the file's first import), so it crashes at import, before any training step."""
    tree = tmp / f"tree-{len(list(tmp.glob('tree-*')))}"
    shutil.copytree(env.baseline, tree, ignore=shutil.ignore_patterns("__pycache__"))
    knob = env.spec.offline.knobs[0]
    path = tree / knob.file
    text = re.sub(knob.pattern, lambda m: m.group(0).replace(m.group(1), str(knob.values[0])), path.read_text(),
                  count=1, flags=re.M)
    if crash:  # a module the code imports but nobody installed, before its first import (after __future__)
        m = re.search(r"^(import |from (?!__future__))", text, flags=re.M)
        at = m.start() if m else 0
        text = text[:at] + "import no_such_module_for_the_bench\n" + text[at:]
    path.write_text(text)
    return tree


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs):7.2f} s   min {xs[0]:7.2f} s   max {xs[-1]:7.2f} s"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default="toy_quad,tiny_gpt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train", action="store_true", help="also time one training run of the change (default profile)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as d:
        tmp = Path(d)
        settings = Settings(home=tmp / "home", env_paths=ENV_PATHS, train_slots=1)
        store = LocalStore(tmp / "store")
        runner = ExperimentRunner(settings, store)
        pre = Preflight(runner)
        for name in args.envs.split(","):
            env = load_env(name, ENV_PATHS)
            pf = env.spec.preflight
            print(f"== {name}: preflight profile {pf.profile if pf else '-'}, env {pf.env if pf else {}}, "
                  f"stop_at_step {pf.stop_at_step if pf else '-'}")
            codes = {k: store.put_bytes(pack_tree(variant(env, tmp, k == "crash")), "code") for k in ("pass", "crash")}

            def check(kind: str, name: str = name, codes: dict = codes) -> tuple[float, PreflightResult]:
                req = PreflightRequest(campaign="bench", idea_id="campaign-bench/e000/i00", env=name, code=codes[kind])
                t = time.perf_counter()
                res = pre.check(req)
                return time.perf_counter() - t, res

            first, res = check("pass")
            print(f"  first preflight (prepares the {pf.profile if pf else ''} data once): {first:.2f} s ({res.status})")
            walls: dict[str, list[float]] = {"pass": [], "crash": []}
            cmd_wall: dict[str, list[float]] = {"pass": [], "crash": []}
            cpu: dict[str, list[float]] = {"pass": [], "crash": []}
            for _ in range(args.repeats):
                for kind in ("pass", "crash"):
                    wall, res = check(kind)
                    want = "passed" if kind == "pass" else "failed"
                    assert res.status == want, (kind, res)
                    walls[kind].append(wall)
                    cmd_wall[kind].append(res.cost.wall_s)
                    cpu[kind].append(res.cost.cpu_s)
            for kind, label in (("pass", "passing change"), ("crash", "crash at import")):
                print(f"  {label:16s} activity wall  {summary(walls[kind])}")
                print(f"  {'':16s} sandboxed wall {summary(cmd_wall[kind])}")
                print(f"  {'':16s} sandboxed CPU  {summary(cpu[kind])}")
            if args.train:
                req = RunRequest(campaign="bench", idea_id="campaign-bench/e000/i99", env=name, code=codes["pass"])
                t = time.perf_counter()
                out = asyncio.run(runner.run(req))
                print(f"  one training run, default profile: {time.perf_counter() - t:.1f} s ({out.status}, "
                      f"train {out.train_s:.1f} s, eval {out.eval_s:.1f} s)")


if __name__ == "__main__":
    main()
