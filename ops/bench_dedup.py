"""Precision and recall of dedup on the labelled idea pairs (tests/fixtures/dedup_pairs.py).

A pair labelled "paraphrase" should be flagged as a duplicate; "refinement" and "distinct" pairs should not.
Prints, per backend (embedding model, lexical fallback), the figures at the chosen threshold and a sweep.

    python ops/bench_dedup.py [--backend embedding|lexical|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.llm.dedup import THRESHOLDS, Deduper  # noqa: E402
from tests.fixtures.dedup_pairs import PAIRS  # noqa: E402


def evaluate(d: Deduper, pairs=PAIRS) -> dict[str, float]:
    tp = fp = fn = 0
    wrong: list[str] = []
    for label, a, b in pairs:
        flagged = d.is_duplicate(a, b)
        repeat = label == "paraphrase"
        tp += flagged and repeat
        fp += flagged and not repeat
        fn += (not flagged) and repeat
        if flagged != repeat:
            wrong.append(
                f"{label:10s} flagged={flagged} sim={d.similarity(a, b):.2f}  {a[:50]!r} / {b[:50]!r}"
            )
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn, "wrong": wrong}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="both", choices=["embedding", "lexical", "both"])
    ap.add_argument("--verbose", action="store_true", help="list the misclassified pairs")
    args = ap.parse_args()
    backends = ["embedding", "lexical"] if args.backend == "both" else [args.backend]
    print(
        f"{len(PAIRS)} labelled pairs: "
        + ", ".join(
            f"{k} {sum(1 for lab, _, _ in PAIRS if lab == k)}"
            for k in ("paraphrase", "refinement", "distinct")
        )
    )
    for backend in backends:
        t0 = time.perf_counter()
        d = Deduper(backend)  # type: ignore[arg-type]
        load = time.perf_counter() - t0
        r = evaluate(d)
        print(
            f"\n[{backend}] threshold {THRESHOLDS[backend]:.2f} (load {load:.1f} s): precision {r['precision']:.3f}, "
            f"recall {r['recall']:.3f} (tp {r['tp']}, fp {r['fp']}, fn {r['fn']})"
        )
        if args.verbose:
            print("\n".join("  " + w for w in r["wrong"]))
        for t in (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9):
            s = evaluate(Deduper(backend, threshold=t))  # type: ignore[arg-type]
            print(f"  threshold {t:.2f}: precision {s['precision']:.3f} recall {s['recall']:.3f}")


if __name__ == "__main__":
    main()
