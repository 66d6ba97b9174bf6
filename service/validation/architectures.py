"""Architecture names the gateway accepts, kept torch-free.

Mirrors ``pxp.models.list_architectures()`` (a test keeps them equal). timm ViTs are
accepted by the ``timm/<model_name>`` pattern here; whether that timm model exists and is
a ViT is checked by the worker (timm imports torch) and reported as a user error.
"""

from __future__ import annotations

import difflib
import re

from pxp.errors import UnsupportedArchitectureError

KNOWN_ARCHITECTURES: tuple[str, ...] = (
    "digits_resnet18",
    "digits_vgg",
    "digits_vit",
    "resnet18",
    "resnet34",
    "resnet50",
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
    "vit_l_16",
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
        f"unknown architecture {name!r}{hint}; known: {list(KNOWN_ARCHITECTURES)} and '{TIMM_PREFIX}<vit name>'"
    )
