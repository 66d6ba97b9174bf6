"""Small architectures for the bundled digits data (1×32×32 by default, 10 classes).

They are the zoo's models (``pxp.zoo`` trains them) and the test bed for every
other part of pxp. Every builder takes only JSON-friendly kwargs, so
``builder(**kwargs)`` with the kwargs stored in a manifest rebuilds the same
module tree and the saved state dict loads strictly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer

#: Mean / std of all 1,797 digits images upsampled to 32×32, scaled to [0, 1].
DIGITS_MEAN: tuple[float, ...] = (0.305,)
DIGITS_STD: tuple[float, ...] = (0.324,)


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class DigitsVGG(nn.Module):
    """VGG-style CNN: stages of (conv3×3 → BN → ReLU) × ``convs_per_stage`` then 2×2 max-pool.

    ``convs_per_stage`` is one count for every stage or one count per stage.

    ``features`` / ``avgpool`` / ``classifier`` follow torchvision's VGG layout, so
    code written for torchvision VGGs (depth groups, the classifier's position)
    applies unchanged.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int | Sequence[int] = (1, 2, 2),
        hidden: int = 128,
        pool_size: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage")
        _positive("num_classes", num_classes)
        counts = (
            [convs_per_stage] * len(widths) if isinstance(convs_per_stage, int) else list(convs_per_stage)
        )
        if len(counts) != len(widths):
            raise ValueError(f"convs_per_stage has {len(counts)} entries for {len(widths)} stages")
        layers: list[nn.Module] = []
        channels = _positive("in_channels", in_channels)
        for width, count in zip(widths, counts, strict=True):
            _positive("width", width)
            for _ in range(_positive("convs_per_stage", count)):
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, _positive("hidden", hidden)),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def digits_vgg(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Sequence[int] = (32, 64, 128),
    convs_per_stage: int | Sequence[int] = (1, 2, 2),
    hidden: int = 128,
    pool_size: int = 2,
    dropout: float = 0.2,
) -> DigitsVGG:
    return DigitsVGG(
        num_classes=num_classes,
        in_channels=in_channels,
        widths=tuple(widths),
        convs_per_stage=convs_per_stage if isinstance(convs_per_stage, int) else tuple(convs_per_stage),
        hidden=hidden,
        pool_size=pool_size,
        dropout=dropout,
    )


def digits_resnet18(
    num_classes: int = 10,
    in_channels: int = 1,
    base_width: int = 16,
    layers: Sequence[int] = (2, 2, 2, 2),
) -> ResNet:
    """torchvision ResNet-18 adapted to 32×32: 3×3 stride-1 stem, no max-pool.

    ``base_width`` is the first stage's width (torchvision's ResNet-18 uses 64;
    the zoo default is 16 so it trains in minutes on a CPU); the stages are
    ``base_width × (1, 2, 4, 8)`` as in the original. The result is a real
    ``torchvision.models.ResNet`` of ``BasicBlock`` s, so canonizers and
    dependency graphs written for torchvision ResNets apply.
    """
    _positive("base_width", base_width)
    _positive("in_channels", in_channels)
    layers = tuple(layers)
    if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"layers must be four positive integers, got {list(layers)!r}")
    model = ResNet(BasicBlock, list(layers), num_classes=_positive("num_classes", num_classes))
    model.inplanes = base_width
    model.conv1 = nn.Conv2d(in_channels, base_width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(base_width)
    model.maxpool = nn.Identity()
    model.layer1 = model._make_layer(BasicBlock, base_width, layers[0])
    model.layer2 = model._make_layer(BasicBlock, base_width * 2, layers[1], stride=2)
    model.layer3 = model._make_layer(BasicBlock, base_width * 4, layers[2], stride=2)
    model.layer4 = model._make_layer(BasicBlock, base_width * 8, layers[3], stride=2)
    model.fc = nn.Linear(base_width * 8 * BasicBlock.expansion, num_classes)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def digits_vit(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 32,
    patch_size: int = 4,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 64,
    mlp_dim: int = 128,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> VisionTransformer:
    """torchvision ``VisionTransformer`` whose patch embedding takes ``in_channels`` channels.

    torchvision's ``conv_proj`` is hard-wired to 3 input channels; it is replaced
    by a Conv2d of the same kernel/stride with ``in_channels`` inputs and
    initialised the way torchvision initialises its own.
    """
    if hidden_dim % num_heads:
        raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
    model = VisionTransformer(
        image_size=_positive("image_size", image_size),
        patch_size=_positive("patch_size", patch_size),
        num_layers=_positive("num_layers", num_layers),
        num_heads=_positive("num_heads", num_heads),
        hidden_dim=_positive("hidden_dim", hidden_dim),
        mlp_dim=_positive("mlp_dim", mlp_dim),
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=_positive("num_classes", num_classes),
    )
    if in_channels != 3:
        proj = nn.Conv2d(_positive("in_channels", in_channels), hidden_dim, patch_size, stride=patch_size)
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in))
        assert proj.bias is not None
        nn.init.zeros_(proj.bias)
        model.conv_proj = proj
    return model
