"""Latency measurement: bounded, interleaved, restores the models it times."""

from __future__ import annotations

import torch
from torch import nn

from pxp.pruning.latency import latency_summary, measure_latency


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))


def test_latency_is_bounded_and_restores_training_mode() -> None:
    original, compressed = _mlp(64).train(), _mlp(8).eval()
    points = measure_latency(
        original, compressed, (16,), torch.device("cpu"), batch_sizes=(1, 4), max_repeats=5
    )
    assert [p.batch_size for p in points] == [1, 4]
    for p in points:
        assert 3 <= p.repeats <= 5
        assert p.original_ms > 0 and p.compressed_ms > 0
        assert p.speedup == p.original_ms / p.compressed_ms
    assert original.training and not compressed.training
    summary = latency_summary(points, torch.device("cpu"))
    assert summary["batches"]["4"]["repeats"] == points[1].repeats  # type: ignore[index]
