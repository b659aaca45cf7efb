"""End-to-end execution rate: a real campaign whose implementer replays realistic LLM answers.

Starts a Temporal dev server and an MLflow server on free loopback ports (the same way the test fixtures do),
runs a campaign on the ``toy_quad`` test env (training takes under a second, so the figure is about the
implement -> revise -> package -> run path, not about training), with the loopback LLM server
(``tests/fakes/llm_server.py``, Anthropic protocol) as ideator and implementer.

Each idea's implementer answers are drawn up front (3 draws, one per allowed attempt) from a mix measured on the
issue's held-out set of 47 LLM answers: 26 clean (55%), 14 defective but recoverable (30%), 7 that no careful
human would apply (15%). Every answer is written against the file the model is shown (the parent's code for an
exploit idea) and carries its intended result. Per idea:

- recoverable: at least one of its 3 answers is applicable;
- executed: the idea trained (its change applied within the revisions);
- wrong: the trained code differs from the intended result of the answer that was accepted (or an
  unrecoverable answer was accepted).

    python ops/bench_execution_rate.py [--epochs 4] [--ideas 10] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIX = {"clean": 26 / 47, "defective": 14 / 47, "unrecoverable": 7 / 47}

# --------------------------------------------------------------------------- realistic answers


def _set(content: str, name: str, value: str) -> str:
    new, n = re.subn(rf"(?m)^{name} = .*$", f"{name} = {value}", content, count=1)
    assert n == 1, name
    return new


def _udiff(old: str, new: str, prefix: bool = True, shift: int = 0) -> str:
    a, b = ("a/train.py", "b/train.py") if prefix else ("train.py", "train.py")
    d = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), a, b, n=3))
    if shift:
        d = re.sub(
            r"(?m)^@@ -(\d+)(,\d+)? \+(\d+)(,\d+)? @@",
            lambda m: f"@@ -{int(m[1]) + shift}{m[2] or ''} +{int(m[3]) + shift}{m[4] or ''} @@",
            d,
        )
    return d


def _line(content: str, name: str) -> str:
    return re.search(rf"(?m)^{name} = .*$", content).group(0)


def answer(kind: str, content: str, rng: random.Random) -> tuple[str, str | None]:
    """(reply text, intended train.py or None) of one answer ``kind`` for the shown ``content``."""
    # values that differ from the shown code (an exploit idea shows its parent's values): never a no-op
    lr = rng.choice([v for v in ("0.02", "0.03", "0.08", "0.1", "0.12") if _line(content, "LR") != f"LR = {v}"])
    mom = rng.choice([v for v in ("0.3", "0.5", "0.7", "0.8") if _line(content, "MOMENTUM") != f"MOMENTUM = {v}"])
    new = _set(content, "LR", lr)
    both = _set(new, "MOMENTUM", mom)
    if kind == "clean_diff":
        return f"Set the learning rate to {lr}.\n\n```diff\n{_udiff(content, new)}```\n", new
    if kind == "clean_sr":
        return (f"train.py\n```python\n<<<<<<< SEARCH\n{_line(content, 'LR')}\n=======\nLR = {lr}\n"
                ">>>>>>> REPLACE\n```\n"), new
    if kind == "clean_two":
        return f"LR {lr} with momentum {mom}:\n```diff\n{_udiff(content, both)}```\nThat's all.", both
    if kind == "wrong_numbers":
        return f"```diff\n{_udiff(content, both, prefix=False, shift=7)}```\n", both
    if kind == "whole_file":
        return f"Here is the full updated `train.py`:\n\n```python\n{new}```\n", new
    if kind == "self_correction":
        bad = _set(content, "LR", "5.0")  # redone on the same line by the correction
        return (f"```diff\n{_udiff(content, bad)}```\n\nWait, 5.0 would diverge. Here is the corrected diff:\n\n"
                f"```diff\n{_udiff(content, new)}```\n"), new
    if kind == "alternatives":
        alt = _set(content, "LR", "0.06" if lr != "0.06" else "0.07")
        return (f"```diff\n{_udiff(content, new)}```\n\nAlternatively, a milder change:\n\n```diff\n"
                f"{_udiff(content, alt)}```\n"), new
    if kind == "elision":
        head = new[: new.index(_line(new, "LR"))] + _line(new, "LR") + "\n"
        return f"```python\n# train.py\n{head}# ... rest of the file unchanged ...\n```\n", new
    if kind == "crlf_chatter":
        return (f"Here you go:\n{_udiff(content, new)}\nThis should converge faster.\n").replace("\n", "\r\n"), new
    if kind == "truncated":
        d = _udiff(content, both)
        return d[: d.index("+LR")], None
    if kind == "midline":
        d = _udiff(content, new)
        return "```diff\n" + d[: d.index("+LR") + 6], None
    if kind == "misremembered":
        return ("```diff\n--- a/train.py\n+++ b/train.py\n@@ -10,3 +10,3 @@\n-learning_rate = 0.05\n"
                f"+learning_rate = {lr}\n```\n"), None
    if kind == "prose":
        return f"You should lower the learning rate to {lr} and keep everything else.", None
    if kind == "ambiguous":
        return "```diff\n--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,3 @@\n \n+WARMUP = 5\n \n```\n", None
    raise ValueError(kind)


KINDS = {
    "clean": ["clean_diff", "clean_sr", "clean_two"],
    "defective": ["wrong_numbers", "whole_file", "self_correction", "alternatives", "elision", "crlf_chatter"],
    "unrecoverable": ["truncated", "midline", "misremembered", "prose", "ambiguous"],
}


class Replayer:
    """``implement_fn`` for the fake server: per idea title, the next of its 3 pre-drawn answers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.served: dict[str, list[tuple[str, str, str | None]]] = {}  # title -> [(kind, class, expected)]
        self.plan: dict[str, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    def _draw(self, title: str) -> list[tuple[str, str]]:
        rng = random.Random(f"{self.seed}:{title}")
        out = []
        for _ in range(3):
            cls = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            out.append((cls, rng.choice(KINDS[cls])))
        return out

    def __call__(self, path: str, content: str, prompt: str) -> str:
        title = re.search(r"(?m)^# Idea: (.*)$", prompt).group(1).strip()
        with self._lock:
            plan = self.plan.setdefault(title, self._draw(title))
            served = self.served.setdefault(title, [])
            cls, kind = plan[min(len(served), 2)]
            text, expected = answer(kind, content, random.Random(f"{self.seed}:{title}:{len(served)}"))
            served.append((kind, cls, expected))
        return text


# --------------------------------------------------------------------------- the campaign


async def _campaign(settings, client, cfg):
    from ideaforge.cli import campaigns
    from tests.harness import running_worker

    async with running_worker(client, settings, slots=2):
        handle, _ = await campaigns.start(client, cfg)
        return await asyncio.wait_for(handle.result(), 3600)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--ideas", type=int, default=10, help="ideas per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from ideaforge.cli import stack
    from ideaforge.cli.procs import free_port
    from ideaforge.config import Settings
    from ideaforge.models import CampaignConfig, ProviderConfig
    from ideaforge.names import SEARCH_ATTRIBUTES
    from ideaforge.patch.apply import patched_tree
    from ideaforge.store.artifacts import open_store
    from tests.fakes.llm_server import FakeLLMServer

    tmp = Path(tempfile.mkdtemp(prefix="ideaforge-execbench-"))
    port = free_port()
    settings = Settings(
        home=tmp / "home",
        temporal_address=f"127.0.0.1:{port}",
        mlflow_uri=f"http://127.0.0.1:{free_port()}",
        env_paths=[REPO / "tests" / "fixtures" / "envs"],
        train_slots=2,
    )
    os.environ.update(stack.settings_env(settings))
    os.environ["IDEAFORGE_BENCH_LLM_KEY"] = "sk-bench"
    replayer = Replayer(args.seed)
    env = asyncio.run(
        WorkflowEnvironment.start_local(
            dev_server_existing_path=stack.temporal_binary(), search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=pydantic_data_converter, ip="127.0.0.1", port=port, ui=False,
            dev_server_log_level="error",
        )
    )
    stack.start_mlflow(settings, timeout_s=180)
    try:
        with FakeLLMServer(implement_fn=replayer) as srv:
            provider = ProviderConfig(kind="anthropic", base_url=srv.base_url("anthropic"),
                                      api_key_env="IDEAFORGE_BENCH_LLM_KEY", model="fake-model")
            cfg = CampaignConfig(name=f"execbench-{args.seed}", env="toy_quad", epochs=args.epochs,
                                 ideas_per_epoch=args.ideas, ideator=provider, max_revisions=2)
            result = asyncio.run(_campaign(settings, env.client, cfg))
        store = open_store(settings)
        baseline = REPO / "tests" / "fixtures" / "envs" / "toy_quad" / "baseline"
        rows = []
        from ideaforge.activities.campaign import load_archive

        for s in load_archive(store, result.archive_ref):  # every executed idea (result.archive is bounded)
            if s.title not in replayer.served:
                continue  # the baseline run (no implementer)
            served = replayer.served[s.title]
            plan = replayer.plan[s.title]
            recoverable = any(cls != "unrecoverable" for cls, _ in plan)
            executed = s.category != "patch_failed" and s.code is not None
            wrong = False
            if executed:
                kind, cls, expected = served[-1]
                work = tmp / "check" / s.idea_id.replace("/", "_")
                diff = store.get_text(s.diff) if s.diff else None
                got = (patched_tree(baseline, diff, work) / "train.py").read_text()
                wrong = expected is None or got != expected
            rows.append({"idea": s.idea_id, "recoverable": recoverable, "executed": executed, "wrong": wrong,
                         "attempts": len(served), "answers": [k for k, _, _ in served], "status": s.status,
                         "category": s.category})
    finally:
        stack.down(settings)
        asyncio.run(env.shutdown())
        shutil.rmtree(tmp, ignore_errors=True)

    rec = [r for r in rows if r["recoverable"]]
    first = [r for r in rows if r["executed"] and r["attempts"] == 1]
    served_kinds = Counter(k for r in rows for k in r["answers"])
    summary = {
        "ideas": len(rows),
        "recoverable_ideas": len(rec),
        "executed_recoverable": sum(r["executed"] for r in rec),
        "execution_rate_recoverable": sum(r["executed"] for r in rec) / max(1, len(rec)),
        "executed_all": sum(r["executed"] for r in rows),
        "executed_first_answer": len(first),
        "wrong_applications": sum(r["wrong"] for r in rows),
        "unrecoverable_ideas_executed": sum(r["executed"] for r in rows if not r["recoverable"]),
        "answers_served": dict(served_kinds),
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return 0
    for r in rows:
        flag = "WRONG" if r["wrong"] else ("ok" if r["executed"] else "not executed")
        print(f"{r['idea']:40} {flag:13} {r['status']:8} {str(r['category']):22} {' -> '.join(r['answers'])}")
    print()
    print(f"ideas: {summary['ideas']}, recoverable: {summary['recoverable_ideas']}")
    print(f"executed (recoverable): {summary['executed_recoverable']}/{summary['recoverable_ideas']} = "
          f"{100 * summary['execution_rate_recoverable']:.1f}%")
    print(f"executed on the first answer: {summary['executed_first_answer']}/{summary['ideas']}")
    print(f"wrong applications: {summary['wrong_applications']}")
    print(f"answers served: {dict(sorted(served_kinds.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
