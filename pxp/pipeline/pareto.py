"""A Pareto bundle: several checkpoints along accuracy × measured speed-up from one relevance pass.

For every accuracy drop the user lists, the ranking the job exported is cut at
that drop's own safe rate (grid rates on the search split, contiguous, then the
same bisection as the main export) and exported, removed, recovered and verified
exactly as the main checkpoint, into ``pareto/drop_<points>pt/``. The test split
reports each point; ``pareto.png`` plots the front (test accuracy against the
measured batch-32 speed-up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pxp.pipeline.budget import refined_rate, with_prune
from pxp.pipeline.curves import curve
from pxp.pipeline.export import export_job
from pxp.pipeline.state import JobState
from pxp.pruning.curve import safe_rate
from pxp.pruning.ranking import PruneOrder
from pxp.stages import StageStore

PARETO_DIR = "pareto"
PARETO_PLOT = "pareto.png"


def _folder(drop: float) -> str:
    return f"drop_{100 * drop:g}pt"


def export_pareto(
    state: JobState,
    label: str,
    order: PruneOrder,
    out_dir: Path,
    unpruned: float,
    store: StageStore,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Export one checkpoint per ``export.pareto_drops``; return the points and their artifacts.

    Artifact names are ``pareto_<points>pt_<file>`` (e.g. ``pareto_1pt_weights``),
    paths relative to ``out_dir``, so the service lists and serves them like the
    main checkpoint's.
    """
    points: list[dict[str, Any]] = []
    artifacts: dict[str, str] = {}
    for drop in state.spec.export.pareto_drops:
        at = with_prune(state, {"max_accuracy_drop": drop, "rate": None})
        grid = curve(at, label, order, "search", store)
        grid = grid.model_copy(update={"safe_rate": safe_rate(grid.rates, grid.accuracies, drop)})
        rate = refined_rate(at, order, grid, store).refined_rate
        folder = Path(PARETO_DIR) / _folder(drop)
        keep = order.keep_masks(rate)
        exported = export_job(at, label, rate, keep, out_dir / folder, unpruned)
        summary = exported.summary
        latency = summary.get("latency", {}).get("batches", {})
        speedups = {batch: entry["speedup"] for batch, entry in latency.items()}
        points.append(
            {
                "max_accuracy_drop": drop,
                "rate": rate,
                "achieved_rate": order.achieved_rate(rate),
                "test_accuracy": summary["test_accuracy"],
                "accuracy_drop": summary["accuracy_drop"],
                "macs_removed": summary["flops_removed_fraction"],
                "params_removed": summary["params_removed_fraction"],
                "speedup": speedups,
                "directory": folder.as_posix(),
            }
        )
        tag = _folder(drop).removeprefix("drop_")
        for name, file in exported.artifacts.items():
            artifacts[f"pareto_{tag}_{name}"] = (folder / file).as_posix()
    write_pareto_plot(points, unpruned, out_dir / PARETO_PLOT)
    artifacts["pareto_png"] = PARETO_PLOT
    return points, artifacts


def write_pareto_plot(points: list[dict[str, Any]], unpruned: float, path: Path) -> None:
    """Test accuracy against measured speed-up (batch 32, else MACs-ideal) of every exported point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    measured = all("32" in p["speedup"] for p in points)
    xs = [p["speedup"]["32"] if measured else 1.0 / max(1e-9, 1.0 - p["macs_removed"]) for p in points]
    ys = [p["test_accuracy"] for p in points]
    ax.plot([1.0, *xs], [unpruned, *ys], marker="o")
    for x, y, p in zip(xs, ys, points, strict=True):
        ax.annotate(
            f"≤{100 * p['max_accuracy_drop']:g} pt", (x, y), textcoords="offset points", xytext=(4, 4)
        )
    ax.set_xlabel("measured speed-up, batch 32" if measured else "MACs-ideal speed-up")
    ax.set_ylabel("top-1 accuracy (test split)")
    ax.set_title("exported checkpoints: accuracy vs speed-up")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
