"""Where a removed CNN's CPU time goes: per conv kind (1×1, dense k×k, grouped, depthwise), before and after.

Random weights (seed 0); the ``weight`` criterion (filter norms) ranked as coupled
groups removes ``--rate`` of the filters; forward time per conv kind is summed with
forward hooks over ``--repeats`` batches of ``--batch`` × ``--size``², one thread.

    .venv/bin/python bench/conv_time.py --model regnet_x_400mf
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from pxp.components import find_layers, prepare_model
from pxp.models import get_architecture
from pxp.pruning.coupling import component_graph, rank_with_cost
from pxp.pruning.removal import remove_pruned


def _kind(conv: nn.Conv2d) -> str:
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        return "depthwise"
    if conv.groups > 1:
        return "grouped"
    return "1x1" if conv.kernel_size == (1, 1) else "dense"


def profile(model: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, dict[str, float]]:
    """Mean forward time of ``model`` on ``x`` and, per conv kind, the mean time spent in those convs."""
    spent: dict[str, float] = defaultdict(float)
    started: dict[int, float] = {}

    def before(module: nn.Module, _inputs: tuple) -> None:
        started[id(module)] = time.perf_counter()

    def after(module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> None:
        assert isinstance(module, nn.Conv2d)
        spent[_kind(module)] += time.perf_counter() - started[id(module)]

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_pre_hook(before) for m in convs]
    handles += [m.register_forward_hook(after) for m in convs]
    try:
        with torch.no_grad():
            model(x)
            spent.clear()
            start = time.perf_counter()
            for _ in range(repeats):
                model(x)
            total = (time.perf_counter() - start) / repeats
    finally:
        for h in handles:
            h.remove()
    return total, {k: v / repeats for k, v in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="regnet_x_400mf")
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    prepared = prepare_model(get_architecture(args.model).builder(num_classes=10), "cnn")
    layers = find_layers(prepared, "cnn")
    example = torch.randn(2, 3, 32, 32)
    graph = component_graph(prepared, "cnn", layers, example[:1])
    scores = {
        layer.name: prepared.get_submodule(layer.producer).weight.flatten(1).norm(dim=1) for layer in layers
    }
    keep = rank_with_cost(layers, scores, graph, coupled=True).keep_masks(args.rate)
    removed = remove_pruned(prepared, "cnn", layers, keep, example).model
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = [
        ("unpruned", *profile(prepared, x, args.repeats)),
        ("removed", *profile(removed, x, args.repeats)),
    ]
    kinds = sorted({k for _, _, per in rows for k in per})
    print(f"| {args.model} | total ms | " + " | ".join(f"{k} ms" for k in kinds) + " |")
    print("|---" * (len(kinds) + 2) + "|")
    for label, total, per in rows:
        print(
            f"| {label} | {total * 1e3:.1f} | "
            + " | ".join(f"{per.get(k, 0.0) * 1e3:.1f}" for k in kinds)
            + " |"
        )
    narrow = [
        (name, m.in_channels // m.groups, m.out_channels // m.groups)
        for name, m in removed.named_modules()
        if isinstance(m, nn.Conv2d) and _kind(m) == "grouped"
    ]
    print(
        f"\nbatch {args.batch}, {args.size}², 1 thread, mean of {args.repeats}; removed grouped convs' "
        f"(in, out) channels per group: {sorted({(i, o) for _, i, o in narrow})}"
    )


if __name__ == "__main__":
    main()
