"""The ``pxp`` command line.

``pxp compress`` runs a whole job locally with no server. The service commands
(``serve``, ``submit``, ``status``, ``download``, ``keys``) talk to the gateway;
they import nothing heavy until they run, so ``pxp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pxp.errors import PxpError, UserError
from pxp.spec import CRITERIA, DEFAULT_RATES


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _floats_arg(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {exc}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _add_compress(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="run a compression job locally (no server)")
    p.add_argument("--model", required=True, help="architecture name, e.g. digits_vgg, resnet50, vit_b_16")
    p.add_argument("--model-kwargs", type=_json_arg, default={}, help="constructor kwargs as JSON")
    p.add_argument(
        "--weights", help="checkpoint (.safetensors or .pt state dict); zoo models default to the zoo"
    )
    p.add_argument(
        "--data", default="digits", help="'digits', an ImageFolder dir, a .tar/.zip of one, or a tensor file"
    )
    p.add_argument("--image-size", type=int, help="resize images to this size (default: the architecture's)")
    p.add_argument(
        "--mean",
        type=_floats_arg,
        help="per-channel normalisation mean, comma-separated, e.g. 0.5,0.5,0.5 (default: the architecture's)",
    )
    p.add_argument("--std", type=_floats_arg, help="per-channel normalisation std, comma-separated")
    p.add_argument(
        "--allow-low-accuracy",
        action="store_true",
        help="run even if the unpruned model is near chance on the data (no rate is then called safe)",
    )
    p.add_argument(
        "--min-unpruned-accuracy",
        type=float,
        help="also refuse when the unpruned test accuracy is below this (0-1)",
    )
    p.add_argument(
        "--criterion",
        action="append",
        choices=[*CRITERIA, "all"],
        help="criterion to score with (repeatable; 'all' = every criterion; the first one is exported)",
    )
    p.add_argument("--components", choices=["filters", "heads", "neurons", "fc2"])
    p.add_argument("--samples-per-class", type=int, default=10, help="reference samples per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rates", help="comma-separated pruning rates (default 0,0.05,...,0.95)")
    p.add_argument("--normalize-per-layer", action="store_true")
    p.add_argument("--min-keep", type=int, default=1)
    rate = p.add_mutually_exclusive_group()
    rate.add_argument(
        "--target-drop", type=float, default=0.01, help="export the safe rate for this accuracy drop"
    )
    rate.add_argument("--rate", type=float, help="export at this pruning rate")
    p.add_argument(
        "--recovery",
        help="comma list of train-free recoveries (bn_reestimate, mean_fold, least_squares) or 'none' "
        "(default: least_squares,bn_reestimate; none when pruning ViT attention heads, where least "
        "squares lowered the safe rate, docs/deliverable.md)",
    )
    p.add_argument(
        "--cost-exponent", type=float, default=1.0, help="rank by relevance / cost^β (0: the paper's ranking)"
    )
    p.add_argument(
        "--no-coupled",
        action="store_true",
        help="rank coupled channels (residual streams, depthwise + the conv feeding it, grouped-conv stripes) "
        "separately (most are then zeroed, not removed)",
    )
    p.add_argument(
        "--round-to",
        type=_round_to,
        default="auto",
        help="keep a multiple of this many channels per layer / coupled group ('auto': the device's "
        "block, 16 on AVX-512 CPUs, 8 on CUDA; 1: no rounding)",
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="the paper's method: no recovery, β = 0, no rounding, channels ranked separately (A_PR curves as published)",
    )
    p.add_argument(
        "--objective",
        choices=["apr", "budget"],
        default="apr",
        help="budget: the ranking / recovery option removing the most MACs within --target-drop (runs a search)",
    )
    p.add_argument(
        "--budget-metric",
        choices=["latency", "macs"],
        default="latency",
        help="what --objective budget maximises: the speed-up measured on this device (default) or MACs removed",
    )
    p.add_argument(
        "--pareto",
        type=_floats_arg,
        help="also export one checkpoint per accuracy drop, comma list of fractions (e.g. 0.005,0.01,0.02,0.05), "
        "into OUT/pareto/ with pareto.png",
    )
    p.add_argument("--no-latency", action="store_true", help="do not time original vs compressed at export")
    p.add_argument("--search-trials", type=int, help="tune the LRP composite with this many Optuna trials")
    p.add_argument("--search-timeout", type=float, help="wall-clock budget for the search, seconds")
    p.add_argument("--study-storage", help="Optuna storage URL (default: SQLite file in --out)")
    p.add_argument("--export", action="append", choices=["onnx", "torchscript"], default=[])
    p.add_argument("--no-export", action="store_true", help="skip structural removal and export")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _round_to(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}")
    return number


def _recovery(args: argparse.Namespace) -> list[str]:
    """``--recovery``, or the measured default (:func:`pxp.pruning.recovery.compress_recovery`)."""
    if args.recovery is not None:
        return list(args.recovery.split(","))
    from pxp.models import prunes_heads_by_default
    from pxp.pruning.recovery import compress_recovery

    heads = args.components == "heads"
    if args.components is None:
        try:
            heads = prunes_heads_by_default(args.model)
        except UserError:
            heads = False  # the job reports the unknown architecture itself
    return compress_recovery(heads)


def build_spec(args: argparse.Namespace) -> Any:
    from pxp.spec import (
        AttributionSpec,
        BaselineSpec,
        DataSpec,
        ExportSpec,
        JobSpec,
        ModelSpec,
        PruneSpec,
        SearchSpec,
        SplitSpec,
    )

    names = args.criterion or ["lrp"]
    if "all" in names:
        names = list(CRITERIA)
    names = list(dict.fromkeys(names))
    rates = [float(r) for r in args.rates.split(",")] if args.rates else list(DEFAULT_RATES)
    search = None
    if args.search_trials is not None or args.search_timeout is not None or args.objective == "budget":
        default_trials = 30 if args.objective == "apr" or args.search_timeout is not None else 1
        search = SearchSpec(
            objective=args.objective,
            budget_metric=args.budget_metric,
            trials=args.search_trials or default_trials,
            timeout_s=args.search_timeout,
            storage=args.study_storage,
            seed=args.seed,
        )
    return JobSpec(
        model=ModelSpec(architecture=args.model, kwargs=args.model_kwargs, weights=args.weights),
        data=DataSpec(source=args.data, image_size=args.image_size, mean=args.mean, std=args.std),
        criteria=[AttributionSpec(criterion=name, seed=args.seed) for name in names],
        splits=SplitSpec(
            reference_samples_per_class=args.samples_per_class,
            seed=args.seed,
            max_eval_samples=args.max_eval_samples,
        ),
        prune=PruneSpec(
            components=args.components,
            rates=rates,
            normalize_per_layer=args.normalize_per_layer,
            min_keep=args.min_keep,
            max_accuracy_drop=args.target_drop,
            rate=args.rate,
            recovery=[] if args.paper or args.recovery == "none" else _recovery(args),
            cost_exponent=0.0 if args.paper else args.cost_exponent,
            coupled=not (args.paper or args.no_coupled),
            round_to=1 if args.paper else args.round_to,
        ),
        search=search,
        export=ExportSpec(
            enabled=not args.no_export,
            formats=["safetensors", *args.export],
            measure_latency=not args.no_latency,
            pareto_drops=list(args.pareto or ()),
        ),
        baseline=BaselineSpec(
            allow_low_accuracy=args.allow_low_accuracy, min_unpruned_accuracy=args.min_unpruned_accuracy
        ),
        device=args.device,
    )


class ProgressBar:
    """A tqdm bar on stderr driven by pipeline progress events."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")

    def __call__(self, event: Any) -> None:
        if self.bar is None:
            return
        self.bar.set_description(event.stage[:24])
        self.bar.set_postfix_str(event.message[:60])
        self.bar.update(max(0, int(event.fraction * 1000) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_compress(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        spec = build_spec(args)
    except ValidationError as exc:
        print(f"error: invalid job: {exc}", file=sys.stderr)
        return 2
    import optuna

    from pxp import pipeline
    from pxp.report import results_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bar = ProgressBar(args.quiet)
    try:
        result = pipeline.run(spec, args.out, bar, study_storage=args.study_storage)
    finally:
        bar.close()
    print(results_table(result))
    print(f"\nchosen: {result.chosen_label} at rate {result.chosen_rate:.2f}")
    if result.compression:
        print(json.dumps(result.compression, indent=2))
    for point in result.pareto or []:
        speed = point["speedup"].get("32")
        print(
            f"pareto ≤{100 * point['max_accuracy_drop']:g} pt: rate {point['rate']:.3f}, test drop "
            f"{100 * point['accuracy_drop']:.1f} pt, MACs -{100 * point['macs_removed']:.1f}%"
            + (f", {speed:.2f}x at batch 32" if speed else "")
            + f" -> {point['directory']}"
        )
    for name, file in sorted(result.artifacts.items()):
        print(f"{name:>14}: {args.out / file}")
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce", help="re-run a finished job from its provenance.json and compare the results"
    )
    p.add_argument("directory", type=Path, help="the job's output directory (pxp compress --out)")
    p.add_argument("--out", type=Path, help="keep the rerun here (default: a temporary directory)")
    p.add_argument("--weights", help="the checkpoint, if it moved (its sha256 must match the record)")
    p.add_argument("--data", help="the data, if it moved (its sha256 must match the record)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Exit 0 when the rerun is identical, 1 when it differs (the differences are printed)."""
    from pxp.reproduce import reproduce

    bar = ProgressBar(args.quiet)
    try:
        report = reproduce(
            args.directory, out_dir=args.out, weights=args.weights, data=args.data, progress=bar
        )
    finally:
        bar.close()
    print(report.summary())
    return 0 if report.identical else 1


def main(argv: Sequence[str] | None = None) -> int:
    from pxp.cli_service import PASSTHROUGH, add_service_commands, run_passthrough

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return run_passthrough(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="pxp", description="Pruning by eXplaining: compress CNNs and ViTs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compress(sub)
    _add_reproduce(sub)
    add_service_commands(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args)) if hasattr(args, "handler") else cmd_compress(args)
    except UserError as exc:
        print(f"error: {exc.type_name}: {exc}", file=sys.stderr)
        return 2
    except PxpError as exc:
        print(f"internal error: {exc.type_name}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from pxp.client import PxpApiError

        if isinstance(exc, PxpApiError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
