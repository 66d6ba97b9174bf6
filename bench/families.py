"""Supported model families: criteria, structural removal, export formats and CPU speed-up.

For each architecture, with random weights (seed 0) on the bundled digits at
``--image-size`` (the accuracy gate overridden: random weights are at chance), one
job prunes ``--rate`` of the components with the ``weight`` criterion, ranked as ``pxp
compress`` ranks by default (coupled groups, relevance / MACs^β with β = 1, channel counts
rounded to the device's block), and exports it.
Every other criterion the family supports is scored too (✓ ran, ✗ failed, — refused:
LRP where it is not faithful). Removal is verified against masking inside the job.
The same scores ranked independently (the paper's ranking, ``--paper``) are planned too,
to show how many pruned components that ranking removes and how many it only zeroes.
Export formats are tried one by one (safetensors, ONNX run by onnxruntime, TorchScript).
MACs / params removed: measured on the exported model (CNN families: equal to the cost
model's prediction). Speed-up: median CPU latency of the unpruned over the exported,
reloaded model at batch ``--batch`` and ``--latency-size``², one thread, interleaved runs;
A/A: the same measurement of the unpruned model against a copy of itself (the noise floor).

    .venv/bin/python bench/families.py
    .venv/bin/python bench/families.py --models mobilenet_v2 resnet18 --repeats 5
    .venv/bin/python bench/families.py --cnn --repeats 5   # the CNN rows only
    .venv/bin/python bench/families.py --models convnext_tiny swin_t timm/eva02_tiny_patch14_224
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from pxp import pipeline
from pxp.attribution.support import lrp_blockers
from pxp.errors import PxpError
from pxp.models import build_model, get_architecture
from pxp.models.compressed import load_compressed
from pxp.pipeline.scoring import score
from pxp.spec import (
    CRITERIA,
    AttributionSpec,
    BaselineSpec,
    DataSpec,
    ExplainSpec,
    ExportSpec,
    JobSpec,
    ModelSpec,
    PruneSpec,
    SplitSpec,
)
from pxp.stages import StageStore

#: (architecture, kwargs, components)
DEFAULT_MODELS: list[tuple[str, dict, str | None]] = [
    ("mobilenet_v2", {}, None),
    ("mobilenet_v3_small", {}, None),
    ("efficientnet_b0", {}, None),
    ("densenet121", {}, None),
    ("regnet_x_400mf", {}, None),
    ("regnet_y_400mf", {}, None),
    ("resnext50_32x4d", {}, None),
    (
        "VisionTransformer",
        {
            "image_size": 32,
            "patch_size": 4,
            "num_layers": 4,
            "num_heads": 4,
            "hidden_dim": 128,
            "mlp_dim": 512,
        },
        "neurons",
    ),
    # ConvNeXt / Swin / EVA: MLP neurons (the default components of these models).
    ("convnext_tiny", {}, None),
    ("swin_t", {}, None),
    # timm models get img_size = --image-size.
    ("timm/swin_tiny_patch4_window7_224", {}, None),
    ("timm/eva02_tiny_patch14_224", {}, None),
    ("resnet18", {}, None),
    ("mobilenet_v3_large", {}, None),
    ("efficientnet_v2_s", {}, None),
    ("resnet50", {}, None),
    ("vgg11_bn", {}, None),
]


def _spec(
    name: str,
    kwargs: dict,
    components: str | None,
    criteria: list[str],
    args: argparse.Namespace,
    export: list[str] | None,
    coupled: bool = False,
) -> JobSpec:
    return JobSpec(
        model=ModelSpec(architecture=name, kwargs={**kwargs, "num_classes": 10}),
        data=DataSpec(image_size=args.image_size),
        criteria=[AttributionSpec(criterion=c) for c in criteria],  # type: ignore[arg-type]
        splits=SplitSpec(reference_samples_per_class=2, max_eval_samples=40),
        prune=PruneSpec(
            rates=[0.0, args.rate],
            rate=args.rate,
            components=components,  # type: ignore[arg-type]
            coupled=coupled,
            # pxp compress's ranking: rounded to the device's channel block, relevance / MACs^β with β = 1.
            round_to="auto" if coupled else 1,
            cost_exponent=1.0 if coupled else 0.0,
        ),
        export=ExportSpec(enabled=export is not None, formats=export or ["safetensors"]),  # type: ignore[arg-type]
        explain=ExplainSpec(enabled=export is None),
        baseline=BaselineSpec(allow_low_accuracy=True),
        device="cpu",
    )


def _latency(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def _speedup(original: nn.Module, compressed: nn.Module, x: torch.Tensor, repeats: int) -> float:
    original.eval()
    compressed.eval()
    for _ in range(2):
        _latency(original, x)
        _latency(compressed, x)
    a, b = [], []
    for _ in range(repeats):
        a.append(_latency(original, x))
        b.append(_latency(compressed, x))
    return statistics.median(a) / statistics.median(b)


def run(name: str, kwargs: dict, components: str | None, args: argparse.Namespace) -> dict[str, str]:
    size_kwarg = get_architecture(name).image_size_kwarg
    if size_kwarg and size_kwarg not in kwargs:
        kwargs = {**kwargs, size_kwarg: args.image_size}
    loaded = build_model(ModelSpec(architecture=name, kwargs={**kwargs, "num_classes": 10}))
    lrp_ok = not lrp_blockers(loaded.model, loaded.info.family)
    cells: dict[str, str] = {}
    criteria = [c for c in CRITERIA if c != "lrp" or lrp_ok]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            pipeline.run(_spec(name, kwargs, components, criteria, args, None), Path(tmp) / "criteria")
            cells.update({c: "✓" for c in criteria})
        except PxpError:
            for criterion in criteria:
                try:
                    spec = _spec(name, kwargs, components, [criterion], args, None)
                    pipeline.run(spec, Path(tmp) / criterion)
                    cells[criterion] = "✓"
                except PxpError as exc:
                    cells[criterion] = f"✗ ({type(exc).__name__})"
        cells["lrp"] = cells.get("lrp", "—")
        cells["paper"] = _paper_removal(name, kwargs, components, args, Path(tmp) / "paper")
        formats: list[str] = []
        result = None
        export_dir = Path(tmp) / "export"
        for attempt in (
            ["safetensors", "onnx", "torchscript"],
            ["safetensors", "torchscript"],
            ["safetensors"],
        ):
            try:
                spec = _spec(name, kwargs, components, ["weight"], args, attempt, coupled=True)
                result = pipeline.run(spec, export_dir / "-".join(attempt))
                formats = attempt
                export_dir = export_dir / "-".join(attempt)
                break
            except Exception as exc:
                print(f"  {name} {attempt}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        if result is None or result.compression is None:
            for key in ("removal", "formats", "macs", "params", "speedup", "noise"):
                cells[key] = "—" if key != "removal" else "no"
            return cells
        comp = result.compression
        cells["removal"] = f"{comp['components_removed']} removed, {comp['components_zeroed']} zeroed"
        cells["formats"] = ", ".join(formats)
        cells["macs"] = f"{comp['flops_removed_fraction']:.0%}"
        cells["params"] = f"{1 - comp['params_after'] / comp['params_before']:.0%}"
        compressed = load_compressed(export_dir)
        channels = loaded.info.input_channels
        # Models built for one input size (ViTs, timm Swin / EVA: an image-size kwarg) run at it.
        size = args.image_size if loaded.info.image_size_kwarg else args.latency_size
        x = torch.randn(args.batch, channels, size, size)
        cells["speedup"] = f"{_speedup(loaded.model, compressed, x, args.repeats):.2f}×"
        # The same measurement of the unpruned model against a copy of itself: the noise floor.
        cells["noise"] = f"{_speedup(loaded.model, copy.deepcopy(loaded.model), x, args.repeats):.2f}×"
    return cells


def _paper_removal(
    name: str, kwargs: dict, components: str | None, args: argparse.Namespace, out: Path
) -> str:
    """Removed / zeroed counts when the same ``weight`` scores are ranked independently (the paper)."""
    state = pipeline.build_state(_spec(name, kwargs, components, ["weight"], args, None), pipeline.silent())
    scores = score(state, AttributionSpec(criterion="weight"), StageStore(out))
    planner = state.planner()
    if planner is None:
        return "—"
    plan = planner.plan(state.order(scores).keep_masks(args.rate))
    removed = sum(len(v) for v in plan.removed.values())
    zeroed = sum(len(v) for v in plan.zeroed.values())
    return f"{removed} removed, {zeroed} zeroed"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", help="architecture names (default: the built-in list)")
    parser.add_argument("--cnn", action="store_true", help="only the CNN architectures of the built-in list")
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--latency-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    known = {row[0]: row for row in DEFAULT_MODELS}
    models = DEFAULT_MODELS if not args.models else [known.get(m, (m, {}, None)) for m in args.models]
    if args.cnn:
        models = [m for m in models if get_architecture(m[0]).family == "cnn"]
    header = [
        "model",
        *CRITERIA,
        "independent ranking (paper)",
        "coupled ranking (default)",
        "export formats",
        f"MACs removed @ {args.rate}",
        f"params removed @ {args.rate}",
        "CPU speed-up",
        "A/A (noise)",
    ]
    print(f"| {' | '.join(header)} |")
    print(f"|{'|'.join('---' for _ in header)}|", flush=True)
    for name, kwargs, components in models:
        started = time.monotonic()
        cells = run(name, kwargs, components, args)
        row = [
            name + (f" ({components})" if components else ""),
            *(cells[c] for c in CRITERIA),
            cells["paper"],
            cells["removal"],
            cells["formats"],
            cells["macs"],
            cells["params"],
            cells["speedup"],
            cells["noise"],
        ]
        print(f"| {' | '.join(row)} |", flush=True)
        print(f"  {name}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    print(
        f"\nrandom weights, digits at {args.image_size}², rate {args.rate} (weight criterion; exported: "
        "coupled ranking), "
        f"speed-up at batch {args.batch}, {args.latency_size}² (fixed-size ViT / timm Swin / EVA: "
        f"{args.image_size}²), 1 thread, "
        f"median of {args.repeats}; torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
