"""How many imperfect LLM-style diffs plain ``git apply`` accepts vs ``diff_repair`` + ``git apply``.

Corpus: ``tests/diff_corpus/cases/<NN_name>/patch.diff`` against ``tests/diff_corpus/base/``; each case holds
``expected/<file>`` (the intended result) or ``EXPECT_FAIL`` (repair must refuse it).

    python ops/bench_patch_recovery.py [--corpus DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ideaforge.patch.apply import PatchError, apply_diff  # noqa: E402
from ideaforge.patch.repair import apply_with_repair  # noqa: E402


def _matches(tree: Path, expected: Path) -> bool:
    return all(
        (tree / f.relative_to(expected)).is_file()
        and (tree / f.relative_to(expected)).read_bytes() == f.read_bytes()
        for f in expected.rglob("*")
        if f.is_file()
    )


def run_case(case: Path, base: Path) -> dict:
    diff = (case / "patch.diff").read_bytes().decode()
    expect_fail = (case / "EXPECT_FAIL").exists()
    row: dict = {"case": case.name, "expect_fail": expect_fail}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("plain", "repair"):
            tree = Path(tmp) / mode
            shutil.copytree(base, tree)
            try:
                if mode == "plain":
                    apply_diff(diff, tree)
                else:
                    apply_with_repair(diff, tree)
                row[f"{mode}_applies"] = True
                row[f"{mode}_correct"] = (not expect_fail) and _matches(tree, case / "expected")
            except PatchError as e:
                row[f"{mode}_applies"] = False
                row[f"{mode}_correct"] = expect_fail
                row[f"{mode}_error"] = str(e)[:160]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "tests" / "diff_corpus")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    cases = sorted(p for p in (args.corpus / "cases").iterdir() if (p / "patch.diff").is_file())
    rows = [run_case(c, args.corpus / "base") for c in cases]
    good = [r for r in rows if not r["expect_fail"]]
    bad = [r for r in rows if r["expect_fail"]]
    summary = {
        "cases": len(rows),
        "repairable_cases": len(good),
        "plain_applies": sum(r["plain_applies"] for r in good),
        "plain_correct": sum(r["plain_correct"] for r in good),
        "repair_applies": sum(r["repair_applies"] for r in good),
        "repair_correct": sum(r["repair_correct"] for r in good),
        "unrecoverable_cases": len(bad),
        "unrecoverable_refused_by_repair": sum(not r["repair_applies"] for r in bad),
    }
    if args.json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2))
        return 0
    print(f"{'case':38} {'plain':>12} {'repair':>12}")
    for r in rows:
        cell = {(True, True): "ok", (True, False): "WRONG", (False, True): "refused", (False, False): "fails"}
        p = cell[(r["plain_applies"], r["plain_correct"])]
        q = cell[(r["repair_applies"], r["repair_correct"])]
        print(f"{r['case']:38} {p:>12} {q:>12}")
    print()
    n = summary["repairable_cases"]
    print(
        f"plain git apply:      applies {summary['plain_applies']}/{n}, correct result {summary['plain_correct']}/{n}"
    )
    print(
        f"repair + git apply:   applies {summary['repair_applies']}/{n}, correct result {summary['repair_correct']}/{n}"
    )
    print(f"unrecoverable diffs refused by repair: {summary['unrecoverable_refused_by_repair']}/{len(bad)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
