"""Prunable conv filters of a CNN: every Conv2d output channel, hook point after its BN."""

from __future__ import annotations

import torch.fx
from torch import nn

from pxp.components.base import PrunableLayer
from pxp.errors import UnsupportedArchitectureError

_DEPTH_GROUPS = ("low", "mid", "high")


def _conv_bn_pairs_fx(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Convs in forward order and the BN that consumes each conv's output alone."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    order: list[str] = []
    bn_of: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        order.append(node.target)
        users = list(node.users)
        if (
            len(users) == 1
            and users[0].op == "call_module"
            and isinstance(modules.get(users[0].target), nn.BatchNorm2d)
        ):
            bn_of[node.target] = users[0].target
    return order, bn_of


def _conv_bn_pairs_registration(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Fallback for untraceable models: registration order, BN right after its conv."""
    named = list(model.named_modules())
    order: list[str] = []
    bn_of: dict[str, str] = {}
    for i, (name, module) in enumerate(named):
        if not isinstance(module, nn.Conv2d):
            continue
        order.append(name)
        if i + 1 < len(named):
            nxt_name, nxt = named[i + 1]
            if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == module.out_channels:
                bn_of[name] = nxt_name
    return order, bn_of


def conv_order_and_bn(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    try:
        return _conv_bn_pairs_fx(model)
    except Exception:
        return _conv_bn_pairs_registration(model)


def depth_group(index: int, count: int) -> str:
    """low / mid / high by thirds of the forward order."""
    return _DEPTH_GROUPS[min(2, (index * 3) // max(count, 1))]


def cnn_module_groups(model: nn.Module) -> dict[str, str]:
    """Composite group of every Conv2d (low/mid/high) and Linear (fc) module."""
    order, _ = conv_order_and_bn(model)
    groups = {name: depth_group(i, len(order)) for i, name in enumerate(order)}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            groups[name] = "fc"
    return groups


def find_cnn_layers(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()) -> list[PrunableLayer]:
    """One PrunableLayer per Conv2d (output channels), first conv included, classifier excluded.

    Convs producing a squeeze-excitation gate are left out (see :mod:`pxp.components.gates`).
    """
    order, bn_of = conv_order_and_bn(model)
    if not order:
        raise UnsupportedArchitectureError("model has no Conv2d layers to prune")
    unknown = sorted(set(exclude) - set(order))
    if unknown:
        raise UnsupportedArchitectureError(f"excluded layer(s) {unknown} are not Conv2d modules of the model")
    modules = dict(model.named_modules())
    from pxp.components.gates import gate_convs

    gates = gate_convs(model)
    layers: list[PrunableLayer] = []
    for i, conv_name in enumerate(order):
        if conv_name in exclude or conv_name in gates:
            continue
        conv = modules[conv_name]
        assert isinstance(conv, nn.Conv2d)
        layers.append(
            PrunableLayer(
                name=bn_of.get(conv_name, conv_name),
                kind="filters",
                size=conv.out_channels,
                channel_dim=1,
                producer=conv_name,
                group=depth_group(i, len(order)),
                index=len(layers),
            )
        )
    return layers
