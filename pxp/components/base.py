"""What a prunable layer is, independent of the model family.

A :class:`PrunableLayer` names a *hook point*: a module whose forward output
carries the layer's components along ``channel_dim``. Attribution reads
activations and relevances at that output; masking multiplies that output by a
0/1 vector, which makes a pruned component contribute exactly nothing
downstream (for Conv→BN the hook point is the BN, so the channel does not emit
BN's constant either).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pxp.spec import ComponentKind


@dataclass(frozen=True)
class PrunableLayer:
    #: Module path of the hook point (unique per layer).
    name: str
    kind: ComponentKind
    #: Number of components (channels, neurons, heads).
    size: int
    #: Dimension of the hook point's output along which components lie.
    channel_dim: int
    #: Module path of the module whose weights produce the components (conv, fc1, attention).
    producer: str
    #: Depth group of ``producer`` used by LRP composites (low/mid/high or early/middle/late).
    group: str
    #: Forward order among the model's prunable layers.
    index: int


def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def aggregate(tensor: torch.Tensor, channel_dim: int, signed: bool = False) -> torch.Tensor:
    """Per-component score of one batch of attributions at a hook point.

    Sums over the dimensions after ``channel_dim`` (space for conv, head_dim for
    heads), takes |·| unless ``signed``, then sums over the dimensions before it
    (samples, tokens). Matches ARCHITECTURE.md §2 "Relevance".
    """
    t = tensor.detach().double()
    after = tuple(range(channel_dim + 1, t.dim()))
    if after:
        t = t.sum(dim=after)
    if not signed:
        t = t.abs()
    before = tuple(range(channel_dim))
    return t.sum(dim=before) if before else t


def broadcast_mask(mask: torch.Tensor, output: torch.Tensor, channel_dim: int) -> torch.Tensor:
    shape = [1] * output.dim()
    shape[channel_dim] = -1
    return mask.to(device=output.device, dtype=output.dtype).view(shape)
