"""Which Linear reads each ViT component, and at which input columns: what recovery refits.

A pruned attention head reaches its block's ``out_proj`` as ``head_dim`` zero input
columns (masking zeroes the head's context before the heads are merged: column
``h·D + d`` carries head ``h``); a pruned MLP neuron reaches ``fc2`` (for ConvNeXt /
Swin / EVA blocks, the module :class:`~pxp.components.vit.mlp.MlpUnits` names as
``columns``) as one zero input column. These are the only consumers of a head or a
neuron, so refitting them from the remaining columns is all a consumer refit can do.
``fc2`` outputs are residual-stream dimensions, read by every later LayerNorm and the
identity path: they have no consumer to refit here.
"""

from __future__ import annotations

import torch
from torch import nn

from pxp.components import PrunableLayer
from pxp.components.vit.convert import is_explicit
from pxp.components.vit.mlp import find_mlp_units
from pxp.components.vit.modules import ExplicitSelfAttention

#: (consumer module, its input columns fed by the layer, the component feeding each column).
Consumer = tuple[str, torch.Tensor, torch.Tensor]


def _fc2_of(model: nn.Module, fc1: str) -> str | None:
    parent, _, _ = fc1.rpartition(".")
    linears = [
        f"{parent}.{n}" for n, m in model.get_submodule(parent).named_children() if isinstance(m, nn.Linear)
    ]
    return linears[1] if len(linears) == 2 and linears[0] == fc1 else None


def vit_consumers(model: nn.Module, layers: list[PrunableLayer]) -> dict[str, list[Consumer]]:
    """Per heads / neurons layer of a prepared ViT: the module consuming its components, columns, components.

    A layer whose consumer is not a Linear (a ConvNeXt 1×1-conv MLP reads its neurons
    over ``channel_dim=1``) or cannot be found is left out: it is not refitted.
    """
    mlp_columns = {} if is_explicit(model) else {u.hook: u.columns for u in find_mlp_units(model)}
    consumers: dict[str, list[Consumer]] = {}
    for layer in layers:
        name: str | None
        if layer.kind == "heads":
            attn = model.get_submodule(layer.producer)
            assert isinstance(attn, ExplicitSelfAttention)
            name = f"{layer.producer}.out_proj"
            root = torch.arange(attn.num_heads).repeat_interleave(attn.head_dim)
        elif layer.kind == "neurons":
            name = mlp_columns.get(layer.name) if mlp_columns else _fc2_of(model, layer.producer)
            root = torch.arange(layer.size)
        else:
            continue
        if name is None or not isinstance(model.get_submodule(name), nn.Linear):
            continue
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        if linear.in_features != len(root):
            continue
        consumers[layer.name] = [(name, torch.arange(len(root)), root)]
    return consumers
