"""Human-facing output of a job: the curves plot and the results table."""

from __future__ import annotations

from pathlib import Path

from pxp.spec import JobResult


def write_plot(result: JobResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c in result.curves:
        if c.split != "test":
            continue
        ax.plot(c.rates, c.accuracies, marker="o", markersize=3, label=f"{c.label} (A_PR {c.apr:.3f})")
    ax.axvline(result.chosen_rate, color="grey", linestyle=":", linewidth=1, label="chosen rate")
    ax.set_xlabel(f"pruning rate ({result.curves[0].components})")
    ax.set_ylabel("top-1 accuracy (test split)")
    ax.set_title(f"{result.architecture}: accuracy vs pruning rate, no retraining")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def results_table(result: JobResult) -> str:
    rows = [
        f"{'criterion':<22} {'unpruned':>9} {'A_PR':>7} {'safe rate':>10}",
        "-" * 51,
    ]
    for c in result.curves:
        if c.split != "test":
            continue
        rows.append(f"{c.label:<22} {c.unpruned_accuracy:>9.4f} {c.apr:>7.4f} {c.safe_rate:>10.2f}")
    return "\n".join(rows)
