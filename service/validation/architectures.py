"""Architecture names the gateway accepts, kept torch-free.

Mirrors ``pxp.models.list_architectures()`` (a test keeps them equal). timm models are
accepted by the ``timm/<model_name>`` pattern here; whether that timm model exists and is
a supported one (ViT/DeiT, ConvNeXt, Swin, EVA) is checked by the worker (timm imports
torch) and reported as a user error.
"""

from __future__ import annotations

import difflib
import re

from pxp.errors import UnsupportedArchitectureError

KNOWN_ARCHITECTURES: tuple[str, ...] = (
    "ResNet",
    "VGG",
    "VisionTransformer",
    "convnext_base",
    "convnext_large",
    "convnext_small",
    "convnext_tiny",
    "densenet121",
    "densenet169",
    "digits_resnet18",
    "digits_vgg",
    "digits_vit",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x8d",
    "resnext50_32x4d",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
    "wide_resnet101_2",
    "wide_resnet50_2",
)
TIMM_PREFIX = "timm/"
_TIMM_NAME = re.compile(r"^timm/[a-z0-9_]+(\.[A-Za-z0-9_]+)?$")


def check_architecture(name: str) -> str:
    """Return ``name`` if the gateway accepts it, else raise :class:`UnsupportedArchitectureError`."""
    if name in KNOWN_ARCHITECTURES or _TIMM_NAME.match(name):
        return name
    close = difflib.get_close_matches(name, KNOWN_ARCHITECTURES, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise UnsupportedArchitectureError(
        f"unknown architecture {name!r}{hint}; known: {list(KNOWN_ARCHITECTURES)} and '{TIMM_PREFIX}<timm model name>'"
    )
