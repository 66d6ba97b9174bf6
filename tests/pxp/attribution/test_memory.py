"""The attribution batch size is capped by the free memory, never raised."""

from __future__ import annotations

import torch
from torch import nn

from pxp.attribution.memory import (
    CPU_BATCH_BYTES,
    available_bytes,
    batch_budget_bytes,
    fit_batch_size,
    output_bytes_per_sample,
)


class _Huge(nn.Module):
    """Outputs a terabyte-sized view (an expand allocates nothing), as if each sample needed that much."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)[:, :1, None].expand(len(x), 1 << 20, 1 << 20)


def test_output_bytes_count_every_leaf_output_for_one_sample() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x = torch.randn(5, 1, 8, 8)
    expected = (4 * 64 + 4 * 64 + 4 * 64 + 10 + 64) * 4  # conv, relu, flatten, linear, the input
    assert output_bytes_per_sample(model, x) == expected


def test_the_requested_batch_is_kept_when_it_fits_and_lowered_when_not() -> None:
    x = torch.randn(8, 1, 8, 8)
    assert available_bytes(x.device) > 0
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert fit_batch_size(small, x, 32) == 32
    assert fit_batch_size(small, x, 1) == 1
    assert fit_batch_size(_Huge(), x, 32) == 1  # never below one


class _Wide(nn.Module):
    """Each sample's output is a 64 MiB view (an expand allocates nothing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)[:, :1].expand(len(x), 16 << 20)


def test_a_cpu_batch_is_held_within_the_cpu_budget_even_with_memory_free() -> None:
    x = torch.randn(64, 1, 8, 8)
    budget = batch_budget_bytes(x.device)
    assert budget == min(0.5 * available_bytes(x.device), CPU_BATCH_BYTES)
    # 4 × (64 MiB + the input) planned per sample: a 1 GiB CPU budget allows 3, however much is free.
    assert fit_batch_size(_Wide(), x, 64) == max(1, int(budget // (4 * ((64 << 20) + 4 * 64))))
    assert fit_batch_size(_Wide(), x, 64) <= 3
