"""Where LRP cannot be faithful, say so instead of returning a wrong answer.

The CNN composite (:mod:`pxp.attribution.lrp_cnn`) is exact for conv/BN/ReLU stacks
(VGG) and torchvision ResNet blocks, whose residual sums zennit canonizes. Other
torchvision families contain operations no rule here treats faithfully; on them the
``lrp`` criterion (and the LRP search) is refused with the reason, while the gradient,
taylor, integrated-gradients, weight and random criteria work as everywhere.

The ViT composite (:mod:`pxp.attribution.lrp_vit`) covers torchvision / timm ViT blocks in
their explicit-attention form. ConvNeXt, Swin and EVA blocks, pruned by MLP neurons
(:mod:`pxp.components.vit.mlp`), have no such form here, and LRP is refused on them too.
"""

from __future__ import annotations

from torch import nn

from pxp.errors import UnsupportedArchitectureError
from pxp.spec import Family

_RESIDUAL = (
    "its residual additions are plain tensor adds with no zennit canonizer, so both branches would "
    "receive the full relevance instead of splitting it"
)
_GATE = (
    "squeeze-excitation gates multiply two relevance-carrying paths, which no LRP rule here splits faithfully"
)
_SMOOTH = "SiLU/Hardswish/GELU are not piecewise-linear, so the ε/γ/α-β rules are not faithful through them"

#: Module class name -> why the CNN composite is not faithful on a model containing it.
_BLOCKERS: dict[str, str] = {
    "InvertedResidual": f"MobileNet inverted residuals: {_RESIDUAL}",
    "MBConv": f"EfficientNet MBConv blocks: {_RESIDUAL}",
    "FusedMBConv": f"EfficientNetV2 fused MBConv blocks: {_RESIDUAL}",
    "ResBottleneckBlock": f"RegNet blocks: {_RESIDUAL}",
    "SqueezeExcitation": _GATE,
    "_DenseLayer": (
        "DenseNet layers put BatchNorm before the conv (pre-activation), so it cannot be merged into a "
        "linear layer and no LRP rule covers it"
    ),
    "SiLU": _SMOOTH,
    "Hardswish": _SMOOTH,
    "GELU": _SMOOTH,
}

_NO_COMPOSITE = "no LRP composite here has rules for these blocks"
#: Block class name -> why LRP is refused on a ConvNeXt / Swin / EVA model (either family).
_BLOCK_BLOCKERS: dict[str, str] = {
    "CNBlock": (
        "ConvNeXt blocks normalize each depthwise conv's output with a LayerNorm over channels, scale the "
        f"MLP output by a learned layer scale and add it to the residual stream with a plain tensor add; {_NO_COMPOSITE}"
    ),
    "SwinTransformerBlock": (
        "Swin blocks compute shifted-window attention (window partition, torch.roll, a learned relative "
        "position bias added to the logits) in one fused function with no separate Q·Kᵀ and A·V for the "
        f"AttnLRP rules, and add their residuals with plain tensor adds; {_NO_COMPOSITE}"
    ),
    "EvaBlock": (
        "EVA blocks rotate q and k by position-dependent sin/cos (rotary embeddings) inside fused attention "
        f"and gate their SwiGLU MLP by a product of two relevance-carrying paths; {_NO_COMPOSITE}"
    ),
}
_BLOCK_BLOCKERS["ConvNeXtBlock"] = _BLOCK_BLOCKERS["CNBlock"]
_BLOCK_BLOCKERS["SwinTransformerBlockV2"] = _BLOCK_BLOCKERS["SwinTransformerBlock"]
_BLOCK_BLOCKERS["EvaBlockPostNorm"] = _BLOCK_BLOCKERS["EvaBlock"]

NON_LRP_CRITERIA = ("gradient", "taylor", "integrated_gradients", "weight", "random")


def lrp_blockers(model: nn.Module, family: Family = "cnn") -> list[str]:
    """Why LRP is not faithful on ``model`` (one reason per offending module type); ``[]`` if it is.

    For the ``vit`` family only whole blocks without an LRP form count (the ViT composite
    has its own rules for GELU and the rest).
    """
    found = {type(m).__name__ for m in model.modules()}
    table = {**_BLOCKERS, **_BLOCK_BLOCKERS} if family == "cnn" else _BLOCK_BLOCKERS
    return list(dict.fromkeys(reason for name, reason in table.items() if name in found))


def require_lrp_support(model: nn.Module, architecture: str, family: Family = "cnn") -> None:
    """Raise unless the LRP composites are faithful on ``model`` (of ``family``).

    Raises:
        UnsupportedArchitectureError: naming the reasons and the criteria that do work.
    """
    reasons = lrp_blockers(model, family)
    if reasons:
        raise UnsupportedArchitectureError(
            f"the lrp criterion is not supported on {architecture}: " + "; ".join(reasons) + ". "
            f"Use --criterion {' / '.join(NON_LRP_CRITERIA)} (each works on this model); the LRP search "
            "needs lrp and is unavailable too."
        )
