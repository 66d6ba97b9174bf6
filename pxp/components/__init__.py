"""What is prunable in each model family, and the prepared model it lives in."""

from __future__ import annotations

import copy

from torch import nn

from pxp.components.base import PrunableLayer, aggregate, broadcast_mask, get_module
from pxp.errors import InvalidSpecError, UnsupportedArchitectureError
from pxp.spec import ComponentKind, Family

__all__ = [
    "Family",
    "PrunableLayer",
    "aggregate",
    "broadcast_mask",
    "default_kind",
    "find_layers",
    "get_module",
    "prepare_model",
]


def default_kind(family: Family, prepared: nn.Module | None = None) -> ComponentKind:
    """Filters for CNNs, heads for ViTs; MLP neurons for ConvNeXt / Swin / EVA (``prepared`` given)."""
    if family == "cnn":
        return "filters"
    if prepared is not None:
        from pxp.components.vit.mlp import is_mlp_model

        if is_mlp_model(prepared):
            return "neurons"
    return "heads"


def prepare_model(model: nn.Module, family: Family) -> nn.Module:
    """A deep copy in eval mode with no in-place activations, in which every hook point exists.

    For ViTs this is the explicit-attention form. The caller's model is never modified.
    """
    prepared = copy.deepcopy(model).eval()
    for module in prepared.modules():
        if getattr(module, "inplace", False) is True:
            setattr(module, "inplace", False)  # noqa: B010
    if family == "vit":
        from pxp.components.vit import prepare_vit

        prepared = prepare_vit(prepared)
    for p in prepared.parameters():
        p.requires_grad_(False)
    return prepared


def find_layers(
    prepared: nn.Module,
    family: Family,
    kind: ComponentKind | None = None,
    exclude: list[str] | tuple[str, ...] = (),
) -> list[PrunableLayer]:
    kind = kind or default_kind(family, prepared)
    if family == "cnn":
        if kind != "filters":
            raise InvalidSpecError(f"CNNs prune 'filters', not {kind!r}")
        from pxp.components.cnn import find_cnn_layers

        return find_cnn_layers(prepared, exclude)
    if family == "vit":
        if kind == "filters":
            raise InvalidSpecError("ViTs prune 'heads', 'neurons' or 'fc2', not 'filters'")
        from pxp.components.vit import find_vit_layers

        return find_vit_layers(prepared, kind, exclude)
    raise UnsupportedArchitectureError(f"unknown model family {family!r}")
