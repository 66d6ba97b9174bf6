"""Where one rate of the fast sweep spends its time: one evaluation of the sliced model, run staged.

For a digits zoo model and one pruning rate, on the 619 evaluation images of
``bench/sweep_speed.py`` (same split, same LRP order), prints

- the evaluation's wall time as the masked model, the sliced model's own forward
  and the fast sweep's staged run (fx graph, residual stack+sum as additions);
- the staged run's time per node kind (the attention module as a whole, the MLP's
  Linear / GELU, LayerNorm, the residual additions, ...), timed node by node;
- the fx interpreter's overhead per node (a one-sample run, staged vs forward);
- the torch profiler's self CPU time per aten op, of the sliced model's forward and of the staged run.

    .venv/bin/python bench/sweep_profile.py --model digits_vit --rate 0 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.profiler import ProfilerActivity, profile

from pxp.attribution import ScoringContext, compute_scores
from pxp.attribution.engine import batches
from pxp.components import find_layers, prepare_model
from pxp.data import load_digits_data
from pxp.models import get_architecture
from pxp.pruning.fast_curve import _fetch_attr, _Stages
from pxp.pruning.masking import masked
from pxp.pruning.ranking import rank
from pxp.pruning.removal import removal_planner
from pxp.pruning.removal.plan import cut_copy
from pxp.spec import AttributionSpec
from pxp.zoo import load_zoo_model


def _best(run: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        target = str(node.target)
        module = modules[target]
        if module.__class__.__name__ == "ExplicitSelfAttention":
            return "attention (q/k/v, QK^T, softmax, AV, out_proj)"
        if isinstance(module, nn.Linear) and target.rpartition(".")[0].endswith("mlp"):
            return "MLP Linear"
        return type(module).__name__
    if node.op == "call_function":
        return str(getattr(node.target, "__name__", node.target))
    return node.op


def _timed_by_kind(
    stages: _Stages, model: nn.Module, x: torch.Tensor, batch_size: int, into: dict[str, float]
) -> None:
    """A staged run of ``model`` (as :meth:`_Stages.run` does it), adding each node's time to its kind."""
    modules = dict(model.named_modules())
    for part in batches(len(x), batch_size):
        env: dict[torch.fx.Node, Any] = {stages.placeholder: x[part]}
        for node in stages.nodes:
            if node.op == "placeholder":
                continue
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "output":
                break
            start = time.perf_counter()
            if node.op == "call_module":
                env[node] = modules[str(node.target)](*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)  # type: ignore[operator]  # call_function targets are callables
            elif node.op == "call_method":
                self_obj, *rest = args
                env[node] = getattr(self_obj, str(node.target))(*rest, **kwargs)
            elif node.op == "get_attr":
                env[node] = _fetch_attr(model, str(node.target))
            into[_kind(node, modules)] += time.perf_counter() - start


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default="digits_vit", choices=["digits_vgg", "digits_resnet18", "digits_vit"]
    )
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _ = load_zoo_model(args.model, {}, progress=True)
    info = get_architecture(args.model)
    data = load_digits_data("digits", info.image_size, info.input_channels)
    x_all = data.normalized(torch.arange(len(data)), info.mean, info.std)
    y_all = data.labels
    g = torch.Generator().manual_seed(0)  # the reference / evaluation split of bench/sweep_speed.py
    ref = torch.cat(
        [
            c[torch.randperm(len(c), generator=g)[:10]]
            for c in (torch.nonzero(y_all == k).flatten() for k in range(10))
        ]
    )
    rest = torch.ones(len(y_all), dtype=torch.bool)
    rest[ref] = False
    x = x_all[rest]
    prepared = prepare_model(model, info.family)
    layers = find_layers(prepared, info.family)
    with torch.enable_grad():
        scores = compute_scores(
            ScoringContext(prepared, info.family, layers, x_all[ref], y_all[ref]), AttributionSpec()
        )
    keep = rank(layers, scores).keep_masks(args.rate)
    planner = removal_planner(prepared, info.family, layers, x[:1])
    sliced = cut_copy(prepared, planner.plan(keep).cuts).eval()
    stages = _Stages(prepared)
    bs = args.batch_size

    def forward(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for p in batches(len(x), bs):
                m(x[p])

        return run

    def staged() -> None:
        for p in batches(len(x), bs):
            stages.run(sliced, 0, x[p], set())

    with masked(prepared, layers, keep):
        t_masked = _best(forward(prepared), args.repeats)
    t_sliced = _best(forward(sliced), args.repeats)
    t_staged = _best(staged, args.repeats)
    print(
        f"\n{args.model} rate {args.rate}: {len(x)} images, batch {bs}, torch threads {torch.get_num_threads()}, "
        f"best of {args.repeats}"
    )
    print(f"kept per layer: {[int(keep[layer.name].sum()) for layer in layers]}")
    print(
        f"masked forward {t_masked:.3f} s, sliced forward {t_sliced:.3f} s, staged sliced run {t_staged:.3f} s"
    )

    one, n = x[:1], 50

    def one_staged() -> None:
        for _ in range(n):
            stages.run(sliced, 0, one, set())

    def one_forward() -> None:
        for _ in range(n):
            sliced(one)

    t_one_staged = _best(one_staged, args.repeats)
    t_one_forward = _best(one_forward, args.repeats)
    print(
        f"one-image run: staged {t_one_staged / n * 1e3:.2f} ms, forward {t_one_forward / n * 1e3:.2f} ms "
        f"({len(stages.nodes)} nodes: {(t_one_staged - t_one_forward) / n / len(stages.nodes) * 1e6:.1f} µs "
        f"interpreter overhead per node)"
    )

    by_kind: dict[str, float] = collections.defaultdict(float)
    for _ in range(args.repeats):
        _timed_by_kind(stages, sliced, x, bs, by_kind)
    total = sum(by_kind.values())
    print("staged run by node kind (mean of repeats):")
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {kind:<50} {seconds / args.repeats:7.3f} s {100 * seconds / total:6.1f} %")

    for label, run in (("sliced model's own forward", forward(sliced)), ("staged sliced run", staged)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"torch profiler, {label}:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
