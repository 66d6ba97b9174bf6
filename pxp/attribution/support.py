"""Where LRP cannot be faithful, say so instead of returning a wrong answer.

The CNN composite (:mod:`pxp.attribution.lrp_cnn`) is exact for conv/BN/ReLU stacks
(VGG) and torchvision ResNet blocks, whose residual sums zennit canonizes. Other
torchvision families contain operations no rule here treats faithfully; on them the
``lrp`` criterion (and the LRP search) is refused with the reason, while the gradient,
taylor, integrated-gradients, weight and random criteria work as everywhere.
"""

from __future__ import annotations

from torch import nn

from pxp.errors import UnsupportedArchitectureError

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

NON_LRP_CRITERIA = ("gradient", "taylor", "integrated_gradients", "weight", "random")


def lrp_blockers(model: nn.Module) -> list[str]:
    """Why LRP is not faithful on ``model`` (one reason per offending module type); ``[]`` if it is."""
    found = {type(m).__name__ for m in model.modules()}
    return [reason for name, reason in _BLOCKERS.items() if name in found]


def require_lrp_support(model: nn.Module, architecture: str) -> None:
    """Raise unless the LRP composites are faithful on ``model``.

    Raises:
        UnsupportedArchitectureError: naming the reasons and the criteria that do work.
    """
    reasons = list(dict.fromkeys(lrp_blockers(model)))
    if reasons:
        raise UnsupportedArchitectureError(
            f"the lrp criterion is not supported on {architecture}: " + "; ".join(reasons) + ". "
            f"Use --criterion {' / '.join(NON_LRP_CRITERIA)} (each works on this model); the LRP search "
            "needs lrp and is unavailable too."
        )
