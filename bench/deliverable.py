"""What the user receives at the 1-point line: MACs, params and measured CPU speed-up per option.

For each digits zoo model (real, trained, cached; see ``pxp.zoo``) and each split
seed, LRP scores (ε composite, 10 reference samples per class) are computed once;
then every method picks its rate **on the search split** (the largest contiguous
rate within ``--max-drop`` of unpruned: grid 0.05, 0.10, … stopped at the first
failing rate, then, where the method refines, a bisection of ``--refine-steps``
masked evaluations between the last passing and the first failing grid point),
removes the pruned components structurally and reports on the **test split**: the
accuracy drop, MACs and parameters removed (measured on the removed model) and the
measured CPU speed-up of the removed model at batch 32 (median of interleaved runs,
``--threads`` threads, both models in the same run).

Methods: the paper's ranking at a grid rate, each option alone (refined rate,
BN re-estimation, mean fold, coupled groups, cost-aware ranking β), the options
combined, and Torch-Pruning's global ``MetaPruner`` with ``GroupTaylorImportance``
and ``LAMPImportance`` (conv channels only, as ours; Taylor gradients from the same
reference images), whose ratio is chosen by the same sweep (grid + bisection) on
the same search split.

    .venv/bin/python bench/deliverable.py --threads 1                              # all, seeds 0,1,2
    .venv/bin/python bench/deliverable.py --models digits_vgg --seeds 0 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.data import load_digits_data, make_splits
from pxp.models import build_model
from pxp.pruning.cost import count_cost, removed_fractions
from pxp.pruning.coupling import component_graph, rank_with_cost
from pxp.pruning.curve import accuracy
from pxp.pruning.hardware import resolve_round_to
from pxp.pruning.latency import measure_latency
from pxp.pruning.ranking import PruneOrder, rank
from pxp.pruning.recovery import Recovery, compress_recovery
from pxp.pruning.removal import remove_pruned
from pxp.spec import AttributionSpec, ModelSpec, SplitSpec

GRID = [round(0.05 * i, 2) for i in range(1, 20)]


@dataclass(frozen=True)
class Method:
    name: str
    recovery: tuple[str, ...] = ()
    coupled: bool = False
    beta: float = 0.0
    refine: bool = False
    #: Channel rounding (``PruneSpec.round_to``); 0 = the device's block (what ``pxp compress`` uses).
    round_to: int = 1


@dataclass
class Outcome:
    rate: float
    test_drop: float
    macs_removed: float
    params_removed: float
    speedup: float
    zeroed: int = 0
    seconds: float = 0.0
    evaluations: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def cnn_methods(beta: float) -> list[Method]:
    all_on = Method("combined", ("bn_reestimate",), coupled=True, beta=beta, refine=True)
    return [
        Method("paper (grid rate)"),
        Method("+ refined rate", refine=True),
        Method("+ bn_reestimate", ("bn_reestimate",)),
        Method("+ mean_fold", ("mean_fold",)),
        Method("+ least_squares", ("least_squares",)),
        Method("+ coupled", coupled=True),
        Method(f"+ cost β={beta:g}", beta=beta),
        all_on,
        Method("combined + mean_fold", ("mean_fold", "bn_reestimate"), coupled=True, beta=beta, refine=True),
        Method(
            "combined + least_squares",
            ("least_squares", "bn_reestimate"),
            coupled=True,
            beta=beta,
            refine=True,
        ),
        Method("uncoupled + least_squares", ("least_squares", "bn_reestimate"), beta=beta, refine=True),
        Method(
            "+ round_to (pxp compress default)",
            tuple(compress_recovery(heads=False)),
            coupled=True,
            beta=beta,
            refine=True,
            round_to=0,
        ),
        Method(
            "+ round_to 8",
            ("least_squares", "bn_reestimate"),
            coupled=True,
            beta=beta,
            refine=True,
            round_to=8,
        ),
    ]


def vit_methods(kind: str) -> list[Method]:
    # BN re-estimation, coupling and β do nothing on a ViT (LayerNorm; heads / neurons cost the same per
    # block), but the default row keeps them so that it is exactly what ``pxp compress`` runs: least squares
    # + BN on neurons, no recovery on heads (``compress_recovery``, as the CLI). Least squares refits out_proj (heads)
    # / fc2 (neurons); mean fold their biases. Rounding applies to neurons only (heads are never rounded).
    default = tuple(compress_recovery(heads=kind == "heads"))
    return [
        Method("paper (grid rate)"),
        Method("+ refined rate", refine=True),
        Method("+ mean_fold", ("mean_fold",)),
        Method("+ least_squares", ("least_squares",)),
        Method("+ round_to (no recovery)", refine=True, round_to=0),
        Method("+ round_to + least_squares", ("least_squares", "bn_reestimate"), refine=True, round_to=0),
        Method("+ round_to (pxp compress default)", default, coupled=True, beta=1.0, refine=True, round_to=0),
    ]


def safe_point(
    evaluate: Callable[[float], float], base: float, max_drop: float, refine_steps: int, total: int
) -> tuple[float, int]:
    """Largest contiguous rate within ``max_drop`` on the grid (stopping at the first failure), then bisected."""
    ok = 0.0
    failed: float | None = None
    evaluations = 0
    for rate in GRID:
        evaluations += 1
        if evaluate(rate) >= base - max_drop - 1e-12:
            ok = rate
        else:
            failed = rate
            break
    if failed is None or refine_steps <= 0:
        return ok, evaluations
    lo, hi = round(ok * total), round(failed * total)
    for _ in range(refine_steps):
        if hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        evaluations += 1
        if evaluate(mid / total) >= base - max_drop - 1e-12:
            lo = mid
        else:
            hi = mid
    return lo / total, evaluations


def speedup(
    original: nn.Module, compressed: nn.Module, shape: tuple[int, ...], args: argparse.Namespace
) -> float:
    points = measure_latency(
        original,
        compressed,
        shape,
        torch.device("cpu"),
        batch_sizes=(32,),
        warmup=2,
        min_repeats=args.repeats,
        max_repeats=max(args.repeats, 50),
        budget_s=args.latency_budget,
    )
    return points[0].min_speedup if args.stat == "min" else points[0].speedup


def run_method(
    method: Method,
    model: nn.Module,
    prepared: nn.Module,
    family: str,
    layers: list,
    scores: dict[str, torch.Tensor],
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
) -> Outcome:
    started = time.perf_counter()
    x_ref, _ = data["reference"]
    x_search, y_search = data["search"]
    x_test, y_test = data["test"]
    round_to = resolve_round_to(method.round_to or "auto", layers, torch.device("cpu"))
    if method.coupled or method.beta:
        graph = component_graph(prepared, family, layers, x_ref[:1])  # type: ignore[arg-type]
        order: PruneOrder = rank_with_cost(
            layers, scores, graph, coupled=method.coupled, cost_exponent=method.beta, round_to=round_to
        )
    else:
        order = rank(layers, scores, round_to=round_to)
    recovery = Recovery(prepared, family, layers, x_ref, list(method.recovery))  # type: ignore[arg-type]

    def evaluate(rate: float) -> float:
        with recovery.applied(order.keep_masks(rate)) as m:
            return accuracy(m, x_search, y_search)

    base = accuracy(prepared, x_search, y_search)
    nominal, evaluations = safe_point(
        evaluate, base, args.max_drop, args.refine_steps if method.refine else 0, order.total
    )
    rate = order.achieved_rate(nominal)
    keep = order.keep_masks(nominal)
    source = recovery.recovered_model(keep) if recovery.enabled else prepared
    removal = remove_pruned(source, family, layers, keep, x_ref[:32])  # type: ignore[arg-type]
    shape = tuple(x_test.shape[1:])
    fractions = removed_fractions(count_cost(model, shape), count_cost(removal.model, shape))
    unpruned = accuracy(model, x_test, y_test)
    if args.per_layer:
        print_layer_latency(method.name, model, removal.model, shape)
    return Outcome(
        rate=rate,
        test_drop=unpruned - accuracy(removal.model, x_test, y_test),
        macs_removed=fractions["flops_removed_fraction"],
        params_removed=fractions["params_removed_fraction"],
        speedup=speedup(model, removal.model, shape, args),
        zeroed=removal.zeroed_components,
        seconds=time.perf_counter() - started,
        evaluations=evaluations,
    )


def conv_latency(model: nn.Module, shape: tuple[int, ...], runs: int = 15) -> dict[str, float]:
    """Fastest time (ms, batch 32) of every Conv2d inside a whole forward pass, by module name."""
    times: dict[str, list[float]] = defaultdict(list)
    names = {module: name for name, module in model.named_modules()}
    started: dict[nn.Module, float] = {}

    def pre(module: nn.Module, _inputs: tuple) -> None:
        started[module] = time.perf_counter()

    def post(module: nn.Module, _inputs: tuple, _output: torch.Tensor) -> None:
        times[names[module]].append(time.perf_counter() - started[module])

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    x = torch.randn((32, *shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            for _ in range(runs):
                model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1e3 * min(ts[2:]) for name, ts in times.items()}


def print_layer_latency(
    title: str, original: nn.Module, compressed: nn.Module, shape: tuple[int, ...]
) -> None:
    """Per conv: widths and fastest batch-32 time before and after, to see where the time stays."""
    before, after = conv_latency(original, shape), conv_latency(compressed, shape)
    print(f"\n{title}: per-conv latency, batch 32, fastest of 13 runs\n")
    print("| conv | in→out before | in→out after | ms before | ms after |")
    print("|---|---|---|---|---|")
    for name in before:
        a, b = original.get_submodule(name), compressed.get_submodule(name)
        assert isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d)
        print(
            f"| {name} | {a.in_channels}→{a.out_channels} | {b.in_channels}→{b.out_channels} "
            f"| {before[name]:.2f} | {after[name]:.2f} |"
        )
    print(f"| total | | | {sum(before.values()):.2f} | {sum(after.values()):.2f} |\n", flush=True)


def _classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def tp_prune(
    model: nn.Module, criterion: str, ratio: float, x_ref: torch.Tensor, y_ref: torch.Tensor
) -> nn.Module:
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    importance = (
        tp.importance.GroupTaylorImportance() if criterion == "taylor" else tp.importance.LAMPImportance()
    )
    with torch.enable_grad():
        for p in pruned.parameters():
            p.requires_grad_(True)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example_inputs=x_ref[:1],
            importance=importance,
            pruning_ratio=ratio,
            global_pruning=True,
            ignored_layers=[_classifier(pruned)],
            root_module_types=[nn.Conv2d],
        )
        if criterion == "taylor":
            pruned.zero_grad()
            nn.functional.cross_entropy(pruned(x_ref), y_ref).backward()
        pruner.step()
    for p in pruned.parameters():
        p.requires_grad_(False)
        p.grad = None
    return pruned.eval()


def run_tp(
    criterion: str,
    model: nn.Module,
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
) -> Outcome:
    started = time.perf_counter()
    x_ref, y_ref = data["reference"]
    x_search, y_search = data["search"]
    x_test, y_test = data["test"]
    base = accuracy(model, x_search, y_search)
    # Ratios are bisected on the same 1/1000 lattice as our component counts would be.
    total = 1000

    def evaluate(ratio: float) -> float:
        return accuracy(tp_prune(model, criterion, ratio, x_ref, y_ref), x_search, y_search)

    ratio, evaluations = safe_point(evaluate, base, args.max_drop, args.refine_steps, total)
    pruned = tp_prune(model, criterion, ratio, x_ref, y_ref)
    shape = tuple(x_test.shape[1:])
    fractions = removed_fractions(count_cost(model, shape), count_cost(pruned, shape))
    return Outcome(
        rate=ratio,
        test_drop=accuracy(model, x_test, y_test) - accuracy(pruned, x_test, y_test),
        macs_removed=fractions["flops_removed_fraction"],
        params_removed=fractions["params_removed_fraction"],
        speedup=speedup(model, pruned, shape, args),
        seconds=time.perf_counter() - started,
        evaluations=evaluations,
    )


def load(name: str, seed: int) -> tuple[nn.Module, str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    loaded = build_model(ModelSpec(architecture=name))
    model, info = loaded.model.eval(), loaded.info
    digits = load_digits_data("digits", info.image_size, info.input_channels)
    splits = make_splits(digits.labels, SplitSpec(seed=seed))
    data = {
        split: (digits.normalized(idx, info.mean, info.std), digits.labels[idx])
        for split, idx in (("reference", splits.reference), ("search", splits.search), ("test", splits.test))
    }
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info.family, data


def print_table(title: str, results: dict[str, list[Outcome]]) -> None:
    def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
        mean = statistics.mean(values) * scale
        if len(values) == 1:
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"

    print(f"\n#### {title}\n")
    print(
        "| method | rate | test drop (pt) | MACs removed (%) | params removed (%) | speed-up b32 | zeroed | evals | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, outs in results.items():
        print(
            f"| {name} | {fmt([o.rate for o in outs], 1.0, 3)} | {fmt([o.test_drop for o in outs])} "
            f"| {fmt([o.macs_removed for o in outs])} | {fmt([o.params_removed for o in outs])} "
            f"| {fmt([o.speedup for o in outs], 1.0, 2)}× | {fmt([float(o.zeroed) for o in outs], 1.0, 0)} "
            f"| {fmt([float(o.evaluations) for o in outs], 1.0, 0)} | {fmt([o.seconds for o in outs], 1.0, 0)} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits_vgg,digits_resnet18,digits_vit")
    parser.add_argument("--vit-kinds", default="heads,neurons")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--refine-steps", type=int, default=6)
    parser.add_argument("--beta", type=float, default=1.0, help="cost exponent of the cost-aware methods")
    parser.add_argument("--methods", default="", help="comma list of method names to run (default: all)")
    parser.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning baselines")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many timed runs per model")
    parser.add_argument("--latency-budget", type=float, default=3.0, help="seconds of timing per model pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-layer", action="store_true", help="print every conv's latency before/after")
    parser.add_argument(
        "--stat",
        choices=["median", "min"],
        default="median",
        help="speed-up from median runs (the job's figure) or fastest runs (robust to a loaded machine)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), seeds {seeds}, max drop {args.max_drop}"
    )
    for name in args.models.split(","):
        kinds = ["filters"] if not name.endswith("vit") else args.vit_kinds.split(",")
        for kind in kinds:
            results: dict[str, list[Outcome]] = defaultdict(list)
            for seed in seeds:
                model, family, data = load(name, seed)
                prepared = prepare_model(model, family)  # type: ignore[arg-type]
                layers = find_layers(prepared, family, kind)  # type: ignore[arg-type]
                x_ref, y_ref = data["reference"]
                scores = compute_scores(
                    ScoringContext(prepared, family, layers, x_ref, y_ref),  # type: ignore[arg-type]
                    AttributionSpec(),
                )
                methods = cnn_methods(args.beta) if family == "cnn" else vit_methods(kind)
                for method in methods:
                    if wanted and method.name not in wanted:
                        continue
                    out = run_method(method, model, prepared, family, layers, scores, data, args)
                    results[method.name].append(out)
                    print(
                        f"  [{name} {kind} seed {seed}] {method.name}: rate {out.rate:.3f}, "
                        f"drop {100 * out.test_drop:.1f} pt, MACs -{100 * out.macs_removed:.1f}%, "
                        f"params -{100 * out.params_removed:.1f}%, {out.speedup:.2f}x ({out.seconds:.0f}s)",
                        flush=True,
                    )
                if family == "cnn" and not args.no_tp:
                    for criterion, label in (("taylor", "TP GroupTaylor"), ("lamp", "TP LAMP")):
                        if wanted and label not in wanted:
                            continue
                        out = run_tp(criterion, model, data, args)
                        results[label].append(out)
                        print(
                            f"  [{name} seed {seed}] {label}: ratio {out.rate:.3f}, "
                            f"drop {100 * out.test_drop:.1f} pt, MACs -{100 * out.macs_removed:.1f}%, "
                            f"params -{100 * out.params_removed:.1f}%, {out.speedup:.2f}x ({out.seconds:.0f}s)",
                            flush=True,
                        )
            print_table(f"{name} ({kind}), seeds {seeds}", results)


if __name__ == "__main__":
    main()
