"""Report plots of RL runs: reward, diversity, length and execution-rate curves by step (matplotlib PNGs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ideaforge.rl.metrics import StepMetrics

PANELS: dict[str, tuple[str, ...]] = {
    "reward": ("mean_reward", "max_reward"),
    "diversity": ("semantic_diversity", "distinct_fraction", "category_entropy"),
    "length": ("reply_length", "reasoning_length"),
    "execution": ("execution_rate",),
}


def plot_runs(runs: Mapping[str, Sequence[StepMetrics]], out_dir: Path) -> list[Path]:
    """One PNG per panel of :data:`PANELS`, each run a line per metric; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for panel, keys in PANELS.items():
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for label, hist in runs.items():
                ax.plot(range(1, len(hist) + 1), [getattr(h, key) for h in hist], label=label)
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"rl_{panel}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files
