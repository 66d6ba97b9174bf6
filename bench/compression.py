"""Structural compression: original vs compressed model, measured on this machine's CPU.

For each digits zoo model at its safe rate (LRP scores on 10 reference samples
per class; the rate is chosen on the search split, accuracy reported on the
test split) and for ImageNet-scale models with random weights at fixed rates
(a seeded random ranking): parameters, file size, MACs, median CPU latency at
batch 1 and 32 (original and compressed runs interleaved, so machine load hits
both alike; ``--stat min`` on a loaded machine), measured speed-up, FLOPs-ideal speed-up and their ratio. The
compressed model is the exported artifact, reloaded with ``load_compressed``.

    .venv/bin/python bench/compression.py                              # zoo + vgg16/resnet50/vit_b_16
    .venv/bin/python bench/compression.py --imagenet none --repeats 5   # zoo only
    .venv/bin/python bench/compression.py --zoo none --imagenet resnet50 --image-size 160
    .venv/bin/python bench/compression.py --zoo none --imagenet resnet50 --rates 0.5 --coupled

Zoo models are trained (minutes, CPU) and cached on first use.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.data import load_digits_data, make_splits
from pxp.models import build_model, get_architecture
from pxp.models.compressed import load_compressed
from pxp.pruning.cost import count_cost
from pxp.pruning.coupling import component_graph, rank_with_cost
from pxp.pruning.curve import accuracy, safe_rate
from pxp.pruning.export import export_compressed
from pxp.pruning.fast_curve import fast_curve
from pxp.pruning.ranking import rank
from pxp.pruning.removal import removal_planner, remove_pruned
from pxp.spec import DEFAULT_RATES, AttributionSpec, ModelSpec, SplitSpec
from pxp.zoo import TINY_KWARGS


@dataclass
class Row:
    model: str
    rate: float
    params: tuple[int, int]
    file_bytes: tuple[int, int]
    macs: tuple[int, int]
    latency: dict[int, tuple[float, float]]
    accuracy: tuple[float, float] | None = None
    removed: int = 0
    zeroed: int = 0


@torch.inference_mode()
def latencies(
    original: nn.Module, compressed: nn.Module, x: torch.Tensor, repeats: int, min_seconds: float, stat: str
) -> tuple[float, float]:
    """Seconds per forward of each model (median or minimum of runs interleaved after one warm-up each).

    Fast models run more than ``repeats`` times, until each has run for about ``min_seconds``.
    On a loaded machine run times are bimodal (a run either keeps its core or is
    preempted for a scheduler tick), which can make the median jump; the minimum
    is the robust choice there.
    """
    start = time.perf_counter()
    original(x)
    compressed(x)
    estimate = max(time.perf_counter() - start, 1e-6)
    repeats = max(repeats, min(500, int(2 * min_seconds / estimate)))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for model, out in ((original, times[0]), (compressed, times[1])):
            start = time.perf_counter()
            model(x)
            out.append(time.perf_counter() - start)
    pick = statistics.median if stat == "median" else min
    return pick(times[0]), pick(times[1])


def file_size(model: nn.Module, directory: Path) -> int:
    from safetensors.torch import save_file

    path = directory / "original.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


def measure(
    name: str,
    model: nn.Module,
    prepared: nn.Module,
    layers,
    keep,
    x_verify: torch.Tensor,
    architecture: str,
    kwargs: dict,
    family,
    rate: float,
    args,
    planner=None,
) -> tuple[Row, nn.Module]:
    result = remove_pruned(prepared, family, layers, keep, x_verify, planner=planner)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_compressed(
            Path(tmp) / "compressed",
            result,
            x_verify,
            architecture=architecture,
            family=family,
            kwargs=kwargs,
            class_names=[str(i) for i in range(10)],
            rate=rate,
        )
        compressed = load_compressed(Path(tmp) / "compressed").eval().requires_grad_(False)
        sizes = (file_size(model, Path(tmp)), paths["weights"].stat().st_size)
    shape = tuple(x_verify.shape[1:])
    before, after = count_cost(model, shape), count_cost(compressed, shape)
    latency = {}
    for batch in args.batch_sizes:
        x = torch.randn(batch, *shape)
        latency[batch] = latencies(model, compressed, x, args.repeats, args.min_seconds, args.stat)
    row = Row(
        name,
        rate,
        (before.params, after.params),
        sizes,
        (before.macs, after.macs),
        latency,
        removed=result.removed_components,
        zeroed=result.zeroed_components,
    )
    return row, compressed


def zoo_rows(args) -> list[Row]:
    rows = []
    for name in args.zoo:
        kwargs = TINY_KWARGS[name] if args.tiny else {}
        loaded = build_model(ModelSpec(architecture=name, kwargs=kwargs))
        model, info = loaded.model.eval(), loaded.info
        data = load_digits_data("digits", info.image_size, info.input_channels)
        splits = make_splits(data.labels, SplitSpec())
        x_ref = data.normalized(splits.reference, info.mean, info.std)
        x_search = data.normalized(splits.search, info.mean, info.std)
        x_test = data.normalized(splits.test, info.mean, info.std)
        y_ref, y_search, y_test = (
            data.labels[splits.reference],
            data.labels[splits.search],
            data.labels[splits.test],
        )
        family = info.family
        kind = "filters" if family == "cnn" else args.vit_kind
        prepared = prepare_model(model, family)
        layers = find_layers(prepared, family, kind)
        scores = compute_scores(ScoringContext(prepared, family, layers, x_ref, y_ref), AttributionSpec())
        order = rank(layers, scores)
        rates = list(DEFAULT_RATES)
        planner = removal_planner(prepared, family, layers, x_ref[:1])
        curve = fast_curve(prepared, order, rates, x_search, y_search, planner=planner)
        rate = safe_rate(rates, curve, args.max_drop)
        row, compressed = measure(
            f"{name} ({kind})",
            model,
            prepared,
            layers,
            order.keep_masks(rate),
            x_ref[:8],
            name,
            loaded.kwargs,
            family,
            rate,
            args,
            planner,
        )
        row.accuracy = (accuracy(model, x_test, y_test), accuracy(compressed, x_test, y_test))
        rows.append(row)
        print_rows([row], args, header=not rows[:-1])
    return rows


def imagenet_rows(args) -> list[Row]:
    rows = []
    for name in args.imagenet:
        info = get_architecture(name)
        kwargs = info.effective_kwargs({} if info.family == "cnn" else {"image_size": args.image_size})
        model = build_model(ModelSpec(architecture=name, kwargs=kwargs)).model.eval()
        family = info.family
        kind = "filters" if family == "cnn" else args.vit_kind
        prepared = prepare_model(model, family)
        layers = find_layers(prepared, family, kind)
        g = torch.Generator().manual_seed(0)
        random_scores = {layer.name: torch.rand(layer.size, generator=g) for layer in layers}
        x = torch.randn(2, 3, args.image_size, args.image_size, generator=g)
        if args.coupled and family == "cnn":
            # A random *group* ranking: each group's summed score is one uniform draw (random
            # per-component scores would sum to larger values for larger groups).
            graph = component_graph(prepared, family, layers, x[:1])
            for group in graph.groups:
                u = float(torch.rand(1, generator=g))
                for layer_name, i in group:
                    random_scores[layer_name][i] = u / len(group)
            order = rank_with_cost(layers, random_scores, graph, coupled=True, round_to=args.round_to)
        else:
            order = rank(layers, random_scores, round_to=args.round_to)
        planner = removal_planner(prepared, family, layers, x[:1])
        for rate in args.rates:
            row, _ = measure(
                f"{name} ({kind})",
                model,
                prepared,
                layers,
                order.keep_masks(rate),
                x,
                name,
                kwargs,
                family,
                rate,
                args,
                planner,
            )
            rows.append(row)
            print_rows([row], args, header=False)
    return rows


def print_rows(rows: list[Row], args, header: bool = True) -> None:
    if header:
        cols = " ".join(
            f"{'b' + str(b) + ' ms orig/comp':>20} {'speed-up':>8} {'ideal':>6} {'ratio':>6}"
            for b in args.batch_sizes
        )
        print(f"{'model':<26} {'rate':>5} {'params':>21} {'MB':>13} {'GMACs':>15} {'acc (test)':>13} {cols}")
    for r in rows:
        ideal = r.macs[0] / max(r.macs[1], 1)
        parts = []
        for b in args.batch_sizes:
            t0, t1 = r.latency[b]
            speed = t0 / t1
            parts.append(
                f"{1e3 * t0:>9.1f}/{1e3 * t1:<10.1f} {speed:>7.2f}x {ideal:>5.2f}x {speed / ideal:>6.2f}"
            )
        acc = f"{r.accuracy[0]:.3f}->{r.accuracy[1]:.3f}" if r.accuracy else "-"
        removed = 1 - r.params[1] / r.params[0]
        print(
            f"{r.model:<26} {r.rate:>5.2f} {r.params[0]:>9,}->{r.params[1]:<9,} "
            f"{r.file_bytes[0] / 1e6:>6.2f}->{r.file_bytes[1] / 1e6:<6.2f} "
            f"{r.macs[0] / 1e9:>7.3f}->{r.macs[1] / 1e9:<7.3f} {acc:>13} {' '.join(parts)}"
            f"   [{100 * removed:.1f}% params removed; {r.removed} components removed, {r.zeroed} zeroed]",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--zoo", default="digits_vgg,digits_resnet18,digits_vit", help="comma list, or 'none'"
    )
    parser.add_argument("--tiny", action="store_true", help="the zoo's tiny configurations")
    parser.add_argument("--imagenet", default="vgg16,resnet50,vit_b_16", help="comma list, or 'none'")
    parser.add_argument("--rates", default="0.3,0.5", help="rates for the ImageNet-scale models")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many timed runs per model")
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="fast models repeat until about this long"
    )
    parser.add_argument("--stat", default="median", choices=["median", "min"], help="latency statistic")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--vit-kind", default="heads", choices=["heads", "neurons"])
    parser.add_argument(
        "--coupled", action="store_true", help="ImageNet-scale CNNs: rank residual-coupled channels as groups"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--round-to", type=int, default=1, help="PruneSpec.round_to for the ImageNet-scale rankings (1: none)"
    )
    args = parser.parse_args()
    args.zoo = [] if args.zoo == "none" else args.zoo.split(",")
    args.imagenet = [] if args.imagenet == "none" else args.imagenet.split(",")
    args.rates = [float(r) for r in args.rates.split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved runs"
    )
    rows = zoo_rows(args)
    if args.imagenet:
        if not rows:
            print_rows([], args)
        imagenet_rows(args)


if __name__ == "__main__":
    main()
