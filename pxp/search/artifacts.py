"""What a search leaves in the job's output directory: its JSON record and two plots."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pxp.search.runner import SearchOutcome
from pxp.spec import SearchResult

STUDY_JSON = "study.json"
HISTORY_PNG = "search_history.png"
IMPORTANCES_PNG = "search_importances.png"


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def plot_history(outcome: SearchOutcome) -> Figure:
    """Each finished trial's search-split A_PR, the best so far, and the default composite's A_PR."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    done = [row for row in outcome.history if row["state"] == "COMPLETE" and row["value"] is not None]
    pruned = [row for row in outcome.history if row["state"] == "PRUNED" and row["intermediate"]]
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], s=14, label="trial A_PR", zorder=3)
    if pruned:
        last = [list(r["intermediate"].values())[-1] for r in pruned]
        ax.scatter(
            [r["number"] for r in pruned], last, s=14, marker="x", color="grey", label="pruned (estimate)"
        )
    best, xs, ys = float("-inf"), [], []
    for row in sorted(done, key=lambda r: r["number"]):
        best = max(best, row["value"])
        xs.append(row["number"])
        ys.append(best)
    ax.step(xs, ys, where="post", color="C1", label="best so far")
    ax.axhline(outcome.default_value, color="C2", linestyle="--", label="default ε composite")
    ax.set_xlabel("trial")
    ax.set_ylabel("A_PR (search split)")
    ax.set_title(f"LRP composite search ({outcome.sampler}, {outcome.trials_completed} complete trials)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def plot_importances(outcome: SearchOutcome) -> Figure:
    """fANOVA importances of the searched parameters (those every complete trial has)."""
    fig = Figure(figsize=(6, 0.4 * max(len(outcome.importances), 3) + 1))
    ax = fig.add_subplot()
    if outcome.importances:
        items = sorted(outcome.importances.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_xlabel("importance (fANOVA, normalised)")
    else:
        ax.text(0.5, 0.5, "not enough complete trials with varied parameters", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("Parameter importances")
    return fig


def write_search_artifacts(outcome: SearchOutcome, out_dir: str | Path) -> dict[str, str]:
    """Write ``study.json``, ``search_history.png`` and ``search_importances.png``; name → file name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(outcome.to_dict(), indent=2, sort_keys=True, default=str)
    _atomic_write(out / STUDY_JSON, lambda tmp: Path(tmp).write_text(text))
    _save(plot_history(outcome), out / HISTORY_PNG)
    _save(plot_importances(outcome), out / IMPORTANCES_PNG)
    return {"study": STUDY_JSON, "search_history": HISTORY_PNG, "search_importances": IMPORTANCES_PNG}


def search_result(outcome: SearchOutcome, *, test_apr_best: float, test_apr_default: float) -> SearchResult:
    """The job-result record, once the caller has measured both configurations on the test split."""
    return SearchResult(
        best_composite=outcome.best.effective_composite(),
        best_aggregation=outcome.best.aggregation,
        best_normalize_per_layer=outcome.best_normalize_per_layer,
        search_apr_best=outcome.best_value,
        search_apr_default=outcome.default_value,
        test_apr_best=test_apr_best,
        test_apr_default=test_apr_default,
        trials_completed=outcome.trials_completed,
        study_name=outcome.study_name,
        storage=outcome.storage,
    )
