"""Masking: make pruned components contribute exactly nothing, without touching weights."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from pxp.components import PrunableLayer, broadcast_mask


@contextlib.contextmanager
def masked(
    model: nn.Module, layers: list[PrunableLayer], keep: dict[str, torch.Tensor]
) -> Iterator[nn.Module]:
    """Multiply every hook point's output by its keep-mask while the block runs.

    Equivalent to zeroing the producing weights and bias (and BN affine): the hook
    point sits after BN, so a pruned channel is exactly 0, not BN's constant.
    """
    handles = []

    def make_hook(mask: torch.Tensor, channel_dim: int) -> Callable[..., torch.Tensor]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return output * broadcast_mask(mask, output, channel_dim)

        return hook

    try:
        for layer in layers:
            module = model.get_submodule(layer.name)
            handles.append(module.register_forward_hook(make_hook(keep[layer.name], layer.channel_dim)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def zero_pruned_cnn_weights(
    model: nn.Module, layers: list[PrunableLayer], keep: dict[str, torch.Tensor]
) -> None:
    """Zero, in place, the weight rows, bias and BN affine of pruned conv filters.

    For a checkpoint with the same architecture that behaves like the masked model.
    """
    with torch.no_grad():
        for layer in layers:
            dead = ~keep[layer.name]
            conv = model.get_submodule(layer.producer)
            assert isinstance(conv, nn.Conv2d)
            conv.weight[dead] = 0
            if conv.bias is not None:
                conv.bias[dead] = 0
            if layer.name != layer.producer:
                bn = model.get_submodule(layer.name)
                assert isinstance(bn, nn.BatchNorm2d)
                bn.weight[dead] = 0
                bn.bias[dead] = 0
