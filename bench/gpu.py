"""On CUDA: batched relevance collection, the pruning-curve sweep, and a whole search job.

1. Relevance collection, images/s batched against one sample at a time (the
   reference code's loop) on ``--relevance-model`` (random weights), with the
   Spearman ρ between the two score vectors (targets: ≥ 10×, ρ ≥ 0.99).
2. The curve sweep on a digits zoo model: :func:`pxp.pruning.evaluate.evaluate_curve`
   (the product's path) against :func:`pxp.pruning.curve.masked_curve`, median of
   interleaved repeats, asserting identical accuracies.
3. A ``--trials``-trial search job (``pxp.pipeline.run``), old path and new, as in
   ``bench/job.py``.

Without CUDA it prints why and exits 0, so it can sit in any CI.

    .venv/bin/python bench/gpu.py
    .venv/bin/python bench/gpu.py --relevance-model resnet50 --samples 64 --batch-size 32 --trials 30
    .venv/bin/python bench/gpu.py --tiny --trials 6      # smoke run (tiny zoo models)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relevance(args: argparse.Namespace, device: torch.device) -> None:
    from bench.attribution_speed import bench_model

    r = bench_model(args.relevance_model, args.samples, args.batch_size, device, None)
    ok = "yes" if r["ratio"] >= 10 and r["spearman"] >= 0.99 else "NO"
    print(f"\n## Relevance collection (LRP ε, {device.type})\n")
    print("| model | images | per-sample img/s | batched img/s | speed-up | Spearman ρ | targets met |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {r['model']} | {r['samples']} | {r['per_sample_ips']:.1f} | {r['batched_ips']:.1f} "
        f"| {r['ratio']:.1f}× | {r['spearman']:.4f} | {ok} |",
        flush=True,
    )


def sweep(args: argparse.Namespace, device: torch.device) -> None:
    from pxp import pipeline
    from pxp.pruning.curve import masked_curve
    from pxp.pruning.evaluate import CurveInfo, evaluate_curve
    from pxp.spec import AttributionSpec, JobSpec, ModelSpec
    from pxp.stages import StageStore
    from pxp.zoo import TINY_KWARGS

    spec = JobSpec(
        model=ModelSpec(
            architecture=args.sweep_model, kwargs=TINY_KWARGS[args.sweep_model] if args.tiny else {}
        ),
        device=str(device),
    )
    state = pipeline.build_state(spec, pipeline.silent())
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        order = state.order(pipeline.score(state, AttributionSpec(), StageStore(Path(scratch))))
    x, y = state.test
    rates = list(spec.prune.rates)

    def timed(fn: Callable[[], list[float]]) -> tuple[float, list[float]]:
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - start, out

    info = CurveInfo()
    times: dict[str, list[float]] = {"masked": [], "evaluate_curve": []}
    results: dict[str, list[float]] = {}
    planner = state.planner()
    for _ in range(args.repeats):
        t, results["masked"] = timed(lambda: masked_curve(state.prepared, order, rates, x, y))
        times["masked"].append(t)
        t, results["evaluate_curve"] = timed(
            lambda: evaluate_curve(state.prepared, order, rates, x, y, planner=planner, info=info)
        )
        times["evaluate_curve"].append(t)
    assert results["masked"] == results["evaluate_curve"], "the fast path's accuracies differ from masking's"
    masked_s, fast_s = statistics.median(times["masked"]), statistics.median(times["evaluate_curve"])
    print(f"\n## Curve sweep ({args.sweep_model}, {len(x)} test images, {len(rates)} rates, {device.type})\n")
    print("| method | median s | speed-up | identical accuracies | methods used |")
    print("|---|---|---|---|---|")
    print(f"| masked_curve | {masked_s:.3f} | 1.00× | – | masked |")
    print(
        f"| evaluate_curve | {fast_s:.3f} | {masked_s / fast_s:.2f}× | yes | {sorted(set(info.methods))} |",
        flush=True,
    )


def search_job(args: argparse.Namespace, device: torch.device) -> None:
    from bench.job import STAGES, timed_job
    from pxp.spec import AttributionSpec, ExportSpec, JobSpec, ModelSpec, SearchSpec
    from pxp.zoo import TINY_KWARGS

    spec = JobSpec(
        model=ModelSpec(
            architecture=args.sweep_model, kwargs=TINY_KWARGS[args.sweep_model] if args.tiny else {}
        ),
        criteria=[AttributionSpec(criterion="lrp")],
        search=SearchSpec(trials=args.trials, seed=0),
        export=ExportSpec(),
        device=str(device),
    )
    old, old_s, old_total = timed_job(spec, baseline=True)
    new, new_s, new_total = timed_job(spec, baseline=False)
    assert [c.accuracies for c in old.curves if c.label == "lrp"] == [
        c.accuracies for c in new.curves if c.label == "lrp"
    ]
    print(f"\n## {args.trials}-trial search job ({args.sweep_model}, {device.type})\n")
    print("| stage | old s | new s | old / new |")
    print("|---|---|---|---|")
    for stage in STAGES:
        if new_s[stage] > 0:
            print(
                f"| {stage} | {old_s[stage]:.2f} | {new_s[stage]:.2f} | {old_s[stage] / new_s[stage]:.2f}× |"
            )
    print(
        f"| **end to end** | **{old_total:.1f}** | **{new_total:.1f}** | **{old_total / new_total:.2f}×** |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--relevance-model", default="resnet50")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--sweep-model", default="digits_vgg", choices=["digits_vgg", "digits_resnet18", "digits_vit"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--tiny", action="store_true", help="the zoo's tiny configurations (smoke runs)")
    parser.add_argument("--parts", nargs="+", choices=["relevance", "sweep", "search"], default=None)
    parser.add_argument(
        "--device", default="cuda", help="cuda; cpu only to smoke-test this script's code paths"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device available; skipping (nothing measured).")
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test, not a GPU figure)"
    )
    print(f"<!-- {' '.join(sys.argv)} | {name} | torch {torch.__version__} -->")
    parts = args.parts or ["relevance", "sweep", "search"]
    if "relevance" in parts:
        relevance(args, device)
    if "sweep" in parts:
        sweep(args, device)
    if "search" in parts:
        search_job(args, device)


if __name__ == "__main__":
    main()
