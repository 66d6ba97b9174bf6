"""The channel block a device computes in, for :class:`~pxp.pruning.ranking.PruneOrder` rounding.

A conv or matrix product runs over output channels in blocks of one vector
register (CPU) or one tensor-core tile (CUDA); a partly filled block costs as
much as a full one. Measured on this project's AVX-512 CPU (torch 2.14.1, batch
32, 3×3 conv at 16×16, one thread): every channel count from 49 to 64 took the
same 4.6–4.8 ms and 33–48 took 2.7–3.1 ms, so pruning 64 channels to 50 saves
nothing. ``bench/deliverable.py`` measures what rounding to this block gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pxp.components import PrunableLayer

#: fp32 lanes per vector register by what ``torch.backends.cpu.get_cpu_capability()`` reports.
_CPU_BLOCKS = {"AVX512": 16, "AVX2": 8}


def channel_block(device: torch.device) -> int:
    """Channels per hardware block on ``device``: 8 on CUDA, 16 on AVX-512 CPUs, else 8."""
    if device.type == "cuda":
        return 8
    if device.type == "cpu":
        return _CPU_BLOCKS.get(torch.backends.cpu.get_cpu_capability(), 8)
    return 1


def resolve_round_to(value: int | str, layers: Sequence[PrunableLayer], device: torch.device) -> int:
    """``PruneSpec.round_to`` as a number: ``"auto"`` is :func:`channel_block`; heads are never rounded.

    A head is already a block of ``head_dim`` channels, and a ViT has few of them
    per block, so rounding head counts would only forbid pruning them.
    """
    if any(layer.kind == "heads" for layer in layers):
        return 1
    if value == "auto":
        return channel_block(device)
    if not isinstance(value, int):
        raise ValueError(f"round_to must be 'auto' or a positive integer, got {value!r}")
    return value
