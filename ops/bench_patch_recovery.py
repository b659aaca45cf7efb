"""Right / wrong / refused per category: plain ``git apply``, ``patch --fuzz=3`` and ideaforge's repair.

Two corpora:
- ``tests/diff_corpus`` (``cases/<NN_name>/patch.diff`` against ``base/``; ``expected/<file>`` or ``EXPECT_FAIL``):
  one defect per diff, written together with the first repair code;
- ``tests/answer_corpus`` (``cases/<NN_category_what>/answer.md`` + ``case.json`` against ``base/<env>/``): whole
  LLM replies over the four research envs' real baseline files, written independently of the repair code.

"right" = the tree equals the expected result (or a refuse-case was refused), "wrong" = something was applied
that is not the intended result (or a refuse-case was applied), "refused" = an applicable answer was refused.
The baselines get the reply text as it is (both skip leading prose); ideaforge gets it through
:func:`ideaforge.patch.answer.apply_answer`, the implementer's own path.

    python ops/bench_patch_recovery.py [--corpus answer|diff|both] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ideaforge.patch.answer import apply_answer  # noqa: E402
from ideaforge.patch.apply import PatchError  # noqa: E402

METHODS = ("git apply", "patch --fuzz=3", "ideaforge")


def _tree_matches(tree: Path, base: Path, expected: dict[str, bytes]) -> bool:
    for f in base.rglob("*"):
        if f.is_file():
            rel = f.relative_to(base).as_posix()
            want = expected.get(rel, f.read_bytes())
            got = tree / rel
            if not got.is_file() or got.read_bytes() != want:
                return False
    return all((tree / rel).is_file() for rel in expected)


def _tree_unchanged(tree: Path, base: Path) -> bool:
    return _tree_matches(tree, base, {})


def _run_tool(method: str, text: str, tree: Path) -> bool:
    """Apply with a baseline tool; True when the tool reports success."""
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as f:
        f.write(text if text.endswith("\n") else text + "\n")
        path = f.name
    try:
        if method == "git apply":
            args = ["git", "apply", "--whitespace=nowarn", "-p1", path]
        else:
            args = ["patch", "-p1", "--fuzz=3", "--batch", "--forward", "--no-backup-if-mismatch", "-i", path]
        r = subprocess.run(args, cwd=tree, capture_output=True, text=True, timeout=30)
        return r.returncode == 0
    finally:
        Path(path).unlink(missing_ok=True)


def outcome(method: str, text: str, base: Path, expected: dict[str, bytes] | None, protected: list[str]) -> tuple[str, str]:
    """("right" | "wrong" | "refused", detail) of one method on one reply."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        shutil.copytree(base, tree)
        detail = ""
        if method == "ideaforge":
            try:
                apply_answer(text, tree, protected)
                ok = True
            except PatchError as e:
                ok, detail = False, str(e).splitlines()[0][:150]
        else:
            ok = _run_tool(method, text, tree)
        changed = not _tree_unchanged(tree, base)
        if expected is None:
            return ("wrong" if ok and changed else "right"), detail
        if ok and _tree_matches(tree, base, expected):
            return "right", detail
        if ok or changed:
            return "wrong", detail
        return "refused", detail


def load_answer_corpus(root: Path) -> list[dict]:
    rows = []
    for case in sorted(p for p in (root / "cases").iterdir() if (p / "case.json").is_file()):
        meta = json.loads((case / "case.json").read_text())
        env_toml = tomllib.loads((REPO / "research_envs" / meta["env"] / "env.toml").read_text())
        expected = None
        if meta["expect"] == "apply":
            expected = {f.relative_to(case / "expected").as_posix(): f.read_bytes() for f in (case / "expected").rglob("*") if f.is_file()}
        rows.append(
            {
                "case": case.name,
                "category": meta["category"],
                "text": (case / "answer.md").read_bytes().decode(),
                "base": root / "base" / meta["env"],
                "expected": expected,
                "protected": env_toml.get("protected_files", []),
            }
        )
    return rows


def load_diff_corpus(root: Path) -> list[dict]:
    rows = []
    for case in sorted(p for p in (root / "cases").iterdir() if (p / "patch.diff").is_file()):
        fail = (case / "EXPECT_FAIL").exists()
        expected = None if fail else {
            f.relative_to(case / "expected").as_posix(): f.read_bytes() for f in (case / "expected").rglob("*") if f.is_file()
        }
        rows.append(
            {
                "case": case.name,
                "category": "unrecoverable" if fail else case.name.split("_", 1)[1],
                "text": (case / "patch.diff").read_bytes().decode(),
                "base": root / "base",
                "expected": expected,
                "protected": [],
            }
        )
    return rows


def evaluate(rows: list[dict]) -> dict:
    for r in rows:
        r["results"] = {m: outcome(m, r["text"], r["base"], r["expected"], r["protected"]) for m in METHODS}
    cats: dict[str, dict] = defaultdict(lambda: {m: defaultdict(int) for m in METHODS} | {"n": 0})
    for r in rows:
        c = cats[r["category"]]
        c["n"] += 1
        for m in METHODS:
            c[m][r["results"][m][0]] += 1
    applicable = [r for r in rows if r["expected"] is not None]
    refuse = [r for r in rows if r["expected"] is None]
    totals = {
        m: {
            "applicable_right": sum(r["results"][m][0] == "right" for r in applicable),
            "applicable": len(applicable),
            "refuse_cases_refused": sum(r["results"][m][0] == "right" for r in refuse),
            "refuse_cases": len(refuse),
            "wrong": sum(r["results"][m][0] == "wrong" for r in rows),
        }
        for m in METHODS
    }
    return {"categories": {k: {m: dict(v[m]) for m in METHODS} | {"n": v["n"]} for k, v in cats.items()}, "totals": totals}


def print_table(title: str, rows: list[dict], summary: dict, verbose: bool) -> None:
    print(f"\n== {title}: {len(rows)} replies ==")
    head = f"{'category':28} {'n':>3} " + " ".join(f"{m + ' r/w/x':>20}" for m in METHODS)
    print(head)
    for cat, c in summary["categories"].items():
        cells = " ".join(f"{c[m].get('right', 0):>12}/{c[m].get('wrong', 0)}/{c[m].get('refused', 0)}".rjust(20) for m in METHODS)
        print(f"{cat:28} {c['n']:>3} {cells}")
    print("(r/w/x = right / wrong / refused-though-applicable; for a reply no careful human would apply, right = refused)")
    for m, t in summary["totals"].items():
        print(
            f"{m:16} applicable right {t['applicable_right']}/{t['applicable']}"
            f" ({100 * t['applicable_right'] / max(1, t['applicable']):.0f}%),"
            f" unrecoverable refused {t['refuse_cases_refused']}/{t['refuse_cases']}, wrong {t['wrong']}"
        )
    if verbose:
        for r in rows:
            res, detail = r["results"]["ideaforge"]
            if res != "right" or r["expected"] is None:
                print(f"  {r['case']:50} ideaforge={res:8} {detail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["answer", "diff", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("-v", "--verbose", action="store_true", help="list ideaforge's refusals and failures")
    args = ap.parse_args(argv)
    out = {}
    if args.corpus in ("answer", "both"):
        rows = load_answer_corpus(REPO / "tests" / "answer_corpus")
        out["answer_corpus"] = (rows, evaluate(rows))
    if args.corpus in ("diff", "both"):
        rows = load_diff_corpus(REPO / "tests" / "diff_corpus")
        out["diff_corpus"] = (rows, evaluate(rows))
    if args.json:
        print(json.dumps({k: s for k, (_, s) in out.items()}, indent=1))
        return 0
    for name, (rows, summary) in out.items():
        print_table(name, rows, summary, args.verbose)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
