"""Measured latency of the original and the compressed model on the job's device.

Both models run on the same input, interleaved (original, compressed, original, …)
after a warm-up, so machine load hits both alike; the median of the runs is
reported. The number of runs is bounded twice: at most ``max_repeats`` and at
most about ``budget_s`` seconds per batch size, so measuring stays cheap for a
large model (at least ``min_repeats`` runs each are always taken).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 32)


@dataclass(frozen=True)
class LatencyPoint:
    """Median milliseconds per batch of each model at one batch size."""

    batch_size: int
    original_ms: float
    compressed_ms: float
    repeats: int
    #: Fastest run of each model: on a shared machine, the best estimate of the unloaded latency.
    original_min_ms: float = 0.0
    compressed_min_ms: float = 0.0

    @property
    def speedup(self) -> float:
        """Median over median: what a user's typical call gains."""
        return self.original_ms / self.compressed_ms if self.compressed_ms > 0 else float("inf")

    @property
    def min_speedup(self) -> float:
        """Fastest over fastest run: least disturbed by other load on the machine."""
        return self.original_min_ms / self.compressed_min_ms if self.compressed_min_ms > 0 else float("inf")

    def as_dict(self) -> dict[str, float | int]:
        """JSON form: ms per batch for both models, the speed-up and the runs taken."""
        return {
            "batch_size": self.batch_size,
            "original_ms": self.original_ms,
            "compressed_ms": self.compressed_ms,
            "speedup": self.speedup,
            "original_min_ms": self.original_min_ms,
            "compressed_min_ms": self.compressed_min_ms,
            "min_speedup": self.min_speedup,
            "repeats": self.repeats,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    _sync(x.device)
    start = time.perf_counter()
    model(x)
    _sync(x.device)
    return time.perf_counter() - start


@torch.inference_mode()
def measure_latency(
    original: nn.Module,
    compressed: nn.Module,
    input_shape: Sequence[int],
    device: torch.device,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    min_repeats: int = 3,
    max_repeats: int = 30,
    budget_s: float = 2.0,
    seed: int = 0,
) -> list[LatencyPoint]:
    """Median ms per batch of ``original`` and ``compressed`` at each batch size, runs interleaved.

    Both models are moved to ``device`` (and put in eval mode) for the duration and
    restored afterwards. ``input_shape`` excludes the batch dimension. Inputs are
    seeded Gaussian noise: latency of these dense models does not depend on values.
    """
    points = []
    states = [(m, m.training, _device_of(m)) for m in (original, compressed)]
    try:
        for model in (original, compressed):
            model.eval().to(device)
        generator = torch.Generator().manual_seed(seed)
        for batch in batch_sizes:
            x = torch.randn((batch, *input_shape), generator=generator).to(device)
            for _ in range(warmup):
                _time_once(original, x)
                _time_once(compressed, x)
            times: tuple[list[float], list[float]] = ([], [])
            started = time.perf_counter()
            while len(times[0]) < max_repeats:
                times[0].append(_time_once(original, x))
                times[1].append(_time_once(compressed, x))
                if len(times[0]) >= min_repeats and time.perf_counter() - started > budget_s:
                    break
            points.append(
                LatencyPoint(
                    batch_size=batch,
                    original_ms=1e3 * statistics.median(times[0]),
                    compressed_ms=1e3 * statistics.median(times[1]),
                    repeats=len(times[0]),
                    original_min_ms=1e3 * min(times[0]),
                    compressed_min_ms=1e3 * min(times[1]),
                )
            )
    finally:
        for model, training, where in states:
            model.train(training)
            if where is not None:
                model.to(where)
    return points


def _device_of(model: nn.Module) -> torch.device | None:
    param = next(model.parameters(), None)
    return param.device if param is not None else None


def latency_summary(points: Sequence[LatencyPoint], device: torch.device) -> dict[str, object]:
    """The ``latency`` entry of a compression summary: device, threads and one entry per batch size."""
    return {
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "statistic": "median",
        "batches": {str(p.batch_size): p.as_dict() for p in points},
    }
