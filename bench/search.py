"""LRP composite search on the digits zoo: does it pay, how fast does TPE find it, what does a trial cost?

Part A, per model and seed (each seed draws new reference/search/test splits):
test-split A_PR and safe rate of the default ε composite, of the composite the
search found (``--trials`` TPE trials on the search split), and of every
baseline criterion; plus the per-trial seconds beside the cost of one relevance
pass and one full curve, measured in the same run.

Part B, on ``--sampler-model`` with the seed-0 splits: TPE against random
sampling, best search-split A_PR found against the number of trials, over
``--sampler-seeds`` sampler seeds; the smallest budget at which TPE is within
0.005 of its own ``--sampler-trials``-trial best. Printed, and plotted to
``--out``/search_samplers.png.

    python bench/search.py                                  # everything (hours on 2 CPU cores)
    python bench/search.py --models digits_vgg --seeds 1 --trials 20 --skip-samplers
    python bench/search.py --skip-comparison --sampler-trials 60 --sampler-seeds 2 --max-eval-samples 200
    python bench/search.py --tiny --seeds 1 --trials 8 --sampler-trials 12 --sampler-seeds 1   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import torch
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import Family, PrunableLayer, find_layers, prepare_model
from pxp.data import load_data, make_splits
from pxp.models import get_architecture
from pxp.pruning.curve import area_under_curve, masked_curve, safe_rate
from pxp.pruning.ranking import rank
from pxp.search import SearchOutcome, run_search
from pxp.spec import CRITERIA, AttributionSpec, DataSpec, PruneSpec, SearchSpec, SplitSpec
from pxp.zoo import TINY_KWARGS, load_zoo_model

BASELINES = [c for c in CRITERIA if c != "lrp"]
WITHIN = 0.005


@dataclass
class Bed:
    name: str
    model: nn.Module
    family: Family
    layers: list[PrunableLayer]
    reference: tuple[torch.Tensor, torch.Tensor]
    search: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]


def make_bed(entry: str, seed: int, args: argparse.Namespace) -> Bed:
    name, _, components = entry.partition(":")
    info = get_architecture(name)
    model, _ = load_zoo_model(name, TINY_KWARGS[name] if args.tiny else None, progress=True)
    family: Family = "vit" if "vit" in name else "cnn"
    prepared = prepare_model(model, family)
    data = load_data(DataSpec(), image_size=info.image_size, channels=1)
    splits = make_splits(
        data.labels,
        SplitSpec(
            reference_samples_per_class=args.reference, max_eval_samples=args.max_eval_samples, seed=seed
        ),
    )

    def tensors(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data.normalized(idx, info.mean, info.std), data.labels[idx]

    return Bed(
        name=entry,
        model=prepared,
        family=family,
        layers=find_layers(prepared, family, components or None),  # type: ignore[arg-type]
        reference=tensors(splits.reference),
        search=tensors(splits.search),
        test=tensors(splits.test),
    )


def measure(
    bed: Bed, spec: AttributionSpec, normalize: bool, prune: PruneSpec, split: str
) -> tuple[float, float, float, float]:
    """(A_PR, safe rate, relevance seconds, curve seconds) of one configuration on one split."""
    start = time.perf_counter()
    scores = compute_scores(ScoringContext(bed.model, bed.family, bed.layers, *bed.reference), spec)
    scoring_s = time.perf_counter() - start
    order = rank(bed.layers, scores, normalize_per_layer=normalize, min_keep=prune.min_keep)
    x, y = bed.test if split == "test" else bed.search
    start = time.perf_counter()
    accuracies = masked_curve(bed.model, order, prune.rates, x, y)
    curve_s = time.perf_counter() - start
    return (
        area_under_curve(accuracies),
        safe_rate(prune.rates, accuracies, prune.max_accuracy_drop),
        scoring_s,
        curve_s,
    )


def search(bed: Bed, prune: PruneSpec, trials: int, sampler: str, seed: int, pruning: bool) -> SearchOutcome:
    return run_search(
        model=bed.model,
        family=bed.family,
        layers=bed.layers,
        reference=bed.reference,
        search_split=bed.search,
        prune=prune,
        spec=SearchSpec(trials=trials, sampler=sampler, seed=seed, median_pruning=pruning),  # type: ignore[arg-type]
    )


def fmt(values: list[float], digits: int = 3) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


Rows = dict[str, dict[str, list[float]]]


def add(rows: Rows, label: str, apr: float, safe: float, search_apr: float | None) -> None:
    row = rows.setdefault(label, {"apr": [], "safe": [], "search": []})
    row["apr"].append(apr)
    row["safe"].append(safe)
    if search_apr is not None:
        row["search"].append(search_apr)


def comparison(args: argparse.Namespace, prune: PruneSpec) -> None:
    print("\n## Optimised vs default LRP vs the best baseline (test split)\n")
    print("| model | method | test A_PR | test safe rate | search A_PR |")
    print("|---|---|---|---|---|")
    costs = []
    for entry in args.models:
        rows: Rows = {}
        trials: list[dict] = []
        reference_s: list[tuple[float, float]] = []
        started = time.monotonic()
        for seed in range(args.seeds):
            bed = make_bed(entry, seed, args)

            default = AttributionSpec(criterion="lrp", batch_size=args.batch_size)
            search_apr, _, relevance_s, curve_s = measure(bed, default, False, prune, "search")
            reference_s.append((relevance_s, curve_s))
            apr, safe, _, _ = measure(bed, default, False, prune, "test")
            add(rows, "LRP default (ε everywhere)", apr, safe, search_apr)

            outcome = search(bed, prune, args.trials, "tpe", seed, args.median_pruning)
            trials += [r for r in outcome.history if r["duration_s"] is not None]
            # Measured again after the search: the machine's load drifts, the median of both is fairer.
            _, _, relevance_s, curve_s = measure(bed, default, False, prune, "search")
            reference_s.append((relevance_s, curve_s))
            apr, safe, _, _ = measure(bed, outcome.best, outcome.best_normalize_per_layer, prune, "test")
            add(rows, f"LRP optimised ({args.trials} TPE trials)", apr, safe, outcome.best_value)
            print(
                f"<!-- {entry} seed {seed}: best {outcome.best.effective_composite().model_dump()} "
                f"{outcome.best.aggregation} norm={outcome.best_normalize_per_layer} -->",
                flush=True,
            )
            for criterion in args.baselines:
                spec = AttributionSpec(criterion=criterion, seed=seed, batch_size=args.batch_size)
                apr, safe, _, _ = measure(bed, spec, False, prune, "test")
                add(rows, criterion, apr, safe, None)
        baselines = {k: v for k, v in rows.items() if k in args.baselines}
        best_baseline = (
            max(baselines, key=lambda k: statistics.mean(baselines[k]["apr"])) if baselines else None
        )
        for label, row in rows.items():
            if label in baselines and label != best_baseline:
                continue
            shown = f"best baseline: {label}" if label == best_baseline else label
            search_col = fmt(row["search"]) if row["search"] else "–"
            print(
                f"| {entry} | {shown} | {fmt(row['apr'])} | {fmt(row['safe'], 2)} | {search_col} |",
                flush=True,
            )
        others = ", ".join(f"{k} {statistics.mean(v['apr']):.3f}" for k, v in baselines.items())
        print(f"<!-- {entry}: baselines' mean test A_PR: {others}; {time.monotonic() - started:.0f}s -->")
        fresh = [r for r in trials if r["state"] == "COMPLETE" and not r["user_attrs"].get("repeated")]
        costs.append(
            (
                entry,
                len(trials),
                statistics.mean(r["duration_s"] for r in trials),
                statistics.mean(r["duration_s"] for r in fresh),
                statistics.mean(r["user_attrs"]["relevance_s"] for r in fresh),
                statistics.mean(r["user_attrs"]["curve_s"] for r in fresh),
                statistics.median(r for r, _ in reference_s),
                statistics.median(c for _, c in reference_s),
            )
        )
    print("\n## Cost of a trial (search split, same run; medians of the reference costs)\n")
    print(
        "A trial's relevance pass is that of its own composite (γ, α-β and z+ cost more than ε); "
        "overhead = trial − its relevance pass − its curve (sampling, ranking, storage).\n"
    )
    print(
        "| model | trials | mean trial s | mean non-repeated trial s | in-trial relevance s | in-trial curve s "
        "| overhead s | one ε relevance pass s | one full curve s | non-repeated trial / (ε pass + curve) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for entry, n, trial, fresh, in_rel, in_curve, relevance, curve in costs:
        print(
            f"| {entry} | {n} | {trial:.2f} | {fresh:.2f} | {in_rel:.2f} | {in_curve:.2f} "
            f"| {fresh - in_rel - in_curve:.3f} | {relevance:.2f} | {curve:.2f} | {fresh / (relevance + curve):.2f} |"
        )


def best_so_far(outcome: SearchOutcome, trials: int) -> list[float]:
    best, curve = float("-inf"), []
    values = {r["number"]: r["value"] for r in outcome.history if r["state"] == "COMPLETE"}
    for n in range(trials):
        best = max(best, values.get(n, float("-inf")))
        curve.append(best)
    return curve


def budget_within(curve: list[float], tolerance: float = WITHIN) -> int:
    return next(i + 1 for i, v in enumerate(curve) if v >= curve[-1] - tolerance)


def samplers(args: argparse.Namespace, prune: PruneSpec) -> None:
    bed = make_bed(args.sampler_model, 0, args)
    n = args.sampler_trials
    curves: dict[str, list[list[float]]] = {"tpe": [], "random": []}
    for seed in range(args.sampler_seeds):
        for sampler in curves:
            started = time.monotonic()
            outcome = search(bed, prune, n, sampler, 100 + seed, False)
            curves[sampler].append(best_so_far(outcome, n))
            print(
                f"<!-- {sampler} seed {100 + seed}: best {outcome.best_value:.4f} "
                f"(default {outcome.default_value:.4f}) in {time.monotonic() - started:.0f}s -->",
                flush=True,
            )
    marks = [m for m in (1, 5, 10, 20, 30, 50, 100) if m <= n]
    print(
        f"\n## TPE vs random sampling ({args.sampler_model}, search-split A_PR, {args.sampler_seeds} seeds)\n"
    )
    print(
        "| sampler | "
        + " | ".join(f"best @{m}" for m in marks)
        + f" | trials to within {WITHIN} of own @{n} best |"
    )
    print("|---|" + "---|" * len(marks) + "---|")
    for sampler, runs in curves.items():
        cells = [fmt([run[m - 1] for run in runs], 4) for m in marks]
        budgets = [budget_within(run) for run in runs]
        print(f"| {sampler} | " + " | ".join(cells) + f" | {budgets} (max {max(budgets)}) |")
    plot(curves, n, args)


def plot(curves: dict[str, list[list[float]]], n: int, args: argparse.Namespace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(1, n + 1))
    for sampler, runs in curves.items():
        mean = [statistics.mean(run[i] for run in runs) for i in range(n)]
        ax.plot(xs, mean, label=f"{sampler} (mean of {len(runs)})")
        ax.fill_between(
            xs,
            [min(r[i] for r in runs) for i in range(n)],
            [max(r[i] for r in runs) for i in range(n)],
            alpha=0.2,
        )
    ax.set_xlabel("trials")
    ax.set_ylabel("best A_PR found (search split)")
    ax.set_title(f"TPE vs random: {args.sampler_model}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "search_samplers.png", dpi=120, bbox_inches="tight")
    print(f"\nplot: {out / 'search_samplers.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["digits_vgg", "digits_resnet18", "digits_vit"],
        help="name[:components]",
    )
    parser.add_argument("--seeds", type=int, default=3, help="split seeds of part A")
    parser.add_argument("--trials", type=int, default=30, help="search budget of part A")
    parser.add_argument("--median-pruning", action="store_true", help="prune trials in part A")
    parser.add_argument("--baselines", nargs="*", default=BASELINES, choices=BASELINES)
    parser.add_argument("--sampler-model", default="digits_vgg")
    parser.add_argument("--sampler-trials", type=int, default=100)
    parser.add_argument("--sampler-seeds", type=int, default=3)
    parser.add_argument("--skip-comparison", action="store_true")
    parser.add_argument("--skip-samplers", action="store_true")
    parser.add_argument("--reference", type=int, default=10, help="reference samples per class")
    parser.add_argument(
        "--max-eval-samples", type=int, default=None, help="cap on the search and test splits"
    )
    parser.add_argument("--rate-step", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--tiny", action="store_true", help="the zoo's tiny configurations (smoke runs)")
    parser.add_argument("--out", default="out/bench_search")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    steps = round(1 / args.rate_step)
    prune = PruneSpec(rates=[round(i * args.rate_step, 4) for i in range(steps)])
    print(f"<!-- {' '.join(sys.argv)} | {len(prune.rates)} rates | threads {args.threads} -->")
    started = time.monotonic()
    if not args.skip_comparison:
        comparison(args, prune)
    if not args.skip_samplers:
        samplers(args, prune)
    print(f"\n<!-- total {time.monotonic() - started:.0f}s -->")


if __name__ == "__main__":
    main()
