"""LRP composites by model family."""

from __future__ import annotations

from torch import nn
from zennit.core import Composite

from pxp.components import Family
from pxp.spec import CompositeSpec


def build_composite(model: nn.Module, family: Family, spec: CompositeSpec) -> Composite:
    if family == "cnn":
        from pxp.attribution.lrp_cnn import build_cnn_composite

        return build_cnn_composite(model, spec)
    from pxp.attribution.lrp_vit import build_vit_composite

    return build_vit_composite(model, spec)
