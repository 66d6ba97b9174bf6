"""Pruning-curve sweep: masked re-evaluation vs pxp.pruning.fast_curve, on a digits zoo model.

Prints wall time per method (median of interleaved repeats, so machine load hits
every method alike; fast_curve's time includes its dependency analysis,
self-check and tracing), the speed-up over masking, whether the 20 accuracies are
identical, and the FLOPs bound of slicing alone (Σ MACs unpruned / Σ MACs of the
per-rate removed models).

    .venv/bin/python bench/sweep_speed.py --model digits_vgg --repeats 3
    .venv/bin/python bench/sweep_speed.py --model digits_resnet18 --tiny
    .venv/bin/python bench/sweep_speed.py --model digits_vit --components neurons

The zoo model is trained (minutes, CPU) and cached on first use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.data import load_digits_data
from pxp.models import get_architecture
from pxp.pruning.cost import count_cost
from pxp.pruning.curve import masked_curve
from pxp.pruning.fast_curve import SweepStats, fast_curve
from pxp.pruning.ranking import rank
from pxp.pruning.removal import removal_planner
from pxp.pruning.removal.plan import cut_copy
from pxp.spec import DEFAULT_RATES, AttributionSpec
from pxp.zoo import TINY_KWARGS, load_zoo_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="digits_vgg", choices=["digits_vgg", "digits_resnet18", "digits_vit"]
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the zoo's tiny configuration (trains in seconds)"
    )
    parser.add_argument(
        "--components",
        choices=["heads", "neurons"],
        help="ViT components to prune (default: the family's default, heads for the digits ViT)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument(
        "--methods", default="masked,slice,fast", help="comma list of masked, slice (no reuse), fast"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    kwargs = TINY_KWARGS[args.model] if args.tiny else {}
    model, _ = load_zoo_model(args.model, kwargs, progress=True)
    info = get_architecture(args.model)
    family = info.family
    data = load_digits_data("digits", info.image_size, info.input_channels)
    x_all = data.normalized(torch.arange(len(data)), info.mean, info.std)
    y_all = data.labels
    g = torch.Generator().manual_seed(0)
    ref = torch.cat(
        [
            c[torch.randperm(len(c), generator=g)[:10]]
            for c in (torch.nonzero(y_all == k).flatten() for k in range(10))
        ]
    )
    rest = torch.ones(len(y_all), dtype=torch.bool)
    rest[ref] = False
    x, y = x_all[rest], y_all[rest]

    prepared = prepare_model(model, family)
    if args.components and family != "vit":
        parser.error("--components applies to the ViT only")
    layers = find_layers(prepared, family, args.components)
    scores = compute_scores(
        ScoringContext(prepared, family, layers, x_all[ref], y_all[ref]), AttributionSpec()
    )
    order = rank(layers, scores)
    rates = list(DEFAULT_RATES)
    planner = removal_planner(prepared, family, layers, x[:1])

    shape = tuple(x.shape[1:])
    full = count_cost(prepared, shape).macs
    sliced = [
        count_cost(cut_copy(prepared, planner.plan(order.keep_masks(r)).cuts), shape).macs for r in rates
    ]
    flops_bound = full * len(rates) / sum(sliced)

    stats: dict[str, SweepStats] = {}

    def fast(name: str, **options) -> Callable[[], list[float]]:
        def run() -> list[float]:
            stats[name] = SweepStats()
            return fast_curve(
                prepared,
                order,
                rates,
                x,
                y,
                batch_size=args.batch_size,
                stats=stats[name],
                **options,
            )

        return run

    methods: dict[str, Callable[[], list[float]]] = {
        "masked": lambda: masked_curve(prepared, order, rates, x, y, batch_size=args.batch_size),
        "slice": fast("slice", reuse=False),
        "fast": fast("fast", reuse=True),
    }
    chosen = [m.strip() for m in args.methods.split(",")]
    times: dict[str, list[float]] = {m: [] for m in chosen}
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name in chosen:
            start = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - start)

    reference = results.get("masked")
    base = statistics.median(times["masked"]) if "masked" in times else None
    print(
        f"\n{args.model}{' (tiny)' if args.tiny else ''} ({layers[0].kind}): {len(x)} evaluation samples, "
        f"{len(rates)} rates, "
        f"{len(layers)} layers, torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats"
    )
    print(f"FLOPs bound of slicing alone: {flops_bound:.2f}x")
    print(
        f"{'method':<12} {'median s':>9} {'runs (s)':<28} {'speed-up':>9} {'identical':>10} {'fallback batches':>17}"
    )
    for name in chosen:
        med = statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        speed = f"{base / med:.2f}x" if base else "-"
        same = "-" if reference is None else ("yes" if results[name] == reference else "NO")
        fb = sum(stats[name].fallback_batches) if name in stats else "-"
        print(f"{name:<12} {med:>9.2f} {runs:<28} {speed:>9} {same:>10} {fb!s:>17}")
    if "fast" in stats:
        print(f"start node per rate (of {stats['fast'].nodes}): {stats['fast'].start_nodes}")
    if reference is not None:
        print("accuracies:", " ".join(f"{a:.3f}" for a in reference))


if __name__ == "__main__":
    main()
