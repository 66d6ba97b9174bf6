"""Accuracy-vs-pruning-rate curves, A_PR and the safe rate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pxp.attribution.engine import batches
from pxp.components import PrunableLayer
from pxp.pruning.masking import masked
from pxp.pruning.ranking import PruneOrder


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    correct = 0
    for part in batches(len(x), batch_size):
        correct += int((model(x[part]).argmax(-1) == y[part]).sum())
    return correct / max(len(x), 1)


def masked_curve(
    model: nn.Module,
    order: PruneOrder,
    rates: list[float],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 256,
    on_rate: Callable[[int, float, float], None] | None = None,
) -> list[float]:
    """Top-1 accuracy at each rate with the nested masks of ``order``."""
    layers: list[PrunableLayer] = list(order.layers)
    accuracies = []
    for i, rate in enumerate(rates):
        with masked(model, layers, order.keep_masks(rate)):
            acc = accuracy(model, x, y, batch_size)
        accuracies.append(acc)
        if on_rate is not None:
            on_rate(i, rate, acc)
    return accuracies


def area_under_curve(accuracies: list[float]) -> float:
    """A_PR: the mean accuracy over the evaluated rates (ARCHITECTURE.md §2)."""
    return float(np.mean(accuracies))


def safe_rate(rates: list[float], accuracies: list[float], max_drop: float) -> float:
    """Highest rate such that it, and every lower rate, stays within ``max_drop`` of unpruned.

    Requiring every lower rate too keeps the safe region contiguous: a lucky spike
    at a high rate after a dip is not called safe.
    """
    base = accuracies[rates.index(0.0)] if 0.0 in rates else accuracies[0]
    best = 0.0
    for rate, acc in sorted(zip(rates, accuracies, strict=True)):
        if acc < base - max_drop - 1e-12:
            break
        best = rate
    return best
