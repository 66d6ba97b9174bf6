"""Relevance collection: batched (pxp) vs one sample at a time (the reference code's loop).

Prints images/s for both, their ratio, the Spearman rank correlation between the
two score vectors (they must agree), the peak memory of each run, and the LRP
overhead: the batched LRP pass's time over a plain forward + backward of the
user's (unprepared) model on the same batches.

Models with random weights get a random classification head where the
architecture initialises it to zeros (torchvision's ViT does): with a zero head
every logit and every relevance is zero, and the rank comparison would be vacuous.

    python bench/attribution_speed.py                       # digits ResNet-18 + resnet50@224
    python bench/attribution_speed.py --models vit_b_16 --samples 16
    python bench/attribution_speed.py --memory --models resnet50 --threads 1   # peak RSS per batch size

``--memory``: per model (random weights), the peak RSS and images/s of one LRP
collection of the same 16+ images with the batch size pxp chooses for the default
request (``auto``, run first so no bigger batch's cached memory inflates it) and at
each of ``--memory-batches`` batch sizes (VmHWM reset before each; two interleaved
passes, the faster one's images/s), the growth per
added sample against one sample's summed module outputs (the estimate
:mod:`pxp.attribution.memory` sizes batches with), the batch size it would choose
now, and the torch profiler's largest CPU allocations by operator for one batch.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pxp.attribution import ScoringContext, compute_scores
from pxp.components import find_layers, prepare_model
from pxp.models import build_model, get_architecture
from pxp.spec import AttributionSpec, ModelSpec


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()


def timed_scores(
    ctx: ScoringContext, spec: AttributionSpec, device: torch.device
) -> tuple[float, dict, float]:
    reset_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    scores = compute_scores(ctx, spec)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, scores, peak_memory_mb(device)


def randomize_zero_linears(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)


def plain_forward_backward_s(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
) -> float:
    """Seconds for forward + backward of the target logits w.r.t. the input, batch by batch."""
    model.eval()
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].clone().requires_grad_(True)
        model(xb).gather(1, y[i : i + batch_size, None]).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_model(
    name: str, samples: int, batch_size: int, device: torch.device, components: str | None
) -> dict:
    info = get_architecture(name)
    kwargs = {"num_classes": 10} if not name.startswith("digits_") else {}
    weights_note = "zoo-trained" if name.startswith("digits_") else "random weights"
    loaded = build_model(ModelSpec(architecture=name, kwargs=kwargs))
    if not name.startswith("digits_"):
        randomize_zero_linears(loaded.model)
    prepared = prepare_model(loaded.model, info.family).to(device)
    layers = find_layers(prepared, info.family, components)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, info.input_channels, info.image_size, info.image_size, generator=gen).to(device)
    y = torch.randint(0, loaded.num_classes, (samples,), generator=gen).to(device)
    ctx = ScoringContext(prepared, info.family, layers, x, y)
    compute_scores(ScoringContext(prepared, info.family, layers, x[:2], y[:2]), AttributionSpec(batch_size=2))
    t_single, s_single, mem_single = timed_scores(ctx, AttributionSpec(criterion="lrp", batch_size=1), device)
    t_batch, s_batch, mem_batch = timed_scores(
        ctx, AttributionSpec(criterion="lrp", batch_size=batch_size), device
    )
    original = loaded.model.to(device)
    plain_forward_backward_s(original, x[:2], y[:2], 2, device)
    t_plain = plain_forward_backward_s(original, x, y, batch_size, device)
    flat_single = np.concatenate([s_single[layer.name].numpy() for layer in layers])
    flat_batch = np.concatenate([s_batch[layer.name].numpy() for layer in layers])
    rho = float(spearmanr(flat_single, flat_batch).statistic)
    return {
        "model": f"{name} ({weights_note}, {info.image_size}px)",
        "samples": samples,
        "per_sample_ips": samples / t_single,
        "batched_ips": samples / t_batch,
        "ratio": t_single / t_batch,
        "spearman": rho,
        "peak_mb_single": mem_single,
        "peak_mb_batched": mem_batch,
        "lrp_overhead": t_batch / t_plain,
    }


def memory_model(name: str, batches: list[int], device: torch.device, components: str | None) -> None:
    from pxp.attribution.memory import (
        ACTIVATION_FACTOR,
        available_bytes,
        fit_batch_size,
        output_bytes_per_sample,
    )

    info = get_architecture(name)
    loaded = build_model(ModelSpec(architecture=name, kwargs={"num_classes": 10}))
    randomize_zero_linears(loaded.model)
    prepared = prepare_model(loaded.model, info.family).to(device)
    layers = find_layers(prepared, info.family, components)
    gen = torch.Generator().manual_seed(0)
    n = max(batches)
    x = torch.randn(n, info.input_channels, info.image_size, info.image_size, generator=gen).to(device)
    y = torch.randint(0, loaded.num_classes, (n,), generator=gen).to(device)
    per_sample = output_bytes_per_sample(prepared, x)
    compute_scores(ScoringContext(prepared, info.family, layers, x[:1], y[:1]), AttributionSpec(batch_size=1))
    auto = fit_batch_size(prepared, x, AttributionSpec().batch_size)
    # Each batch size scores the same ``samples`` images (the default request's batch as
    # ``compute_scores`` would cap it: ``auto``), so images/s compare like for like.
    samples = max(max(batches), auto, 16)
    if len(x) < samples:
        x = torch.randn(samples, *x.shape[1:], generator=gen).to(device)
        y = torch.randint(0, loaded.num_classes, (samples,), generator=gen).to(device)
    import pxp.attribution.criteria as criteria

    capped = criteria.fit_batch_size

    def uncapped(model: torch.nn.Module, x: torch.Tensor, requested: int) -> int:
        return requested

    # The auto row first, so its peak RSS is not inflated by memory a bigger batch left cached;
    # then two interleaved passes over every row, images/s from the faster one.
    plan = [(f"auto ({auto})", AttributionSpec().batch_size), *((str(b), b) for b in batches)]
    peaks: dict[str, tuple[float, float]] = {}
    best: dict[str, float] = {}
    for _ in range(2):
        for label, b in plan:
            ctx = ScoringContext(prepared, info.family, layers, x[:samples], y[:samples])
            reset_memory(device)
            before = peak_memory_mb(device)
            # Fixed rows run exactly their batch (the cap bypassed); the auto row runs the
            # default request through the product's cap.
            if not label.startswith("auto"):
                criteria.fit_batch_size = uncapped
            try:
                seconds, _, peak = timed_scores(ctx, AttributionSpec(criterion="lrp", batch_size=b), device)
            finally:
                criteria.fit_batch_size = capped
            peaks.setdefault(label, (before, peak))
            best[label] = min(best.get(label, seconds), seconds)
    rows = [(label, b, *peaks[label], samples / best[label]) for label, b in plan]
    print(f"\n### {name} at {info.image_size}px (random weights), LRP ε composite, {samples} images\n")
    print(f"one sample's summed module outputs: {per_sample / 2**20:.1f} MB")
    print("| batch | RSS before MB | peak RSS MB | peak − before MB | images/s |")
    print("|---|---|---|---|---|")
    for label, _b, before, peak, rate in rows:
        print(f"| {label} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {rate:.3f} |")
    (_, b0, _, p0, _), (_, b1, _, p1, _) = rows[1], rows[-1]
    growth = (p1 - p0) * 2**20 / (b1 - b0)
    print(
        f"\ngrowth per added sample: {growth / 2**20:.1f} MB = {growth / per_sample:.2f}× the summed outputs "
        f"(the estimate uses {ACTIVATION_FACTOR:g}×); free now {available_bytes(device) / 2**30:.1f} GiB → "
        f"auto batch for a requested 256: {fit_batch_size(prepared, x, 256)}"
    )
    from torch.profiler import ProfilerActivity, profile

    ctx = ScoringContext(prepared, info.family, layers, x[:2], y[:2])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        compute_scores(ctx, AttributionSpec(criterion="lrp", batch_size=2))
    print("\nlargest CPU allocations by operator (batch 2, torch profiler, self memory):\n")
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=8))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["digits_resnet18", "resnet50"])
    parser.add_argument("--samples", type=int, default=32, help="images scored (both ways)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--components", default=None, help="heads|neurons for ViTs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--memory", action="store_true", help="peak memory per batch size instead")
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory:
        for name in args.models:
            memory_model(name, args.memory_batches, device, args.components)
        return
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    header = (
        "| model | images | per-sample img/s | batched img/s | speed-up | Spearman ρ | "
        "peak MB (per-sample) | peak MB (batched) | LRP / plain fwd+bwd |"
    )
    print(header)
    print("|" + "---|" * 9)
    for name in args.models:
        r = bench_model(name, args.samples, args.batch_size, device, args.components)
        print(
            f"| {r['model']} | {r['samples']} | {r['per_sample_ips']:.1f} | {r['batched_ips']:.1f} | "
            f"{r['ratio']:.1f}× | {r['spearman']:.4f} | {r['peak_mb_single']:.0f} | {r['peak_mb_batched']:.0f} | "
            f"{r['lrp_overhead']:.2f}× |",
            flush=True,
        )


if __name__ == "__main__":
    main()
