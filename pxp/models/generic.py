"""torchvision's model classes by name, built from JSON kwargs (the service sends JSON).

``VisionTransformer``, ``ResNet`` and ``VGG`` take the kwargs a user's training script
passed to the class, with strings where torchvision takes classes or configs:
``block="basic"|"bottleneck"``, ``cfg="A"|"B"|"D"|"E"``. Strings are looked up in fixed
tables here, never evaluated or imported. Each builder also takes ``in_channels``, so a
grayscale checkpoint (first conv with one input channel) builds; torchvision hard-wires 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

#: ``block`` names of :func:`resnet`.
RESNET_BLOCKS: tuple[str, ...] = ("basic", "bottleneck")
#: ``cfg`` names of :func:`vgg` (torchvision's VGG-11/13/16/19 layer configurations).
VGG_CFGS: tuple[str, ...] = ("A", "B", "D", "E")


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def vision_transformer(
    image_size: int,
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    num_classes: int = 1000,
    in_channels: int = 3,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    representation_size: int | None = None,
) -> nn.Module:
    """``torchvision.models.VisionTransformer(...)`` with ``in_channels`` input channels.

    ``num_heads`` is not stored in a checkpoint (the fused q/k/v projection has the same
    shape for any head count), so it must always be given.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    for name, value in (
        ("image_size", image_size),
        ("patch_size", patch_size),
        ("num_layers", num_layers),
        ("num_heads", num_heads),
        ("hidden_dim", hidden_dim),
        ("mlp_dim", mlp_dim),
        ("num_classes", num_classes),
        ("in_channels", in_channels),
    ):
        _positive_int(name, value)
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
    model = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
        representation_size=representation_size,
    )
    if in_channels != 3:
        proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / (in_channels * patch_size * patch_size)))
        assert proj.bias is not None
        nn.init.zeros_(proj.bias)
        model.conv_proj = proj
    return model


def _replace_stem(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    stem = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    if stem.bias is not None:
        nn.init.zeros_(stem.bias)
    return stem


def resnet(
    block: str,
    layers: Sequence[int],
    num_classes: int = 1000,
    in_channels: int = 3,
    groups: int = 1,
    width_per_group: int = 64,
    zero_init_residual: bool = False,
) -> nn.Module:
    """``torchvision.models.ResNet(block, layers, ...)`` with ``block`` as ``"basic"``/``"bottleneck"``."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    blocks: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if block not in blocks:
        raise ValueError(f"block must be one of {list(RESNET_BLOCKS)}, got {block!r}")
    layers = list(layers)
    if len(layers) != 4:
        raise ValueError(f"layers must be four positive integers, got {layers!r}")
    for n in layers:
        _positive_int("each entry of layers", n)
    _positive_int("in_channels", in_channels)
    model = ResNet(
        blocks[block],
        layers,
        num_classes=_positive_int("num_classes", num_classes),
        zero_init_residual=zero_init_residual,
        groups=_positive_int("groups", groups),
        width_per_group=_positive_int("width_per_group", width_per_group),
    )
    if in_channels != 3:
        model.conv1 = _replace_stem(model.conv1, in_channels)
    return model


def vgg(
    cfg: str,
    batch_norm: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
    dropout: float = 0.5,
) -> nn.Module:
    """``torchvision.models.VGG(make_layers(cfgs[cfg], batch_norm), ...)``: A/B/D/E are VGG-11/13/16/19."""
    from torchvision.models.vgg import VGG, cfgs, make_layers

    if cfg not in VGG_CFGS:
        raise ValueError(f"cfg must be one of {list(VGG_CFGS)} (VGG-11/13/16/19), got {cfg!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be true or false, got {batch_norm!r}")
    _positive_int("in_channels", in_channels)
    model = VGG(
        make_layers(cfgs[cfg], batch_norm=batch_norm),
        num_classes=_positive_int("num_classes", num_classes),
        dropout=dropout,
    )
    if in_channels != 3:
        first = model.features[0]
        assert isinstance(first, nn.Conv2d)
        model.features[0] = _replace_stem(first, in_channels)
    return model
